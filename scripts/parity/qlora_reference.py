#!/usr/bin/env python3
"""Reference for QLoRA parity: the Llama parity fixture's base with every decoder projection
round-tripped through NF4 with double-quantized scales (written here independently of the Rust
code, in numpy, from the format's description in src/train/quant/nf4.rs), loaded by transformers,
with the fixture's adapter applied by PEFT. Writes tests/fixtures/parity/llama/qlora_nf4.safetensors:

- `logits`: PEFT's logits on the fixture batch (f32 [2, 12, 300]);
- `dequantized.<name>`: the round-tripped weight of every layer-0 projection.

    /tmp/parity-venv/bin/python scripts/parity/qlora_reference.py
"""
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from safetensors.numpy import load_file as load_np, save_file as save_np
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

FIXTURE = (Path(__file__).resolve().parent / "../../tests/fixtures/parity/llama").resolve()
BLOCK, GROUP = 64, 256
# The NF4 levels published with QLoRA (Dettmers et al. 2023, appendix E; bitsandbytes).
LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)


def nf4_round_trip(w):
    """Blocks of 64 over the flattened tensor, absmax scales, nearest level (ties to the lower);
    scales minus their mean in int8 with one step per 256 scales."""
    flat = w.astype(np.float32).reshape(-1)
    n = flat.size
    blocks = -(-n // BLOCK)
    padded = np.zeros(blocks * BLOCK, dtype=np.float32)
    padded[:n] = flat
    x = padded.reshape(blocks, BLOCK)
    absmax = np.abs(x).max(axis=1)
    safe = np.where(absmax > 0, absmax, 1.0).astype(np.float32)
    normed = np.where(absmax[:, None] > 0, x / safe[:, None], 0.0).astype(np.float32)
    codes = np.abs(normed[..., None] - LEVELS).argmin(axis=-1)
    mean = absmax.astype(np.float64).mean()
    groups = -(-blocks // GROUP)
    scales = np.zeros(blocks, dtype=np.float32)
    for g in range(groups):
        part = absmax[g * GROUP:(g + 1) * GROUP].astype(np.float64) - mean
        step = np.abs(part).max() / 127.0
        q = np.clip(np.round(part / step), -127, 127) if step > 0 else np.zeros_like(part)
        scales[g * GROUP:g * GROUP + part.size] = (q.astype(np.float32) * np.float32(step)) + np.float32(mean)
    out = (LEVELS[codes] * scales[:, None]).reshape(-1)[:n]
    return out.reshape(w.shape).astype(np.float32)


def is_projection(name):
    return name.startswith("model.layers.") and name.endswith("_proj.weight")


def main():
    weights = load_np(str(FIXTURE / "model/model.safetensors"))
    rounded = {k: (nf4_round_trip(v) if is_projection(k) else v) for k, v in weights.items()}
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        shutil.copy(FIXTURE / "model/config.json", base / "config.json")
        save_np(rounded, str(base / "model.safetensors"))
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
        peft = PeftModel.from_pretrained(model, FIXTURE / "adapter").eval()
        with torch.no_grad():
            logits = peft(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits
    out = {"logits": logits.contiguous()}
    for k, v in rounded.items():
        if k.startswith("model.layers.0.") and is_projection(k):
            out[f"dequantized.{k}"] = torch.from_numpy(np.ascontiguousarray(v))
    save_file(out, str(FIXTURE / "qlora_nf4.safetensors"))
    changed = max(float(np.abs(rounded[k] - weights[k]).max()) for k in weights if is_projection(k))
    print(json.dumps({"logits_shape": list(logits.shape), "largest_weight_change": changed}))


if __name__ == "__main__":
    main()
