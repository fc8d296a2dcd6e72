#!/usr/bin/env python3
"""Golden fixtures for moe-rs, produced by Hugging Face `transformers` Mixtral.

Weights come from a closed-form formula (splitmix64 of (seed, tensor index,
element index)), so the Rust tests rebuild the exact same model without reading
any weight file. The model is loaded into `transformers.MixtralForCausalLM`
through `from_pretrained` on a checkpoint directory written in the CONTRACT §2
names, and the script then computes, for each (profile, alpha):

  * logits of a b=2, t=8 batch, CE (no shift), HF's `load_balancing_loss_func`
    aux loss, loss = ce + alpha * aux;
  * the gradient of that loss for every parameter (samples + float64 stats);
  * 10 AdamW steps with warmup + cosine LR and global-norm clipping;
  * (tiny only) logits of a longer b=2, t=32 forward.

See README.md in this directory for the fixture format.

Usage:
    venv/bin/python tests/golden/make_golden.py [--out DIR] [--checkpoint-out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file as np_load_file

import transformers
from transformers import MixtralForCausalLM
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

SEED = 1234
MASK64 = 0xFFFFFFFFFFFFFFFF
GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # splitmix64 increment, also the tensor-index multiplier
SEED_MUL = 0xD1B54A32D192ED03
SM_MUL1 = 0xBF58476D1CE4E5B9
SM_MUL2 = 0x94D049BB133111EB

NORM_SCALE = np.float32(0.25)
SAMPLE_TARGET = 97  # stride = max(1, numel // 97)

PROFILES = {
    "tiny": dict(vocab=1000, hidden=64, layers=2, heads=4, kv=1, head_dim=16, ffn=256,
                 experts=4, top_k=2, max_pos=512, rope_theta=10000.0, eps=1e-5),
    "scale_256": dict(vocab=1000, hidden=256, layers=2, heads=4, kv=1, head_dim=64, ffn=1024,
                      experts=4, top_k=2, max_pos=512, rope_theta=10000.0, eps=1e-5),
}
FILE_TAG = {"tiny": "tiny", "scale_256": "scale256"}
ALPHAS = [0.01, 10.0]

TRAIN = dict(steps=10, lr=3e-3, min_lr=3e-4, warmup=3, total=10, beta1=0.9, beta2=0.999,
             eps=1e-8, weight_decay=0.01, max_grad_norm=1.0)

B, T = 2, 8
T_LONG = 32


# --------------------------------------------------------------------------------------------
# Weight formula
# --------------------------------------------------------------------------------------------

def splitmix64_py(x: int) -> int:
    """Reference scalar splitmix64 on Python ints (mod 2^64)."""
    x = (x + GOLDEN_GAMMA) & MASK64
    z = x
    z = ((z ^ (z >> 30)) * SM_MUL1) & MASK64
    z = ((z ^ (z >> 27)) * SM_MUL2) & MASK64
    return z ^ (z >> 31)


def formula_u_py(seed: int, t: int, i: int) -> float:
    """Reference scalar u in [-1, 1) (exact in f32) for element i of tensor t."""
    key = (seed * SEED_MUL + t * GOLDEN_GAMMA + i) & MASK64
    m = splitmix64_py(key) >> 40
    return (m - 2**23) / 2**23


def formula_u(seed: int, t: int, n: int) -> np.ndarray:
    """Vectorised u for elements 0..n-1 of tensor t, float32 [n]. uint64 numpy ops wrap mod 2^64."""
    base = np.uint64((seed * SEED_MUL + t * GOLDEN_GAMMA) & MASK64)
    with np.errstate(over="ignore"):
        x = base + np.arange(n, dtype=np.uint64)  # key (wraps)
        x = x + np.uint64(GOLDEN_GAMMA)
        z = x
        z = (z ^ (z >> np.uint64(30))) * np.uint64(SM_MUL1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(SM_MUL2)
        z = z ^ (z >> np.uint64(31))
    m = (z >> np.uint64(40)).astype(np.int64)  # [0, 2^24)
    u = (m - 2**23).astype(np.float64) / float(2**23)
    return u.astype(np.float32)  # exact: 24-bit integer times a power of two


def param_specs(p: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) in CONTRACT §2 flat order. kind in {embed, norm, matrix}."""
    v, c, h, kv, d, f, e = p["vocab"], p["hidden"], p["heads"], p["kv"], p["head_dim"], p["ffn"], p["experts"]
    specs = [("model.embed_tokens.weight", (v, c), "embed")]
    for i in range(p["layers"]):
        pre = f"model.layers.{i}."
        specs += [
            (pre + "input_layernorm.weight", (c,), "norm"),
            (pre + "self_attn.q_proj.weight", (h * d, c), "matrix"),
            (pre + "self_attn.k_proj.weight", (kv * d, c), "matrix"),
            (pre + "self_attn.v_proj.weight", (kv * d, c), "matrix"),
            (pre + "self_attn.o_proj.weight", (c, h * d), "matrix"),
            (pre + "post_attention_layernorm.weight", (c,), "norm"),
            (pre + "block_sparse_moe.gate.weight", (e, c), "matrix"),
        ]
        for j in range(e):
            ep = pre + f"block_sparse_moe.experts.{j}."
            specs += [
                (ep + "w1.weight", (f, c), "matrix"),
                (ep + "w3.weight", (f, c), "matrix"),
                (ep + "w2.weight", (c, f), "matrix"),
            ]
    specs += [("model.norm.weight", (c,), "norm"), ("lm_head.weight", (v, c), "matrix")]
    return specs


