#!/usr/bin/env python3
"""PyTorch baseline for the moe-rs benchmark (spec §6-§7, CONTRACT §7 schema).

Runs the same scenarios as `moe bench` (bench/src/harness/scenarios.rs) — same ids,
parameters, fixtures, FLOP and token counts, warmup/trial protocol and
statistics (type-7 quantiles, bench/src/harness/stats.rs) — on a PyTorch model, and
writes `benchmarks/pytorch.json` in our schema, so that

    moe report benchmarks/rust.json benchmarks/pytorch.json

puts both side by side.

Models (`--model`):
  compact  (default) a plain-`nn.Module` Mixtral written below: embedding,
           RMSNorm (`F.rms_norm`), MQA attention with rotate-half RoPE and a
           causal mask (`F.scaled_dot_product_attention(is_causal=True,
           enable_gqa=True)`, or `--attn explicit`: QKᵀ, -inf mask, softmax,
           PV), router softmax -> top-k -> renormalise, SwiGLU experts run once
           each on their gathered rows (`index_select` / `index_add_`), final
           RMSNorm, LM head.
  hf       `transformers.MixtralForCausalLM` (eager attention, eager experts)
           for the model scenarios.

Train step (both models): `zero_grad(set_to_none=True)`, forward, CE (mean
over b·t, no shift) + 0.01 · aux (HF's pooled load-balancing loss), backward
(autograd), `clip_grad_norm_(1.0)`, `torch.optim.AdamW(lr=1e-3, betas=(0.9,
0.999), eps=1e-8, weight_decay=0.01, foreach=False)` step — the single-tensor
implementation, which is also PyTorch's default for CPU tensors.

Every scenario runs in a fresh child process of this script (`--child ID`), so
`peak_rss_bytes` is that scenario's own (it includes the ~few hundred MB of
`import torch`). Before timing, the compact model's tiny-profile logits are
checked against `MixtralForCausalLM` carrying the same weights
(max |Δlogits| < 1e-4, stored as `metadata.parity_max_abs_diff`).

Usage:
    nice -n 10 venv/bin/python scripts/torch_baseline.py
    venv/bin/python scripts/torch_baseline.py --only kernel_matmul,dispatch_warm --trials 5
    venv/bin/python scripts/torch_baseline.py --model hf --out /tmp/pytorch_hf.json
    venv/bin/python scripts/torch_baseline.py --validate benchmarks/pytorch.json
See scripts/README.md for the caveats.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Intra-op and inter-op pools of one thread each, set before any torch work
# (set_num_interop_threads fails once the inter-op pool has started).
torch.set_num_threads(1)
torch.set_num_interop_threads(1)
torch.set_default_dtype(torch.float32)

REPO = Path(__file__).resolve().parent.parent
SCENARIOS_RS = REPO / "bench" / "src" / "scenarios.rs"
SCHEMA_RS = REPO / "bench" / "src" / "schema.rs"

SEED = 42
N_WARMUP = 3
N_TRIALS = 10
AUX_ALPHA = 0.01
LR = 1e-3
CLIP = 1.0
PARITY_TOL = 1e-4
SCHEMA_VERSION_FALLBACK = 1


def schema_version() -> int:
    """`SCHEMA_VERSION` of bench/src/harness/schema.rs (so the two files always agree)."""
    try:
        m = re.search(r"pub const SCHEMA_VERSION: u64 = (\d+);", SCHEMA_RS.read_text())
        if m:
            return int(m.group(1))
    except OSError:
        pass
    return SCHEMA_VERSION_FALLBACK


# ---------------------------------------------------------------------------------------------
# Profiles (CONTRACT §1)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    vocab_size: int = 1000
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 1
    head_dim: int = 16
    intermediate_size: int = 256
    num_local_experts: int = 4
    num_experts_per_tok: int = 2
    max_position_embeddings: int = 512
    rope_base: float = 10_000.0
    rope_alpha: float = 1.0
    rms_norm_eps: float = 1e-5

    def rope_theta(self) -> float:
        """`base' = base · alpha^(d/(d−2))` when alpha > 1 (NTK-aware), else `base` (CONTRACT §3)."""
        d = self.head_dim
        if self.rope_alpha > 1.0:
            return self.rope_base * self.rope_alpha ** (d / (d - 2))
        return self.rope_base


TINY = Config()
SCALE_256 = Config(hidden_size=256, head_dim=64, intermediate_size=1024)
PROFILES = {"tiny": TINY, "scale_256": SCALE_256}


# ---------------------------------------------------------------------------------------------
# The compact model
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """`y = x / sqrt(mean(x²) + eps) * w` (F.rms_norm; weight initialised to 1)."""

    def __init__(self, c: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.eps = eps
        self.shape = (c,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.shape, self.weight, self.eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """MQA/GQA: q `[b, h, t, d]`, k/v `[b, kv, t, d]`; RoPE rotate-half; causal softmax(qkᵀ/√d)·v."""

    def __init__(self, cfg: Config, attn: str):
        super().__init__()
        c, h, kv, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.h, self.kv, self.d, self.attn = h, kv, d, attn
        self.q_proj = nn.Linear(c, h * d, bias=False)
        self.k_proj = nn.Linear(c, kv * d, bias=False)
        self.v_proj = nn.Linear(c, kv * d, bias=False)
        self.o_proj = nn.Linear(h * d, c, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.attn == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # explicit: query head j uses KV head j / (h / kv)
            rep = self.h // self.kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            s = torch.matmul(q, k.transpose(-1, -2)) * (self.d**-0.5)
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu_(1)
            s = s.masked_fill(mask, float("-inf"))
            o = torch.matmul(torch.softmax(s, dim=-1), v)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, self.h * self.d))


class Expert(nn.Module):
    """SwiGLU `w2(silu(w1 x) ⊙ w3 x)`; w1 and w3 fused as one `[2f, c]` matrix (rows [0,f) = w1)."""

    def __init__(self, c: int, f: int):
        super().__init__()
        self.gate_up = nn.Linear(c, 2 * f, bias=False)
        self.down = nn.Linear(f, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MoE(nn.Module):
    """Router softmax -> top-k -> renormalise; each expert runs once on the rows routed to it."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.e, self.k = cfg.num_local_experts, cfg.num_experts_per_tok
        self.gate = nn.Linear(cfg.hidden_size, self.e, bias=False)
        self.experts = nn.ModuleList(Expert(cfg.hidden_size, cfg.intermediate_size) for _ in range(self.e))

    def forward(self, x: torch.Tensor):
        """x `[n, c]` -> (y `[n, c]`, router probs `[n, e]`, top-k indices `[n, k]`)."""
        probs = torch.softmax(self.gate(x), dim=-1)
        top_p, top_i = torch.topk(probs, self.k, dim=-1)
        top_w = top_p / top_p.sum(dim=-1, keepdim=True)
        # counts -> offsets -> index arrays: slots (row·k + j) sorted by expert.
        flat = top_i.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.e).tolist()
        rows = torch.div(order, self.k, rounding_mode="floor")
        weights = top_w.reshape(-1).index_select(0, order).unsqueeze(1)
        y = torch.zeros_like(x)
        start = 0
        for j, cnt in enumerate(counts):
            if cnt:
                idx = rows[start : start + cnt]
                out = self.experts[j](x.index_select(0, idx)) * weights[start : start + cnt]
                y.index_add_(0, idx, out)
            start += cnt
        return y, probs, top_i


