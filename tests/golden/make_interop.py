#!/usr/bin/env python3
"""Interop fixtures (issue 15): checkpoints *written by transformers* in the forms
people have, and their golden logits / losses / gradients.

For each dtype in (bfloat16, float16) it builds a small random Mixtral
(GQA 4 q / 2 kv heads, head_dim 12 != hidden/heads, sliding_window 4 < t = 12,
rope_theta 1e6), casts it to the dtype and writes it with
`save_pretrained(dir, max_shard_size="40KB")` (sharded: index + shards). It then
reloads that directory in float32 (`from_pretrained(dir, dtype=torch.float32)`,
so every weight is the dtype's value widened exactly) and records, in float32:

  golden.safetensors: logits [b,t,v], loss, ce_loss, aux_loss (F32 [1]) and
  NAME.grad (CONTRACT §2 names) for every parameter, of
  loss = CE(ignore_index=-100, no shift) + alpha * load_balancing_loss_func.
  tokens.json: {"input_ids", "targets" (with -100 entries), "aux_alpha"}.

Also writes tokenizer/: a byte-level BPE tokenizer.json trained by the Python
`tokenizers` library on data/ (the shipped corpus) and the ids it gives for a
fixed text (ids.json), for the Rust encode/round-trip test.

Run: /work/venv/bin/python tests/golden/make_interop.py   (writes tests/golden/interop/)
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file
from transformers import MixtralConfig, MixtralForCausalLM
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "interop")
P = dict(vocab=64, hidden=32, layers=2, heads=4, kv=2, head_dim=12, ffn=32, experts=4, top_k=2)
B, T, WINDOW, ALPHA = 2, 12, 4, 0.01
TEXT = "The quick brown fox jumps over the lazy dog. Ünïcödé: naïve café, 数字 42!\n"


def hf_config(dtype: str) -> MixtralConfig:
    return MixtralConfig(
        vocab_size=P["vocab"], hidden_size=P["hidden"], intermediate_size=P["ffn"],
        num_hidden_layers=P["layers"], num_attention_heads=P["heads"],
        num_key_value_heads=P["kv"], head_dim=P["head_dim"],
        num_local_experts=P["experts"], num_experts_per_tok=P["top_k"],
        max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=1e6,
        sliding_window=WINDOW, tie_word_embeddings=False, router_aux_loss_coef=ALPHA,
        router_jitter_noise=0.0, attention_dropout=0.0, dtype=dtype,
    )


def contract_names():
    names = ["model.embed_tokens.weight"]
    for i in range(P["layers"]):
        pre = f"model.layers.{i}"
        names += [f"{pre}.input_layernorm.weight"] + [
            f"{pre}.self_attn.{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "o_proj")
        ] + [f"{pre}.post_attention_layernorm.weight", f"{pre}.block_sparse_moe.gate.weight"]
        for j in range(P["experts"]):
            names += [f"{pre}.block_sparse_moe.experts.{j}.{w}.weight" for w in ("w1", "w3", "w2")]
    return names + ["model.norm.weight", "lm_head.weight"]


def grads_as_contract(model):
    f = P["ffn"]
    hf = dict(model.named_parameters())
    out = {}
    for name in contract_names():
        if ".block_sparse_moe.experts." in name:
            pre, rest = name.split(".block_sparse_moe.experts.")
            j, w, _ = rest.split(".")
            j = int(j)
            if w == "w2":
                g = hf[pre + ".mlp.experts.down_proj"].grad[j]
            else:
                g = hf[pre + ".mlp.experts.gate_up_proj"].grad[j]
                g = g[:f] if w == "w1" else g[f:]
        else:
            g = hf[name.replace(".block_sparse_moe.gate.", ".mlp.gate.")].grad
        out[name + ".grad"] = np.ascontiguousarray(g.detach().numpy().astype(np.float32))
    assert len(out) == len(contract_names())
    return out


def make(dtype: str, tdtype) -> None:
    d = os.path.join(OUT, {"bfloat16": "bf16", "float16": "f16"}[dtype])
    shutil.rmtree(d, ignore_errors=True)
    torch.manual_seed(15)
    m = MixtralForCausalLM(hf_config("float32")).eval()
    with torch.no_grad():  # weights large enough that every gradient matters
        for n, p in m.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.25 * (2 * torch.rand_like(p) - 1))
            elif "embed" in n:
                p.normal_(0, 1)
            else:
                p.normal_(0, p.shape[-1] ** -0.5)
    m = m.to(tdtype)
    m.config.dtype = dtype
    m.save_pretrained(d, max_shard_size="40KB")
    assert os.path.exists(os.path.join(d, "model.safetensors.index.json")), "not sharded"
    model, info = MixtralForCausalLM.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager",
        experts_implementation="eager", output_loading_info=True)
    assert all(not v for v in info.values()), info
    model.eval()
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, P["vocab"], (B, T), generator=g)
    tgt = torch.randint(0, P["vocab"], (B, T), generator=g)
    tgt[0, :3] = -100  # ignored positions (HF's ignore_index)
    tgt[1, 5] = -100
    tgt[1, 11] = -100
    out = model(input_ids=ids, output_router_logits=True, use_cache=False)
    logits = out.logits
    ce = F.cross_entropy(logits.reshape(-1, P["vocab"]), tgt.reshape(-1), ignore_index=-100)
    aux = load_balancing_loss_func(out.router_logits, P["experts"], P["top_k"])
    loss = ce + ALPHA * aux
    loss.backward()
    gold = {
        "logits": logits.detach().numpy().astype(np.float32),
        "loss": np.array([loss.item()], np.float32),
        "ce_loss": np.array([ce.item()], np.float32),
        "aux_loss": np.array([aux.item()], np.float32),
        # Windowed vs full-causal check: logits with the window removed differ.
    }
    gold.update(grads_as_contract(model))
    save_file(gold, os.path.join(d, "golden.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "tokens.json"), "w") as fh:
        json.dump({"input_ids": ids.tolist(), "targets": tgt.tolist(), "aux_alpha": ALPHA}, fh)
        fh.write("\n")
    # Sanity: the window matters for this batch (else the test would not test it).
    full = MixtralForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                              experts_implementation="eager", sliding_window=None).eval()
    with torch.no_grad():
        diff = (full(input_ids=ids, use_cache=False).logits - logits).abs().max().item()
    assert diff > 1e-2, diff
    print(f"{dtype}: loss {loss.item():.6f} ce {ce.item():.6f} aux {aux.item():.6f}; "
          f"window changes logits by {diff:.3g}; files {sorted(os.listdir(d))}")


def make_tokenizer() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    d = os.path.join(OUT, "tokenizer")
    os.makedirs(d, exist_ok=True)
    corpus = os.path.join(os.path.dirname(os.path.dirname(HERE)), "data")
    files = sorted(os.path.join(corpus, f) for f in os.listdir(corpus) if f.endswith(".txt"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train(files, trainer)
    tok.save(os.path.join(d, "tokenizer.json"))
    ids = tok.encode(TEXT).ids
    assert tok.decode(ids) == TEXT
    with open(os.path.join(d, "ids.json"), "w", encoding="utf-8") as fh:
        json.dump({"text": TEXT, "ids": ids, "vocab_size": tok.get_vocab_size()}, fh, ensure_ascii=False)
        fh.write("\n")
    print(f"tokenizer: vocab {tok.get_vocab_size()}, {len(ids)} ids for {len(TEXT.encode())} bytes")


def make_init() -> None:
    """A transformers-written float32 checkpoint with the fixture tokenizer's
    300-token vocabulary, for `moe train --init DIR --tokenizer` (fine-tuning)."""
    d = os.path.join(OUT, "init300")
    shutil.rmtree(d, ignore_errors=True)
    torch.manual_seed(16)
    cfg = hf_config("float32")
    cfg.vocab_size = 300
    cfg.sliding_window = None
    m = MixtralForCausalLM(cfg).eval()
    m.save_pretrained(d)
    os.remove(os.path.join(d, "generation_config.json"))
    print(f"init300: {sorted(os.listdir(d))}")


def main() -> int:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    make("bfloat16", torch.bfloat16)
    make("float16", torch.float16)
    make_tokenizer()
    make_init()
    return 0


if __name__ == "__main__":
    sys.exit(main())