def formula_weights(p: dict, seed: int = SEED) -> dict[str, np.ndarray]:
    """name -> float32 array, CONTRACT names, built from the closed-form formula."""
    out = {}
    for t, (name, shape, kind) in enumerate(param_specs(p)):
        n = int(np.prod(shape))
        u = formula_u(seed, t, n)
        if kind == "norm":
            w = np.float32(1.0) + NORM_SCALE * u
        elif kind == "embed":
            w = u
        else:
            fan_in = shape[1]
            scale = np.float32(math.sqrt(3.0 / fan_in))
            w = scale * u
        assert w.dtype == np.float32, (name, w.dtype)
        out[name] = w.reshape(shape)
    return out


def self_check_formula() -> None:
    """The vectorised numpy formula must equal the scalar Python-int reference bit for bit."""
    for seed in (SEED, 0, 42, 2**64 - 1):
        for t in (0, 1, 7, 40):
            n = 300
            vec = formula_u(seed, t, n)
            idx = list(range(20)) + [123, 255, 299]
            for i in idx:
                ref = np.float32(formula_u_py(seed, t, i))
                assert vec[i] == ref, (seed, t, i, vec[i], ref)
    # Wrap-around of key = base + i across 2^64.
    seed_wrap = 0
    t_wrap = ((MASK64 - 5) * pow(GOLDEN_GAMMA, -1, 2**64)) & MASK64  # base = 2^64 - 6
    vec = formula_u(seed_wrap, t_wrap, 16)
    for i in range(16):
        assert vec[i] == np.float32(formula_u_py(seed_wrap, t_wrap, i)), ("wrap", i)


# --------------------------------------------------------------------------------------------
# Byte-reproducible safetensors writer
# --------------------------------------------------------------------------------------------

