#!/usr/bin/env python3
"""Load a checkpoint written by `moe train` (or `moe`'s checkpoint save) into
Hugging Face `transformers.MixtralForCausalLM` and compare its logits with ours.

    venv/bin/python tests/golden/check_hf_load.py CHECKPOINT_DIR \
        [--moe target/release/moe] [--text data/python-docs-prose.txt] [--batch 2] [--seq 64]

CHECKPOINT_DIR is a checkpoint directory (config.json + model.safetensors) or a
`moe train --out` directory (its checkpoint/ is used). The script

1. takes `--batch` windows of `--seq + 1` bytes, evenly spaced over the last
   10 % of `--text` (the held-out part of `moe train`'s split), as byte-level
   tokens (token id = byte value): inputs = the first `seq` bytes, targets = the
   next byte at each position;
2. runs `moe grads --checkpoint DIR --tokens tokens.json --out result.safetensors`
   (our logits, loss and gradients);
3. loads DIR with `MixtralForCausalLM.from_pretrained(DIR, dtype=torch.float32,
   attn_implementation="eager")` (the loading report must be clean: no missing,
   unexpected or mismatched tensors), runs the same inputs forward and computes
   the same cross-entropy;
4. prints the max absolute logit difference, the CE of both, and compares a
   greedy continuation of the first window by `transformers`' `generate` with
   `moe generate --strategy greedy`.

Exits 1 if the max abs logit difference exceeds `--tol` (default 1e-3) or the
loading report is not clean. Needs torch, transformers and safetensors (the
versions of requirements.txt); the Rust test suite does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from transformers import MixtralForCausalLM

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def checkpoint_dir(d: str) -> str:
    sub = os.path.join(d, "checkpoint")
    if not os.path.isfile(os.path.join(d, "config.json")) and os.path.isfile(
        os.path.join(sub, "config.json")
    ):
        return sub
    return d


def windows(text: bytes, batch: int, seq: int) -> list[list[int]]:
    held = text[int(len(text) * 0.9):]
    if len(held) < seq + 1:
        sys.exit(f"--text: held-out part has {len(held)} bytes < seq + 1 = {seq + 1}")
    last = len(held) - (seq + 1)
    starts = [0] if batch == 1 else [i * last // (batch - 1) for i in range(batch)]
    return [list(held[s:s + seq + 1]) for s in starts]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--moe", default=os.path.join(REPO, "target", "release", "moe"))
    ap.add_argument("--text", default=os.path.join(REPO, "data", "python-docs-prose.txt"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--gen", type=int, default=48, help="greedy tokens to compare")
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    ckpt = checkpoint_dir(args.checkpoint)
    with open(os.path.join(ckpt, "config.json")) as f:
        cfg = json.load(f)
    aux_alpha = float(cfg.get("router_aux_loss_coef", 0.01))
    with open(args.text, "rb") as f:
        rows = windows(f.read(), args.batch, args.seq)
    input_ids = [r[:-1] for r in rows]
    targets = [r[1:] for r in rows]

    with tempfile.TemporaryDirectory() as tmp:
        tok_path = os.path.join(tmp, "tokens.json")
        out_path = os.path.join(tmp, "result.safetensors")
        with open(tok_path, "w") as f:
            json.dump({"input_ids": input_ids, "targets": targets, "aux_alpha": aux_alpha}, f)
        subprocess.run(
            [args.moe, "grads", "--checkpoint", ckpt, "--tokens", tok_path, "--out", out_path],
            check=True,
        )
        ours = load_file(out_path)
    our_logits = ours["logits"].astype(np.float64)
    our_ce = float(ours["ce_loss"])

    model, info = MixtralForCausalLM.from_pretrained(
        ckpt, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    model.eval()
    ids = torch.tensor(input_ids, dtype=torch.long)
    with torch.no_grad():
        hf_logits = model(input_ids=ids).logits
    hf_ce = F.cross_entropy(
        hf_logits.reshape(-1, hf_logits.shape[-1]).double(),
        torch.tensor(targets, dtype=torch.long).reshape(-1),
    ).item()
    hf = hf_logits.double().numpy()
    diff = np.abs(hf - our_logits)
    scale = np.abs(hf).max()

    print(f"checkpoint:        {ckpt}")
    print(f"transformers load: {'clean' if not bad else bad}")
    print(f"tokens:            {args.batch} x {args.seq} held-out bytes of {args.text}")
    print(f"logits:            max |HF - moe| = {diff.max():.3e} (mean {diff.mean():.3e}; max |logit| = {scale:.2f})")
    print(f"cross-entropy:     HF {hf_ce:.6f}, moe {our_ce:.6f}, |diff| = {abs(hf_ce - our_ce):.3e}")

    # Greedy continuation of the first window's first half.
    prompt = bytes(input_ids[0][: args.seq // 2])
    with torch.no_grad():
        hf_gen = model.generate(
            torch.tensor([list(prompt)], dtype=torch.long),
            max_new_tokens=args.gen,
            do_sample=False,
            pad_token_id=0,
        )[0].tolist()
    moe_gen = subprocess.run(
        [args.moe, "generate", "--checkpoint", ckpt, "--prompt", prompt.decode("utf-8", "replace"),
         "--max-len", str(len(prompt) + args.gen), "--strategy", "greedy"],
        check=True, capture_output=True,
    ).stdout.rstrip(b"\n")
    hf_text = bytes(t if t < 256 else ord("?") for t in hf_gen).decode("utf-8", "replace")
    same = hf_text == moe_gen.decode("utf-8", "replace")
    print(f"greedy ({args.gen} tokens): {'identical' if same else 'DIFFERENT'}")
    print(f"  HF:  {hf_text!r}")
    print(f"  moe: {moe_gen.decode('utf-8', 'replace')!r}")

    ok = not bad and diff.max() <= args.tol
    print("OK" if ok else f"FAIL (tolerance {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