class Block(nn.Module):
    def __init__(self, cfg: Config, attn: str):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, attn)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        b, t, c = x.shape
        y, probs, top_i = self.mlp(self.post_attention_layernorm(x).reshape(b * t, c))
        return x + y.view(b, t, c), probs, top_i


class CompactMoE(nn.Module):
    """embedding -> blocks -> final RMSNorm -> LM head (untied). Default PyTorch init:
    nn.Linear U(±1/√fan_in) (the experts' matrices likewise), nn.Embedding N(0, 1), norms 1."""

    def __init__(self, cfg: Config, attn: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, attn) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        d = cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta() ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        pos = torch.arange(cfg.max_position_embeddings, dtype=torch.float32)
        freqs = pos[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)

    def forward_with_router(self, tokens: torch.Tensor):
        """tokens `[b, t]` -> (logits `[b, t, v]`, per-layer router probs, per-layer top-k indices)."""
        t = tokens.shape[1]
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.embed_tokens(tokens)
        probs, tops = [], []
        for layer in self.layers:
            x, p, ti = layer(x, cos, sin)
            probs.append(p)
            tops.append(ti)
        return self.lm_head(self.norm(x)), probs, tops

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_with_router(tokens)[0]

    def loss_parts(self, tokens: torch.Tensor):
        """(logits, aux): aux as HF's `load_balancing_loss_func` without mask, pooled over all layers."""
        logits, probs, tops = self.forward_with_router(tokens)
        e = self.cfg.num_local_experts
        p = torch.cat(probs, dim=0)  # [L·b·t, e]
        with torch.no_grad():
            frac = torch.bincount(torch.cat(tops, dim=0).reshape(-1), minlength=e).to(p.dtype) / p.shape[0]
        aux = e * torch.sum(frac * p.mean(dim=0))
        return logits, aux


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Hugging Face model (parity check and `--model hf`)
# ---------------------------------------------------------------------------------------------


def hf_config(cfg: Config):
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        num_local_experts=cfg.num_local_experts,
        num_experts_per_tok=cfg.num_experts_per_tok,
        rms_norm_eps=cfg.rms_norm_eps,
        # Explicit: recent transformers default rope_theta to 1e6 without it (CONTRACT §8).
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta()},
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False,
        router_aux_loss_coef=AUX_ALPHA,
        sliding_window=None,
        attention_dropout=0.0,
        router_jitter_noise=0.0,
        hidden_act="silu",
    )


def build_hf(cfg: Config):
    from transformers import MixtralForCausalLM

    m = MixtralForCausalLM._from_config(
        hf_config(cfg), attn_implementation="eager", experts_implementation="eager", dtype=torch.float32
    )
    assert m.config._attn_implementation == "eager" and m.config._experts_implementation == "eager"
    return m


