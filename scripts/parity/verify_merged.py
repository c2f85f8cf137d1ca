#!/usr/bin/env python3
"""Check a `ferrotune model export --format hf` directory against PyTorch: the merged model loaded
with transformers must give the logits of the base model with the adapter applied by PEFT.

    /tmp/parity-venv/bin/python scripts/parity/verify_merged.py \\
        --base BASE_DIR --adapter ADAPTER_DIR --merged MERGED_DIR

Prints the relative error (max |diff| / max |reference|) on a few prompts; exits 1 above --tol.
With --nf4 the adapter is a QLoRA one trained on the base in NF4 with double-quantized scales:
PEFT then applies it over the base's projections round-tripped through NF4 by
scripts/parity/qlora_reference.py's own implementation.
"""
import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = ["What should I do for a mild headache?", "def fib(n):\n    return n", "Café ☕ 東京 2026"]


def nf4_base(src, out):
    """`src` with its projections round-tripped through NF4 (double-quantized scales), in `out`."""
    from safetensors.numpy import load_file, save_file

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from qlora_reference import is_projection, nf4_round_trip

    for f in Path(src).iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.suffix != ".gguf":
            shutil.copy(f, Path(out) / f.name)
    weights = load_file(str(Path(src) / "model.safetensors"))
    save_file({k: nf4_round_trip(v) if is_projection(k) else v for k, v in weights.items()},
              str(Path(out) / "model.safetensors"))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--merged", required=True)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--nf4", action="store_true", help="the adapter trained on the base in NF4 (double-quantized)")
    args = p.parse_args()
    tok = AutoTokenizer.from_pretrained(args.base)
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    base = args.base
    if args.nf4:
        base = nf4_base(args.base, tempfile.mkdtemp())
    peft = PeftModel.from_pretrained(load(base), args.adapter).eval()
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
