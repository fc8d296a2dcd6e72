#!/usr/bin/env python3
"""bf16 parity fixture (issue 17 item 3): a float32 Mixtral checkpoint written
by transformers, and the logits / losses transformers computes in float32 after
rounding every weight to bf16 (`w.to(torch.bfloat16).to(torch.float32)`).

The Rust test loads the *unrounded* float32 checkpoint into `Precision::Bf16`
(our round-to-nearest-even on load) and must match these logits and losses
within 1e-5 abs + 1e-4 rel: it checks our rounding against torch's and the bf16
forward against transformers. A few weights are set to exact rounding ties,
subnormals and values that round up into the next binade, so the rounding
rule itself is exercised.

Writes tests/golden/bf16/: config.json, model.safetensors (float32, unrounded),
golden.safetensors (logits [b,t,v], loss, ce_loss, aux_loss as F32 [1],
rounded_bits: the bf16 bit patterns torch gives for the tie/subnormal probes
as I32 [n], probe_index: their flat index in model.embed_tokens.weight),
tokens.json ({"input_ids", "targets" (two -100 entries), "aux_alpha"}).

Run: /work/venv/bin/python tests/golden/make_bf16.py
"""
import json
import os
import shutil
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file
from transformers import MixtralConfig, MixtralForCausalLM
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "bf16")
P = dict(vocab=64, hidden=32, layers=2, heads=4, kv=1, head_dim=8, ffn=32, experts=4, top_k=2)
B, T, ALPHA = 2, 8, 0.01

# f32 bit patterns whose bf16 rounding is a corner case: ties to even (down
# and up), just above / below a tie, subnormal ties, a carry into the exponent.
PROBES = [0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0xBF808000, 0x00008000,
          0x00018000, 0x007FFFFF, 0x3FFFFFFF, 0x3F7F8000, 0xBC7F8000, 0x00000001]


def main() -> int:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    shutil.rmtree(OUT, ignore_errors=True)
    torch.manual_seed(17)
    cfg = MixtralConfig(
        vocab_size=P["vocab"], hidden_size=P["hidden"], intermediate_size=P["ffn"],
        num_hidden_layers=P["layers"], num_attention_heads=P["heads"],
        num_key_value_heads=P["kv"], head_dim=P["head_dim"],
        num_local_experts=P["experts"], num_experts_per_tok=P["top_k"],
        max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
        sliding_window=None, tie_word_embeddings=False, router_aux_loss_coef=ALPHA,
        router_jitter_noise=0.0, attention_dropout=0.0, dtype="float32",
    )
    m = MixtralForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.25 * (2 * torch.rand_like(p) - 1))
            elif "embed" in n:
                p.normal_(0, 1)
            else:
                p.normal_(0, p.shape[-1] ** -0.5)
        emb = m.model.embed_tokens.weight.view(-1)
        idx = list(range(5, 5 + 7 * len(PROBES), 7))
        for i, b in zip(idx, PROBES):
            emb[i] = struct.unpack("<f", struct.pack("<I", b))[0]
    m.save_pretrained(OUT)  # float32, unrounded
    os.remove(os.path.join(OUT, "generation_config.json"))
    # Round every weight as torch does, then compute in float32.
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
        emb = m.model.embed_tokens.weight.view(-1)
        bits = [int(struct.unpack("<I", struct.pack("<f", emb[i].item()))[0]) >> 16 for i in idx]
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(0, P["vocab"], (B, T), generator=g)
    tgt = torch.randint(0, P["vocab"], (B, T), generator=g)
    tgt[0, 2] = -100
    tgt[1, 7] = -100
    with torch.no_grad():
        out = m(input_ids=ids, output_router_logits=True, use_cache=False)
        logits = out.logits
        ce = F.cross_entropy(logits.reshape(-1, P["vocab"]), tgt.reshape(-1), ignore_index=-100)
        aux = load_balancing_loss_func(out.router_logits, P["experts"], P["top_k"])
        loss = ce + ALPHA * aux
    gold = {
        "logits": logits.numpy().astype(np.float32),
        "loss": np.array([loss.item()], np.float32),
        "ce_loss": np.array([ce.item()], np.float32),
        "aux_loss": np.array([aux.item()], np.float32),
        "rounded_bits": np.array(bits, np.int32),
        "probe_index": np.array(idx, np.int32),
    }
    save_file(gold, os.path.join(OUT, "golden.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(OUT, "tokens.json"), "w") as fh:
        json.dump({"input_ids": ids.tolist(), "targets": tgt.tolist(), "aux_alpha": ALPHA}, fh)
        fh.write("\n")
    # The rounding matters for this batch: unrounded logits differ.
    print(f"bf16: loss {loss.item():.6f} ce {ce.item():.6f} aux {aux.item():.6f}; "
          f"probe bits {[hex(b) for b in bits]}; files {sorted(os.listdir(OUT))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
