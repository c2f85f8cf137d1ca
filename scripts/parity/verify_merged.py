#!/usr/bin/env python3
"""Check a `ferrotune model export --format hf` directory against PyTorch: the merged model loaded
with transformers must give the logits of the base model with the adapter applied by PEFT.

    /tmp/parity-venv/bin/python scripts/parity/verify_merged.py \\
        --base BASE_DIR --adapter ADAPTER_DIR --merged MERGED_DIR

Prints the relative error (max |diff| / max |reference|) on a few prompts; exits 1 above --tol.
"""
import argparse
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = ["What should I do for a mild headache?", "def fib(n):\n    return n", "Café ☕ 東京 2026"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--merged", required=True)
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    tok = AutoTokenizer.from_pretrained(args.base)
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    peft = PeftModel.from_pretrained(load(args.base), args.adapter).eval()
    merged = load(args.merged)
    worst = 0.0
    with torch.no_grad():
        for text in PROMPTS:
            ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
            want, got = peft(ids).logits, merged(ids).logits
            err = ((got - want).abs().max() / want.abs().max()).item()
            worst = max(worst, err)
            print(f"{text!r}: relative error {err:.2e}")
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == "__main__":
    main()