_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64"}


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> None:
    """Write a safetensors file with a deterministic header (tensors in the given order, metadata
    keys sorted). `safetensors.numpy.save_file` serialises `__metadata__` from a Rust HashMap, so its
    key order -- and hence the file bytes -- changes from run to run; this writer avoids that.
    Format: u64 LE header length, JSON header padded with spaces to a multiple of 8, raw LE data."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    blobs, off = [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dt = _ST_DTYPES[arr.dtype]
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as fh:
        fh.write(len(hb).to_bytes(8, "little"))
        fh.write(hb)
        for raw in blobs:
            fh.write(raw)
    # Round-trip through the reference reader.
    back = np_load_file(path)
    assert list(sorted(back)) == list(sorted(tensors)), path
    for name, arr in tensors.items():
        assert back[name].dtype == arr.dtype and np.array_equal(back[name], arr), (path, name)


# --------------------------------------------------------------------------------------------
# Checkpoint directory (CONTRACT §8)
# --------------------------------------------------------------------------------------------

def hf_config_dict(p: dict, alpha: float) -> dict:
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": p["vocab"],
        "hidden_size": p["hidden"],
        "intermediate_size": p["ffn"],
        "num_hidden_layers": p["layers"],
        "num_attention_heads": p["heads"],
        "num_key_value_heads": p["kv"],
        "head_dim": p["head_dim"],
        "num_local_experts": p["experts"],
        "num_experts_per_tok": p["top_k"],
        "rms_norm_eps": p["eps"],
        "rope_theta": p["rope_theta"],
        "max_position_embeddings": p["max_pos"],
        "tie_word_embeddings": False,
        "router_aux_loss_coef": alpha,
        "torch_dtype": "float32",
        # Explicit HF defaults we rely on.
        "hidden_act": "silu",
        "sliding_window": None,
        "attention_dropout": 0.0,
        "router_jitter_noise": 0.0,
        "moe_rs": {"weight_init": "golden-splitmix64", "seed": SEED},
    }


def write_checkpoint(dirpath: str, p: dict, weights: dict[str, np.ndarray], alpha: float) -> None:
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "config.json"), "w") as fh:
        json.dump(hf_config_dict(p, alpha), fh, indent=2)
        fh.write("\n")
    write_safetensors(os.path.join(dirpath, "model.safetensors"), weights, {"format": "pt"})


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record):
        if record.levelno >= logging.WARNING:
            self.records.append(record.getMessage())


def load_hf(dirpath: str) -> tuple[MixtralForCausalLM, dict, list[str]]:
    cap = _Capture()
    tlog = logging.getLogger("transformers")
    tlog.addHandler(cap)
    with warnings.catch_warnings(record=True) as pyw:
        warnings.simplefilter("always")
        model, info = MixtralForCausalLM.from_pretrained(
            dirpath, dtype=torch.float32, attn_implementation="eager",
            experts_implementation="eager", output_loading_info=True)
    tlog.removeHandler(cap)
    msgs = cap.records + [f"{w.category.__name__}: {w.message}" for w in pyw]
    return model, info, msgs


# --------------------------------------------------------------------------------------------
# HF <-> CONTRACT name mapping
# --------------------------------------------------------------------------------------------

def hf_params_as_contract(model: MixtralForCausalLM, p: dict, what: str = "data") -> dict[str, np.ndarray]:
    """Map HF parameters (or their .grad) to CONTRACT names; split fused expert tensors.

    HF 5.24: model.layers.{i}.mlp.gate.weight            [e, c]      (router)
             model.layers.{i}.mlp.experts.gate_up_proj   [e, 2f, c]  rows [0,f) = w1, [f,2f) = w3
             model.layers.{i}.mlp.experts.down_proj      [e, c, f]   = w2
    """
    f, e = p["ffn"], p["experts"]
    hf = dict(model.named_parameters())

    def get(name):
        t = hf[name]
        t = t.grad if what == "grad" else t.data
        assert t is not None, f"no {what} for {name}"
        return t.detach().cpu().numpy().astype(np.float32, copy=True)

    out = {}
    for name, _shape, _kind in param_specs(p):
        if ".block_sparse_moe.experts." in name:
            pre, rest = name.split(".block_sparse_moe.experts.")
            j_str, wname, _ = rest.split(".")
            j = int(j_str)
            if wname == "w1":
                out[name] = get(pre + ".mlp.experts.gate_up_proj")[j, :f, :]
            elif wname == "w3":
                out[name] = get(pre + ".mlp.experts.gate_up_proj")[j, f:, :]
            else:
                out[name] = get(pre + ".mlp.experts.down_proj")[j]
        elif ".block_sparse_moe.gate." in name:
            out[name] = get(name.replace(".block_sparse_moe.gate.", ".mlp.gate."))
        else:
            out[name] = get(name)
        out[name] = np.ascontiguousarray(out[name])
    # Every HF parameter must be covered by the mapping.
    expected_hf = set(hf)
    covered = set()
    for name, _s, _k in param_specs(p):
        if ".block_sparse_moe.experts." in name:
            pre = name.split(".block_sparse_moe.experts.")[0]
            covered |= {pre + ".mlp.experts.gate_up_proj", pre + ".mlp.experts.down_proj"}
        else:
            covered.add(name.replace(".block_sparse_moe.gate.", ".mlp.gate."))
    assert covered == expected_hf, (sorted(expected_hf - covered), sorted(covered - expected_hf))
    return out


# --------------------------------------------------------------------------------------------
# Computation
# --------------------------------------------------------------------------------------------

def batch_inputs():
    ids = np.array([[(i * 131 + j * 71 + 7) % 1000 for j in range(T)] for i in range(B)], dtype=np.int64)
    tgt = np.array([[(i * 17 + j * 29 + 3) % 1000 for j in range(T)] for i in range(B)], dtype=np.int64)
    return ids, tgt


def long_inputs():
    return np.array([[(i * 389 + j * 53 + 11) % 1000 for j in range(T_LONG)] for i in range(B)], dtype=np.int64)


def lr_at(s: int) -> float:
    lr, min_lr, warmup, total = TRAIN["lr"], TRAIN["min_lr"], TRAIN["warmup"], TRAIN["total"]
    if s < warmup:
        return lr * (s + 1) / warmup
    if s < total:
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * (s - warmup) / (total - warmup)))
    return min_lr


def topk_gap(router_logits: tuple, k: int) -> float:
    """Smallest gap between the k-th and (k+1)-th router probability over all rows of all layers."""
    gaps = []
    for rl in router_logits:
        pr = torch.softmax(rl.detach().double(), dim=-1)
        srt, _ = torch.sort(pr, dim=-1, descending=True)
        gaps.append((srt[:, k - 1] - srt[:, k]).min().item())
    return min(gaps)


def forward_losses(model, ids_t, tgt_t, p, alpha):
    out = model(input_ids=ids_t, output_router_logits=True, use_cache=False)
    logits = out.logits
    rl = out.router_logits
    assert isinstance(rl, tuple) and len(rl) == p["layers"], type(rl)
    assert all(r.shape == (B * ids_t.shape[1], p["experts"]) for r in rl), [r.shape for r in rl]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_t.reshape(-1))
    aux = load_balancing_loss_func(rl, p["experts"], p["top_k"])
    # Cross-check: HF's own aux (computed inside forward) and our manual pooled formula.
    aux_manual = manual_aux(rl, p["experts"], p["top_k"])
    assert torch.allclose(aux.detach(), out.aux_loss.detach(), rtol=0, atol=0), (aux, out.aux_loss)
    assert abs(aux.item() - aux_manual) < 1e-5 * max(1.0, abs(aux_manual)), (aux.item(), aux_manual)
    loss = ce + alpha * aux
    return loss, ce, aux, logits, rl


def manual_aux(rl, e, k) -> float:
    """aux = e * sum_e f_e * P_e over all L*b*t pooled rows (float64, for cross-checking HF)."""
    probs = torch.cat([torch.softmax(r.detach().double(), dim=-1) for r in rl], dim=0)
    top = torch.topk(probs, k, dim=-1).indices
    frac = torch.zeros(e, dtype=torch.float64)
    for j in range(e):
        frac[j] = (top == j).any(dim=-1).double().mean()
    pm = probs.mean(dim=0)
    return float(e * (frac * pm).sum())


def stride_of(n: int) -> int:
    return max(1, n // SAMPLE_TARGET)


def samples(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(-1)
    return np.ascontiguousarray(flat[:: stride_of(flat.size)]).astype(np.float32)


def run_fixture(profile: str, alpha: float, out_dir: str, ckpt_root: str, summary: list) -> None:
    p = PROFILES[profile]
    weights = formula_weights(p)
    ckpt = os.path.join(ckpt_root, f"{profile}_a{alpha:g}")
    write_checkpoint(ckpt, p, weights, alpha)

    model, info, msgs = load_hf(ckpt)
    bad_info = {k: v for k, v in info.items() if v}
    assert not bad_info, f"from_pretrained loading info not clean: {bad_info}"
    if msgs:
        print(f"  [{profile}] from_pretrained messages:", *msgs, sep="\n    ")
    # Only the `torch_dtype` BC message is tolerated.
    unexpected_msgs = [m for m in msgs if "torch_dtype" not in m]
    assert not unexpected_msgs, unexpected_msgs
    model.eval()
    assert model.config._experts_implementation == "eager", model.config._experts_implementation
    assert model.config._attn_implementation == "eager", model.config._attn_implementation

    # RoPE really uses theta = 10000.
    d = p["head_dim"]
    assert model.config.rope_parameters["rope_theta"] == p["rope_theta"], model.config.rope_parameters
    assert model.config.rope_parameters["rope_type"] == "default", model.config.rope_parameters
    inv_ref = 1.0 / (p["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float) / d))
    inv = model.model.rotary_emb.inv_freq
    assert torch.equal(inv, inv_ref), (inv, inv_ref)
    assert model.model.rotary_emb.attention_scaling == 1.0

    # Every HF parameter equals the formula weights (bit for bit).
    loaded = hf_params_as_contract(model, p, "data")
    assert list(loaded) == list(weights)
    for name, w in weights.items():
        assert loaded[name].shape == w.shape and np.array_equal(loaded[name], w), name

    ids, tgt = batch_inputs()
    ids_t, tgt_t = torch.from_numpy(ids), torch.from_numpy(tgt)

    # ---- forward + backward at the formula weights
    model.zero_grad(set_to_none=True)
    loss, ce, aux, logits, rl = forward_losses(model, ids_t, tgt_t, p, alpha)
    gap0 = topk_gap(rl, p["top_k"])
    loss.backward()
    grads = hf_params_as_contract(model, p, "grad")
    assert torch.isfinite(logits).all() and all(np.isfinite(g).all() for g in grads.values())

    tensors: dict[str, np.ndarray] = {
        "input_ids": ids,
        "targets": tgt,
        "logits": logits.detach().numpy().astype(np.float32),
        "loss": np.array([loss.item()], dtype=np.float32),
        "ce_loss": np.array([ce.item()], dtype=np.float32),
        "aux_loss": np.array([aux.item()], dtype=np.float32),
    }
    group_max: dict[str, float] = {}
    for name, g in grads.items():
        g64 = g.astype(np.float64)
        tensors["grad_samples." + name] = samples(g)
        tensors["grad_stats." + name] = np.array([g64.sum(), (g64 * g64).sum(), np.abs(g64).max()],
                                                  dtype=np.float64)
        tensors["weight_samples." + name] = samples(weights[name])
        grp = name.split(".")[-2]  # q_proj, w1, input_layernorm, norm, lm_head, ...
        grp = {"embed_tokens": "embed", "gate": "router"}.get(grp, grp)
        group_max[grp] = max(group_max.get(grp, 0.0), float(np.abs(g64).max()))

    # ---- long forward (tiny only)
    if profile == "tiny":
        lids = long_inputs()
        with torch.no_grad():
            lout = model(input_ids=torch.from_numpy(lids), output_router_logits=True, use_cache=False)
        tensors["fwd_long_input_ids"] = lids
        tensors["fwd_long_logits"] = lout.logits.numpy().astype(np.float32)
        gap_long = topk_gap(lout.router_logits, p["top_k"])
    else:
        gap_long = None
    del model

    # ---- 10 training steps on a fresh model
    model, _info, _msgs = load_hf(ckpt)
    model.eval()  # dropout 0 and jitter 0: train/eval identical; eval matches the brief
    params = [q for q in model.parameters()]
    opt = torch.optim.AdamW(params, lr=TRAIN["lr"], betas=(TRAIN["beta1"], TRAIN["beta2"]),
                            eps=TRAIN["eps"], weight_decay=TRAIN["weight_decay"])
    tl, tce, taux, tgn, tlr = [], [], [], [], []
    train_gaps = []
    for s in range(TRAIN["steps"]):
        lr_s = lr_at(s)
        for g in opt.param_groups:
            g["lr"] = lr_s
        opt.zero_grad(set_to_none=True)
        loss_s, ce_s, aux_s, _lg, rl_s = forward_losses(model, ids_t, tgt_t, p, alpha)
        train_gaps.append(topk_gap(rl_s, p["top_k"]))
        loss_s.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, max_norm=TRAIN["max_grad_norm"])
        opt.step()
        tl.append(loss_s.item()); tce.append(ce_s.item()); taux.append(aux_s.item())
        tgn.append(gn.item()); tlr.append(lr_s)
        assert all(math.isfinite(x) for x in (tl[-1], tce[-1], taux[-1], tgn[-1])), s
    del model

    tensors["train_loss"] = np.array(tl, dtype=np.float32)
    tensors["train_ce"] = np.array(tce, dtype=np.float32)
    tensors["train_aux"] = np.array(taux, dtype=np.float32)
    tensors["train_grad_norm"] = np.array(tgn, dtype=np.float32)
    tensors["train_lr"] = np.array(tlr, dtype=np.float64)
    tensors["train_topk_gap"] = np.array(train_gaps, dtype=np.float64)

    meta = {
        "profile": profile,
        "alpha": repr(float(alpha)),
        "seed": str(SEED),
        "b": str(B),
        "t": str(T),
        "t_long": str(T_LONG) if profile == "tiny" else "",
        "train": json.dumps(TRAIN),
        "config": json.dumps(hf_config_dict(p, alpha)),
        "sample_rule": "flat[::max(1, numel // 97)]",
        "grad_stats": "float64 [sum, sum_sq, max_abs] of the float32 gradient",
        "min_topk_gap_grad": repr(gap0),
        "min_topk_gap_long": repr(gap_long) if gap_long is not None else "",
        "min_topk_gap_train": repr(min(train_gaps)),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "experts_implementation": "eager",
        "attn_implementation": "eager",
    }
    fname = os.path.join(out_dir, f"{FILE_TAG[profile]}_a{alpha:g}.safetensors")
    write_safetensors(fname, tensors, meta)

    summary.append((os.path.basename(fname), loss.item(), ce.item(), aux.item(), gap0,
                    min(train_gaps), gap_long, group_max, tl, tgn, train_gaps))


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(here, "fixtures"), help="fixture directory")
    ap.add_argument("--checkpoint-out", default=None,
                    help="also write the tiny-profile checkpoint dir (config.json, model.safetensors, tokens.json)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    transformers.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()

    self_check_formula()
    os.makedirs(args.out, exist_ok=True)

    summary: list = []
    with tempfile.TemporaryDirectory(prefix="moe_golden_") as tmp:
        for profile in ("tiny", "scale_256"):
            for alpha in ALPHAS:
                print(f"== {profile} alpha={alpha:g}", flush=True)
                run_fixture(profile, alpha, args.out, tmp, summary)

    if args.checkpoint_out:
        p = PROFILES["tiny"]
        write_checkpoint(args.checkpoint_out, p, formula_weights(p), 0.01)
        ids, tgt = batch_inputs()
        with open(os.path.join(args.checkpoint_out, "tokens.json"), "w") as fh:
            json.dump({"input_ids": ids.tolist(), "targets": tgt.tolist(), "aux_alpha": 0.01}, fh)
            fh.write("\n")
        print(f"wrote tiny checkpoint to {args.checkpoint_out}")

    print("\nsummary")
    for (fn, loss, ce, aux, gap0, gapt, gapl, gmax, tl, tgn, tgaps) in summary:
        print(f"{fn}: loss={loss:.7g} ce={ce:.7g} aux={aux:.7g} "
              f"min_topk_gap grad={gap0:.3g} train={gapt:.3g}" + (f" long={gapl:.3g}" if gapl is not None else ""))
        print("   max|grad|: " + ", ".join(f"{k}={v:.3g}" for k, v in gmax.items()))
        print("   train_loss: " + " ".join(f"{x:.5f}" for x in tl))
        print("   grad_norm:  " + " ".join(f"{x:.4f}" for x in tgn))
        print("   topk_gap:   " + " ".join(f"{x:.1e}" for x in tgaps))
    total = 0
    for fn in sorted(os.listdir(args.out)):
        sz = os.path.getsize(os.path.join(args.out, fn))
        total += sz
        print(f"  {fn}: {sz} bytes")
    print(f"  total: {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