class HFWrapper(nn.Module):
    """MixtralForCausalLM with the compact model's `forward` / `loss_parts` interface."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.m = build_hf(cfg)

    def forward(self, tokens):
        return self.m(input_ids=tokens, use_cache=False).logits

    def loss_parts(self, tokens):
        from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

        out = self.m(input_ids=tokens, use_cache=False, output_router_logits=True)
        aux = load_balancing_loss_func(out.router_logits, self.cfg.num_local_experts, self.cfg.num_experts_per_tok)
        return out.logits, aux


@torch.no_grad()
def copy_compact_to_hf(src: CompactMoE, hf) -> None:
    """Copies every compact parameter into MixtralForCausalLM (HF 5.x fused expert tensors)."""
    hp = dict(hf.named_parameters())
    done = set()

    def put(name, value):
        assert hp[name].shape == value.shape, (name, hp[name].shape, value.shape)
        hp[name].copy_(value)
        done.add(name)

    put("model.embed_tokens.weight", src.embed_tokens.weight)
    for i, layer in enumerate(src.layers):
        pre = f"model.layers.{i}."
        put(pre + "input_layernorm.weight", layer.input_layernorm.weight)
        put(pre + "post_attention_layernorm.weight", layer.post_attention_layernorm.weight)
        for w in ("q_proj", "k_proj", "v_proj", "o_proj"):
            put(pre + f"self_attn.{w}.weight", getattr(layer.self_attn, w).weight)
        put(pre + "mlp.gate.weight", layer.mlp.gate.weight)
        put(pre + "mlp.experts.gate_up_proj", torch.stack([x.gate_up.weight for x in layer.mlp.experts]))
        put(pre + "mlp.experts.down_proj", torch.stack([x.down.weight for x in layer.mlp.experts]))
    put("model.norm.weight", src.norm.weight)
    put("lm_head.weight", src.lm_head.weight)
    assert done == set(hp), sorted(set(hp) - done)


def parity_check(attn: str) -> dict:
    """Compact vs MixtralForCausalLM on the tiny profile with identical weights."""
    cfg = TINY
    torch.manual_seed(SEED)
    compact = CompactMoE(cfg, attn)
    assert n_params(compact) == 542_528, n_params(compact)  # README: tiny has 542,528 parameters
    hf = build_hf(cfg)
    assert torch.allclose(
        hf.model.rotary_emb.inv_freq,
        1.0 / (cfg.rope_theta() ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)),
    )
    copy_compact_to_hf(compact, hf)
    compact.eval()
    hf.eval()
    out = {}
    diffs = []
    for b, t in ((2, 32), (2, 8), (1, 8), (2, 64)):
        tokens = fixture_tokens(b, t, cfg.vocab_size, 0)
        with torch.inference_mode():
            a = compact(tokens)
            r = hf(input_ids=tokens, use_cache=False).logits
        diffs.append(float((a - r).abs().max()))
    out["parity_max_abs_diff"] = max(diffs)
    out["parity_shapes"] = "b2s32, b2s8, b1s8, b2s64 (fixture tokens)"
    # Training-side parity (b2 s8): total loss and every gradient.
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    tokens = fixture_tokens(2, 8, cfg.vocab_size, 0)
    targets = fixture_tokens(2, 8, cfg.vocab_size, 1)
    compact.train()
    hf.train()
    logits, aux = compact.loss_parts(tokens)
    loss_c = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1)) + AUX_ALPHA * aux
    loss_c.backward()
    o = hf(input_ids=tokens, use_cache=False, output_router_logits=True)
    aux_h = load_balancing_loss_func(o.router_logits, cfg.num_local_experts, cfg.num_experts_per_tok)
    loss_h = F.cross_entropy(o.logits.reshape(-1, cfg.vocab_size), targets.reshape(-1)) + AUX_ALPHA * aux_h
    loss_h.backward()
    hgrad = dict(hf.named_parameters())
    gmax = 0.0
    for i, layer in enumerate(compact.layers):
        pre = f"model.layers.{i}."
        g_gu = torch.stack([x.gate_up.weight.grad if x.gate_up.weight.grad is not None
                            else torch.zeros_like(x.gate_up.weight) for x in layer.mlp.experts])
        hg = hgrad[pre + "mlp.experts.gate_up_proj"].grad
        gmax = max(gmax, float((g_gu - hg).abs().max()))
        gmax = max(gmax, float((layer.self_attn.q_proj.weight.grad - hgrad[pre + "self_attn.q_proj.weight"].grad)
                               .abs().max()))
        gmax = max(gmax, float((layer.mlp.gate.weight.grad - hgrad[pre + "mlp.gate.weight"].grad).abs().max()))
    gmax = max(gmax, float((compact.embed_tokens.weight.grad - hgrad["model.embed_tokens.weight"].grad).abs().max()))
    gmax = max(gmax, float((compact.lm_head.weight.grad - hgrad["lm_head.weight"].grad).abs().max()))
    out["parity_loss_abs_diff"] = abs(float(loss_c.detach()) - float(loss_h.detach()))
    out["parity_grad_max_abs_diff"] = gmax
    out["parity_ok"] = out["parity_max_abs_diff"] < PARITY_TOL
    return out


# ---------------------------------------------------------------------------------------------
# Fixtures (bench/src/harness/scenarios.rs)
# ---------------------------------------------------------------------------------------------


def fixture_tokens(b: int, t: int, vocab: int, shift: int) -> torch.Tensor:
    """`token[i, s] = (i·t + s + shift) mod v`, int64 `[b, t]`."""
    return ((torch.arange(b * t, dtype=torch.int64) + shift) % vocab).view(b, t)


def fixture_uniform(seed: int, n: int) -> np.ndarray:
    """SplitMix64 from `seed`, `u = (x >> 40)·2⁻²⁴ ∈ [0, 1)`, float32 — bit-identical to ours."""
    gamma = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        state = np.uint64(seed) + gamma * np.arange(1, n + 1, dtype=np.uint64)
        z = state
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))


# ---------------------------------------------------------------------------------------------
# FLOP and token counts (bench/src/harness/flops.rs, docs/flops.md)
# ---------------------------------------------------------------------------------------------


def flops_forward(cfg: Config, b: int, t: int) -> int:
    n = b * t
    c, h, kv, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    f, e, k, v = cfg.intermediate_size, cfg.num_local_experts, cfg.num_experts_per_tok, cfg.vocab_size
    q = (h + 2 * kv) * d
    per_layer = 2 * n * c * q + 2 * b * h * d * t * (t + 1) + 2 * n * h * d * c + 2 * n * c * e + 6 * n * k * c * f
    return cfg.num_hidden_layers * per_layer + 2 * n * c * v


def flops_train(cfg: Config, b: int, t: int) -> int:
    return 3 * flops_forward(cfg, b, t)


assert flops_forward(TINY, 2, 32) == 36_585_472 and flops_train(SCALE_256, 2, 8) == 358_662_144


# ---------------------------------------------------------------------------------------------
# Scenario table (same ids, axes and params as bench/src/harness/scenarios.rs)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    id: str
    axis: str
    kind: str  # model | matmul | softmax | rmsnorm | cold | cold_process | parallel
    profile: str = "tiny"
    workload: str = "forward"  # forward | train_step
    b: int = 0
    t: int = 0
    threads: int = 1
    m: int = 0
    n: int = 0
    k: int = 0

    def cfg(self) -> Config:
        return PROFILES[self.profile]

    def params(self, matmul_backend: str, model: str) -> dict:
        if self.kind == "model":
            return {"batch": self.b, "seq_len": self.t, "hidden_dim": self.cfg().hidden_size,
                    "workload": self.workload}
        if self.kind == "matmul":
            return {"M": self.m, "K": self.k, "N": self.n, "backend": matmul_backend, "op": "C = A * B^T",
                    "call": "torch.matmul(a, b.T, out=c)"}
        if self.kind == "softmax":
            return {"n": self.n, "call": "torch.softmax(x, 0, out=y)"}
        if self.kind == "rmsnorm":
            return {"shape": [self.b, self.t, self.k], "call": "F.rms_norm(x, (c,), w, 1e-5)"}
        if self.kind == "cold":
            return {"batch": self.b, "seq_len": self.t, "hidden_dim": TINY.hidden_size,
                    "workload": "construct+forward"}
        if self.kind == "cold_process":
            return {"batch": self.b, "seq_len": self.t, "hidden_dim": TINY.hidden_size,
                    "workload": "spawn+construct+forward+exit", "includes": "interpreter start + import torch"}
        if self.kind == "parallel":
            return {"batch": self.b, "seq_len": self.t, "hidden_dim": TINY.hidden_size,
                    "thread_count": self.threads, "workload": self.workload, "parallel_semantics": "independent",
                    "parallel_mechanism": "threading.Thread, one model per thread (GIL released inside torch ops)"}
        raise ValueError(self.kind)

    def flops(self):
        if self.kind == "model":
            f = flops_forward if self.workload == "forward" else flops_train
            return f(self.cfg(), self.b, self.t)
        if self.kind == "matmul":
            return 2 * self.m * self.n * self.k
        if self.kind == "softmax":
            return 5 * self.n + 1
        if self.kind == "rmsnorm":
            return self.b * self.t * (4 * self.k + 4)
        if self.kind == "parallel":
            f = flops_forward if self.workload == "forward" else flops_train
            return self.threads * f(TINY, self.b, self.t)
        return None  # cold start: dominated by construction

    def tokens(self):
        if self.kind in ("model", "cold", "cold_process"):
            return self.b * self.t
        if self.kind == "parallel":
            return self.threads * self.b * self.t
        return None


def _m(id, axis, workload, b, t, profile="tiny"):
    return Scenario(id, axis, "model", profile=profile, workload=workload, b=b, t=t)


def _p(id, threads, workload, b, t):
    return Scenario(id, "parallel", "parallel", workload=workload, b=b, t=t, threads=threads)


SCENARIOS = [
    # Axis 1 — memory (9)
    _m("mem_train_step", "memory", "train_step", 2, 8),
    _m("mem_scale_batch_1", "memory", "forward", 1, 32),
    _m("mem_scale_batch_2", "memory", "forward", 2, 32),
    _m("mem_scale_batch_4", "memory", "forward", 4, 32),
    _m("mem_scale_batch_8", "memory", "forward", 8, 32),
    _m("mem_scale_seq_8", "memory", "forward", 2, 8),
    _m("mem_scale_seq_16", "memory", "forward", 2, 16),
    _m("mem_scale_seq_32", "memory", "forward", 2, 32),
    _m("mem_scale_seq_64", "memory", "forward", 2, 64),
    # Axis 2 — compiler (3)
    Scenario("kernel_matmul", "compiler", "matmul", m=64, n=64, k=64),
    Scenario("kernel_softmax", "compiler", "softmax", n=1000),
    Scenario("kernel_rmsnorm", "compiler", "rmsnorm", b=2, t=32, k=64),
    # Axis 3 — type system (2)
    _m("dispatch_warm", "type_system", "forward", 2, 32),
    Scenario("dispatch_cold", "type_system", "cold", b=1, t=8),
    # Axis 4 — parallel (6)
    _p("parallel_T1", 1, "forward", 2, 32),
    _p("parallel_T2", 2, "forward", 2, 32),
    _p("parallel_T4", 4, "forward", 2, 32),
    _p("parallel_train_T1", 1, "train_step", 2, 8),
    _p("parallel_train_T2", 2, "train_step", 2, 8),
    _p("parallel_train_T4", 4, "train_step", 2, 8),
    # Axis 5 — scale (2)
    _m("scale_forward_256", "scale", "forward", 2, 32, profile="scale_256"),
    _m("scale_train_256", "scale", "train_step", 2, 8, profile="scale_256"),
    # Extras of our table that have a PyTorch meaning (kernel_matmul_portable and
    # kernel_matmul_matrixmultiply are Rust GEMM backends: no PyTorch counterpart).
    Scenario("dispatch_cold_process", "type_system", "cold_process", b=1, t=8),
    Scenario("machine_peak", "compiler", "matmul", m=1024, n=1024, k=1024),
]
SPEC_SCENARIOS = 22
BY_ID = {s.id: s for s in SCENARIOS}
RUST_ONLY = {
    "kernel_matmul_portable": "moe-core's own portable GEMM backend (Rust only)",
    "kernel_matmul_matrixmultiply": "the `matrixmultiply` crate (Rust only)",
}


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------

_GC = {"active": False, "t0": 0, "time_ns": 0, "count": 0}


def _gc_callback(phase, info):
    if phase == "start":
        _GC["t0"] = time.perf_counter_ns()
    elif phase == "stop" and _GC["t0"]:
        if _GC["active"]:
            _GC["time_ns"] += time.perf_counter_ns() - _GC["t0"]
            _GC["count"] += 1
        _GC["t0"] = 0


gc.callbacks.append(_gc_callback)


class Probe:
    """Brackets the timed region: CPU clock -> wall clock ... wall clock -> CPU clock (as bench/src/harness/measure.rs)."""

    def __init__(self):
        self.wall: list[int] = []
        self.cpu: list[int] = []

    def start(self):
        c0 = time.process_time_ns()
        return c0, time.perf_counter_ns()

    def stop(self, s):
        w1 = time.perf_counter_ns()
        c1 = time.process_time_ns()
        self.wall.append(w1 - s[1])
        self.cpu.append(c1 - s[0])


def measure(warmup: int, trials: int, iteration) -> tuple[list[int], list[int], list[int], dict]:
    """Calls `iteration(probe)` warmup + trials times; GC is counted during the trials only."""
    p = Probe()
    gc.collect()  # start the trials without setup garbage (outside every timed region)
    for _ in range(warmup):
        iteration(p)
    _GC.update(time_ns=0, count=0, active=True)
    try:
        for _ in range(trials):
            iteration(p)
    finally:
        _GC["active"] = False
    if len(p.wall) != warmup + trials:
        raise RuntimeError(f"{len(p.wall)} samples recorded, expected {warmup + trials}")
    return p.wall[warmup:], p.cpu[warmup:], p.wall[:warmup], {"total_gc_time_ns": _GC["time_ns"],
                                                               "gc_pause_count": _GC["count"]}


def quantile(values: list[int], p: float) -> float:
    """Hyndman & Fan type 7 (bench/src/harness/stats.rs, numpy's default)."""
    x = sorted(float(v) for v in values)
    if not x:
        return 0.0
    h = (len(x) - 1) * min(max(p, 0.0), 1.0)
    lo = math.floor(h)
    hi = min(lo + 1, len(x) - 1)
    return x[lo] + (h - lo) * (x[hi] - x[lo])


def round_half_away(x: float) -> int:
    """Rust's f64::round for the non-negative values here."""
    return int(math.floor(x + 0.5))


def q_int(values, p) -> int:
    return round_half_away(quantile(values, p)) if values else 0


def numerical(t: torch.Tensor) -> dict:
    x = t.detach().reshape(-1).float()
    nan = int(torch.isnan(x).sum())
    inf = int(torch.isinf(x).sum())
    fin = x[torch.isfinite(x)]
    return {"nan_count": nan, "inf_count": inf, "max_abs": float(fin.abs().max()) if fin.numel() else 0.0}


def merge_numerical(a: dict, b: dict) -> dict:
    return {"nan_count": a["nan_count"] + b["nan_count"], "inf_count": a["inf_count"] + b["inf_count"],
            "max_abs": max(a["max_abs"], b["max_abs"])}


def peak_rss_bytes() -> int:
    """Peak RSS of this process image, bytes.

    `getrusage(RUSAGE_SELF).ru_maxrss` (KiB on Linux) is what the brief and our Rust harness use, but
    Linux carries the *parent's* high-water mark into a child across fork/vfork + execve
    (`signal->maxrss`), and this script's parent holds torch + transformers + the parity models
    (~0.75 GiB): every child would report at least that. `VmHWM` of /proc/self/status is the
    high-water mark of this image's own address space — equal to ru_maxrss for a process not
    spawned from a larger one — so it is used where available, ru_maxrss otherwise.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------


def build_model(cfg: Config, model: str, attn: str) -> nn.Module:
    torch.manual_seed(SEED)
    return CompactMoE(cfg, attn) if model == "compact" else HFWrapper(cfg)


class Trainer:
    """zero_grad -> forward -> CE + 0.01·aux -> backward -> clip_grad_norm_(1.0) -> AdamW step."""

    def __init__(self, model: nn.Module):
        self.model = model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.v = model.cfg.vocab_size
        self.opt = torch.optim.AdamW(self.params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                                     foreach=False)

    def step(self, tokens, targets) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        logits, aux = self.model.loss_parts(tokens)
        ce = F.cross_entropy(logits.reshape(-1, self.v), targets.reshape(-1))
        loss = ce + AUX_ALPHA * aux
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.opt.step()
        return loss.detach()


def run_model(sc: Scenario, o) -> dict:
    cfg = sc.cfg()
    model = build_model(cfg, o.model, o.attn)
    tokens = fixture_tokens(sc.b, sc.t, cfg.vocab_size, 0)
    last = {}
    if sc.workload == "forward":
        model.eval()

        def it(p):
            s = p.start()
            out = model(tokens)
            p.stop(s)
            last["out"] = out

        with torch.inference_mode():
            res = measure(o.warmup, o.trials, it)
            num = numerical(last["out"])
    else:
        trainer = Trainer(model)
        targets = fixture_tokens(sc.b, sc.t, cfg.vocab_size, 1)

        def it(p):
            s = p.start()
            loss = trainer.step(tokens, targets)
            p.stop(s)
            last["out"] = loss

        res = measure(o.warmup, o.trials, it)
        num = numerical(last["out"])
    return {"res": res, "numerical": num}


def run_matmul(sc: Scenario, o) -> dict:
    a = torch.from_numpy(np.float32(2.0) * fixture_uniform(SEED, sc.m * sc.k) - np.float32(1.0)).view(sc.m, sc.k)
    b = torch.from_numpy(np.float32(2.0) * fixture_uniform(SEED + 1, sc.n * sc.k) - np.float32(1.0)).view(sc.n, sc.k)
    c = torch.zeros(sc.m, sc.n)
    bt = b.T  # a view: MKL gets a transposed operand, no copy

    def it(p):
        s = p.start()
        torch.matmul(a, bt, out=c)
        p.stop(s)

    res = measure(o.warmup, o.trials, it)
    return {"res": res, "numerical": numerical(c)}


def run_softmax(sc: Scenario, o) -> dict:
    x = torch.from_numpy(np.float32(4.0) * (np.float32(2.0) * fixture_uniform(SEED, sc.n) - np.float32(1.0)))
    y = torch.zeros(sc.n)

    def it(p):
        s = p.start()
        torch.softmax(x, 0, out=y)
        p.stop(s)

    res = measure(o.warmup, o.trials, it)
    return {"res": res, "numerical": numerical(y)}


def run_rmsnorm(sc: Scenario, o) -> dict:
    rows, c = sc.b * sc.t, sc.k
    x = torch.from_numpy(np.float32(2.0) * fixture_uniform(SEED, rows * c) - np.float32(1.0)).view(sc.b, sc.t, c)
    w = torch.from_numpy(np.float32(0.5) + fixture_uniform(SEED + 1, c))
    shape, eps = (c,), TINY.rms_norm_eps
    last = {}

    def it(p):
        s = p.start()
        y = F.rms_norm(x, shape, w, eps)
        p.stop(s)
        last["y"] = y

    res = measure(o.warmup, o.trials, it)
    return {"res": res, "numerical": numerical(last["y"])}


def run_cold(sc: Scenario, o) -> dict:
    cfg = TINY
    tokens = fixture_tokens(sc.b, sc.t, cfg.vocab_size, 0)
    last = {}

    def it(p):
        s = p.start()
        model = build_model(cfg, o.model, o.attn)  # seeds, then constructs (default init)
        model.eval()
        with torch.inference_mode():
            out = model(tokens)
        p.stop(s)
        last["out"] = out
        # `model` is dropped on return, outside the timed region.

    res = measure(o.warmup, o.trials, it)
    return {"res": res, "numerical": numerical(last["out"])}


def cold_start_main(o) -> None:
    """`--cold-start`: what dispatch_cold_process times after the interpreter started."""
    cfg = TINY
    tokens = fixture_tokens(1, 8, cfg.vocab_size, 0)
    model = build_model(cfg, o.model, o.attn).eval()
    with torch.inference_mode():
        out = model(tokens)
    print(json.dumps({"numerical": numerical(out), "peak_rss_bytes": peak_rss_bytes()}))


def run_cold_process(sc: Scenario, o) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cold-start", "--model", o.model, "--attn", o.attn]
    last = {"peak": 0}
    cpu_override = []

    def it(p):
        s = p.start()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        p.stop(s)
        proc.returncode = os.waitstatus_to_exitcode(status)
        text = proc.stdout.read().decode()
        proc.stdout.close()
        if proc.returncode != 0:
            raise RuntimeError(f"--cold-start exited with {proc.returncode}")
        # The child's own CPU time (wait4 rusage) and peak RSS (its VmHWM: its ru_maxrss would
        # inherit this process's high-water mark, see peak_rss_bytes), not this process's.
        cpu_override.append(round_half_away((usage.ru_utime + usage.ru_stime) * 1e9))
        report = json.loads(text)
        last["peak"] = max(last["peak"], report["peak_rss_bytes"])
        last["numerical"] = report["numerical"]

    timings, _cpu, warm, gcs = measure(o.warmup, o.trials, it)
    return {"res": (timings, cpu_override[o.warmup:], warm, gcs), "numerical": last["numerical"],
            "peak_rss_bytes": last["peak"]}


def run_parallel(sc: Scenario, o) -> dict:
    total = o.warmup + o.trials
    T = sc.threads
    workers = []
    for _ in range(T):  # built here, before the threads start (outside every timed region)
        model = build_model(TINY, o.model, o.attn)
        tokens = fixture_tokens(sc.b, sc.t, TINY.vocab_size, 0)
        if sc.workload == "forward":
            workers.append({"model": model.eval(), "tokens": tokens})
        else:
            workers.append({"trainer": Trainer(model), "tokens": tokens,
                            "targets": fixture_tokens(sc.b, sc.t, TINY.vocab_size, 1)})
    start = threading.Barrier(T + 1)
    end = threading.Barrier(T + 1)
    errors: list[BaseException] = []

    def work(w):
        try:
            ctx = torch.inference_mode() if sc.workload == "forward" else torch.enable_grad()
            with ctx:  # grad / inference mode is thread-local
                for _ in range(total):
                    start.wait()
                    if sc.workload == "forward":
                        w["out"] = w["model"](w["tokens"])
                    else:
                        w["out"] = w["trainer"].step(w["tokens"], w["targets"])
                    end.wait()
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:  # noqa: BLE001 — reported by the timing thread
            errors.append(e)
            start.abort()
            end.abort()

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
    for th in threads:
        th.start()

    def it(p):
        s = p.start()
        start.wait()
        end.wait()
        p.stop(s)

    try:
        res = measure(o.warmup, o.trials, it)
    except threading.BrokenBarrierError:
        raise RuntimeError(f"a worker failed: {errors[0]!r}") from (errors[0] if errors else None)
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    num = {"nan_count": 0, "inf_count": 0, "max_abs": 0.0}
    for w in workers:
        num = merge_numerical(num, numerical(w["out"]))
    return {"res": res, "numerical": num}


RUNNERS = {"model": run_model, "matmul": run_matmul, "softmax": run_softmax, "rmsnorm": run_rmsnorm,
           "cold": run_cold, "cold_process": run_cold_process, "parallel": run_parallel}


def run_scenario(sc: Scenario, o) -> dict:
    out = RUNNERS[sc.kind](sc, o)
    timings, cpu, warm, gcs = out["res"]
    med = q_int(timings, 0.5)
    secs = med * 1e-9
    per_sec = (lambda x: x / secs if secs > 0 else 0.0)
    flops, tokens = sc.flops(), sc.tokens()
    total_wall = sum(timings)
    return {
        "id": sc.id,
        "axis": sc.axis,
        "params": sc.params(matmul_backend_name(), o.model),
        "warmup_runs": len(warm),
        "trial_runs": len(timings),
        "timings_ns": timings,
        "cpu_times_ns": cpu,
        "warmup_timings_ns": warm,
        "median_ns": med,
        "p95_ns": q_int(timings, 0.95),
        "min_ns": min(timings),
        "max_ns": max(timings),
        "iqr_ns": max(0, q_int(timings, 0.75) - q_int(timings, 0.25)),
        "cpu_median_ns": q_int(cpu, 0.5),
        "memory": {
            "peak_rss_bytes": out.get("peak_rss_bytes") or peak_rss_bytes(),
            "alloc_bytes": None,  # not measurable comparably (see scripts/README.md)
            "alloc_count": None,
            "arena_bytes": None,  # no planned workspace: PyTorch allocates per op
        },
        "gc": gcs,
        "numerical": out["numerical"],
        "throughput_tokens_per_sec": None if tokens is None else per_sec(tokens),
        "derived": {
            "alloc_rate_bytes_per_sec": None,
            "gc_throughput": 1.0 - gcs["total_gc_time_ns"] / total_wall if total_wall > 0 else 1.0,
            "gflops": None if flops is None else per_sec(flops) * 1e-9,
        },
    }


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------


def torch_build_info() -> dict:
    show = torch.__config__.show()
    info = {}
    m = re.search(r"BLAS_INFO=(\w+)", show)
    info["blas"] = m.group(1) if m else "unknown"
    m = re.search(r"Math Kernel Library Version ([\d.]+)", show)
    if m:
        info["mkl"] = m.group(1)
    m = re.search(r"OpenBLAS ?([\w.]*)", show)
    if m and info["blas"] != "mkl":
        info["openblas"] = m.group(1)
    m = re.search(r"MKL-DNN v([\d.]+)", show)
    if m:
        info["onednn"] = m.group(1)
    return info


def matmul_backend_name() -> str:
    i = torch_build_info()
    extra = f" {i['mkl']}" if "mkl" in i else ""
    return f"torch {torch.__version__} ({i['blas']}{extra} sgemm)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_rev() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def metadata(o, parity: dict) -> dict:
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    uname = os.uname()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "language": "python",
        "language_version": f"{platform.python_implementation()} {platform.python_version()}",
        "os": sys.platform,
        "kernel": f"{uname.sysname} {uname.release}",
        "arch": platform.machine(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count() or 0,
        "load_average": load,
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "n_trials": o.trials,
        "n_warmup": o.warmup,
        "seed": SEED,
        "matmul_backend": matmul_backend_name(),
        "matmul_kernel": f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}",
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "git_rev": git_rev(),
        "schema_version": schema_version(),
        "build_profile": "n/a (CPython + prebuilt torch wheel)",
        "isolation": "in-process" if o.in_process else "process",
        "openblas_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("OPENBLAS_")},
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "torch_version": torch.__version__,
        "torch_build": torch_build_info(),
        "transformers_version": tf_version,
        "numpy_version": np.__version__,
        "model": o.model,
        "model_description": (
            "compact nn.Module Mixtral (scripts/torch_baseline.py)" if o.model == "compact"
            else "transformers.MixtralForCausalLM (eager attention, eager experts)"),
        "attention": ("F.scaled_dot_product_attention(is_causal=True, enable_gqa=True)" if o.attn == "sdpa"
                      else "explicit QK^T, -inf upper-triangular mask, softmax, PV")
        if o.model == "compact" else "transformers eager_attention_forward",
        "optimizer": "torch.optim.AdamW(lr=1e-3, betas=(0.9,0.999), eps=1e-8, weight_decay=0.01, foreach=False) "
                     "after clip_grad_norm_(1.0); zero_grad(set_to_none=True); autograd backward",
        "init": "torch.manual_seed(42) then PyTorch default init: nn.Linear U(±1/sqrt(fan_in)), nn.Embedding "
                "N(0,1), norms 1 (same distributions as moe-core for the matrices, not the same values)",
        "inference": "forward scenarios run under torch.inference_mode() (entered outside the timed region)",
        "parallel_mechanism": "threading.Thread with one independent model each; the GIL is released inside "
                              "torch ops but held for Python-level module/dispatch code, so scaling is "
                              "bounded by the Python fraction",
        "timers": "wall: time.perf_counter_ns; cpu: time.process_time_ns (whole process, all threads)",
        "peak_rss_note": "peak RSS of the scenario's own child process: VmHWM of /proc/self/status "
                         "(ru_maxrss would inherit the launching process's high-water mark across "
                         "fork+exec on Linux); includes the interpreter and `import torch` (~0.5 GiB)",
        "alloc_note": "alloc_bytes/alloc_count/arena_bytes are null: neither PyTorch's CPU allocator (c10 "
                      "DefaultCPUAllocator) nor pymalloc can be counted like the Rust counting global "
                      "allocator (tracemalloc sees Python objects only, not tensor storage); no planned arena",
        "gc_note": "gc.callbacks around CPython's cyclic collector during the trials; refcount frees are not "
                   "GC pauses and are not counted",
        **parity,
    }


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

SCENARIO_FIELDS = ["id", "axis", "params", "warmup_runs", "trial_runs", "timings_ns", "cpu_times_ns",
                   "warmup_timings_ns", "median_ns", "p95_ns", "min_ns", "max_ns", "iqr_ns", "cpu_median_ns",
                   "memory", "gc", "numerical", "throughput_tokens_per_sec", "derived"]
NESTED = {"memory": ["peak_rss_bytes", "alloc_bytes", "alloc_count", "arena_bytes"],
          "gc": ["total_gc_time_ns", "gc_pause_count"],
          "numerical": ["nan_count", "inf_count", "max_abs"],
          "derived": ["alloc_rate_bytes_per_sec", "gc_throughput", "gflops"]}
# Fields that may be null, and when.
NULL_OK = {"memory.alloc_bytes": "always", "memory.alloc_count": "always", "memory.arena_bytes": "always",
           "derived.alloc_rate_bytes_per_sec": "always", "derived.gflops": "cold start",
           "throughput_tokens_per_sec": "kernels"}
META_FIELDS = ["language", "language_version", "os", "cpu_model", "timestamp", "n_trials", "n_warmup", "seed",
               "matmul_backend", "threads", "git_rev", "schema_version"]


def rust_ids() -> tuple[list[str], list[str]]:
    """(spec ids, all ids) of bench/src/harness/scenarios.rs's SCENARIOS table, in order."""
    text = SCENARIOS_RS.read_text()
    body = text[text.index("pub const SCENARIOS"):]
    body = body[: body.index("\n];")]
    ids = re.findall(r'\bs\(\s*"([A-Za-z0-9_]+)"', body)
    m = re.search(r"pub const SPEC_SCENARIOS: usize = (\d+);", text)
    n = int(m.group(1)) if m else 22
    return ids[:n], ids


def validate(path: Path, expect_ids: list[str] | None = None) -> list[str]:
    """Problems with `path` (empty list: valid)."""
    doc = json.loads(path.read_text())
    problems = []
    meta = doc.get("metadata", {})
    for k in META_FIELDS:
        if k not in meta or meta[k] is None:
            problems.append(f"metadata.{k} missing")
    if meta.get("schema_version") != schema_version():
        problems.append(f"schema_version {meta.get('schema_version')} != ours {schema_version()}")
    spec, ours = rust_ids()
    got = [s.get("id") for s in doc.get("scenarios", [])]
    want = expect_ids if expect_ids is not None else spec
    for i in want:
        if i not in got:
            problems.append(f"scenario {i} missing")
    for i in got:
        if i not in ours:
            problems.append(f"scenario {i} is not an id of bench/src/harness/scenarios.rs")
    if len(set(got)) != len(got):
        problems.append("duplicate scenario ids")
    for s in doc.get("scenarios", []):
        sid = s.get("id")
        for f in SCENARIO_FIELDS:
            if f not in s:
                problems.append(f"{sid}: {f} missing")
        for f, subs in NESTED.items():
            for g in subs:
                if g not in s.get(f, {}):
                    problems.append(f"{sid}: {f}.{g} missing")
        sc = BY_ID.get(sid)
        nulls = [f for f in SCENARIO_FIELDS if f in s and s[f] is None]
        nulls += [f"{f}.{g}" for f, subs in NESTED.items() for g in subs if s.get(f, {}).get(g, 0) is None]
        for n_ in nulls:
            why = NULL_OK.get(n_)
            ok = why == "always" or (why == "cold start" and sc is not None and sc.flops() is None) or (
                why == "kernels" and sc is not None and sc.tokens() is None)
            if not ok:
                problems.append(f"{sid}: {n_} is null")
        if len(s.get("timings_ns", [])) != s.get("trial_runs") or len(s.get("cpu_times_ns", [])) != s.get(
                "trial_runs") or len(s.get("warmup_timings_ns", [])) != s.get("warmup_runs"):
            problems.append(f"{sid}: sample counts do not match trial_runs/warmup_runs")
        if s.get("axis") not in ("memory", "compiler", "type_system", "parallel", "scale"):
            problems.append(f"{sid}: bad axis {s.get('axis')}")
        num = s.get("numerical", {})
        if num.get("nan_count") or num.get("inf_count"):
            problems.append(f"{sid}: non-finite output {num}")
    return problems


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def fmt_ns(ns: float) -> str:
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def run_child(sc: Scenario, o) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", sc.id, "--trials", str(o.trials),
           "--warmup", str(o.warmup), "--model", o.model, "--attn", o.attn]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"child for {sc.id} failed ({r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=N_TRIALS, help="timed trials per scenario (default 10)")
    ap.add_argument("--warmup", type=int, default=N_WARMUP, help="warmup runs per scenario (default 3)")
    ap.add_argument("--only", nargs="+", default=[], metavar="ID",
                    help="run only these scenario ids (space- or comma-separated)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "pytorch.json")
    ap.add_argument("--model", choices=["compact", "hf"], default="compact",
                    help="compact nn.Module (default) or transformers MixtralForCausalLM")
    ap.add_argument("--attn", choices=["sdpa", "explicit"], default="sdpa",
                    help="compact model attention: F.scaled_dot_product_attention (default) or explicit")
    ap.add_argument("--in-process", action="store_true", help="run every scenario in this process")
    ap.add_argument("--skip-parity", action="store_true", help="skip the HF parity check (parity fields null)")
    ap.add_argument("--list", action="store_true", help="list scenario ids and exit")
    ap.add_argument("--validate", type=Path, metavar="FILE", help="only validate FILE against our schema and ids")
    ap.add_argument("--child", metavar="ID", help=argparse.SUPPRESS)
    ap.add_argument("--cold-start", action="store_true", help=argparse.SUPPRESS)
    o = ap.parse_args(argv)
    o.only = [x for item in o.only for x in item.split(",") if x]
    if o.trials < 1:
        ap.error("--trials must be at least 1")
    if o.warmup < 0:
        ap.error("--warmup must be >= 0")
    return o


def main(argv=None) -> int:
    o = parse_args(argv)
    if o.cold_start:
        cold_start_main(o)
        return 0
    if o.child:
        r = run_scenario(BY_ID[o.child], o)
        sys.stdout.write(json.dumps(r) + "\n")
        return 0
    if o.list:
        for s in SCENARIOS:
            print(f"{s.id:<24} {s.axis}")
        return 0
    if o.validate:
        probs = validate(o.validate)
        print("\n".join(probs) if probs else f"{o.validate}: valid")
        return 1 if probs else 0

    unknown = [i for i in o.only if i not in BY_ID]
    if unknown:
        print(f"unknown scenario id(s) {unknown}; known: {', '.join(BY_ID)}", file=sys.stderr)
        return 2
    picked = [s for s in SCENARIOS if not o.only or s.id in o.only]

    parity = {"parity_max_abs_diff": None, "parity_ok": None}
    if not o.skip_parity:
        parity = parity_check(o.attn)
        print(f"parity (tiny, compact vs MixtralForCausalLM, same weights): max |Δlogits| = "
              f"{parity['parity_max_abs_diff']:.3e} (tol {PARITY_TOL:g}); |Δloss| = "
              f"{parity['parity_loss_abs_diff']:.3e}; max |Δgrad| = {parity['parity_grad_max_abs_diff']:.3e}",
              file=sys.stderr)
        if not parity["parity_ok"]:
            print("parity check FAILED; not benchmarking", file=sys.stderr)
            return 1
    meta = metadata(o, parity)

    results, failures = [], []
    t0 = time.perf_counter()
    for i, sc in enumerate(picked, 1):
        print(f"[{i}/{len(picked)}] {sc.id} ...", file=sys.stderr, flush=True)
        try:
            r = run_scenario(sc, o) if o.in_process else run_child(sc, o)
            results.append(r)
        except Exception as e:  # noqa: BLE001 — the others still run
            print(f"{sc.id}: FAILED: {e}", file=sys.stderr)
            failures.append(sc.id)
    doc = {"metadata": meta, "scenarios": results}
    o.out.parent.mkdir(parents=True, exist_ok=True)
    o.out.write_text(json.dumps(doc, indent=2) + "\n")

    print(f"{'scenario':<24} {'axis':<11} {'median':>10} {'p95':>10} {'IQR':>10} {'cpu':>10} {'peak RSS':>10} "
          f"{'tokens/s':>12} {'GFLOP/s':>8} {'gc':>4}")
    for s in results:
        tp = s["throughput_tokens_per_sec"]
        gf = s["derived"]["gflops"]
        print(f"{s['id']:<24} {s['axis']:<11} {fmt_ns(s['median_ns']):>10} {fmt_ns(s['p95_ns']):>10} "
              f"{fmt_ns(s['iqr_ns']):>10} {fmt_ns(s['cpu_median_ns']):>10} "
              f"{s['memory']['peak_rss_bytes'] / 2**20:>7.1f} MiB {'-' if tp is None else f'{tp:.0f}':>12} "
              f"{'-' if gf is None else f'{gf:.2f}':>8} {s['gc']['gc_pause_count']:>4}")
    print(f"{len(results)} scenarios in {time.perf_counter() - t0:.1f} s, wrote {o.out}")

    expect = [s.id for s in picked]
    probs = validate(o.out, expect_ids=[i for i in expect if i not in failures] if o.only else None)
    spec, ours = rust_ids()
    absent = [i for i in ours if i not in {s["id"] for s in results}]
    if not o.only:
        print("ids of bench/src/harness/scenarios.rs not in this file: "
              + (", ".join(f"{i} ({RUST_ONLY.get(i, 'not run')})" for i in absent) or "none"))
    if probs:
        print("validation problems:\n  " + "\n  ".join(probs), file=sys.stderr)
    else:
        print(f"validated: all {len(spec)} spec ids present" if not o.only else "validated",
              "and every CONTRACT §7 field present (nulls only where documented)")
    if failures:
        print(f"{len(failures)} scenario(s) failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if (failures or probs) else 0


if __name__ == "__main__":
    sys.exit(main())
