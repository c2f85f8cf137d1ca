"""Writes COUNT PEFT LoRA adapters (r=8, alpha=32, every projection of every layer, small random
weights, a different seed each) for the model in MODEL_DIR: stand-ins for fine-tunes when what is
measured is what serving them costs, not what they learned. Standard library only.

    python3 bench/make_adapters.py --model-dir DIR --out ROOT --count 20   # ROOT/ft-00 …
"""

import argparse
import array
import json
import os
import random
import struct

RANK = 8


def shapes(config):
    h, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads) * (h // heads)
    attn = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h)}
    mlp = {"gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    for layer in range(config["num_hidden_layers"]):
        for group, modules in (("self_attn", attn), ("mlp", mlp)):
            for name, (fan_in, fan_out) in modules.items():
                prefix = f"base_model.model.model.layers.{layer}.{group}.{name}"
                yield f"{prefix}.lora_A.weight", (RANK, fan_in)
                yield f"{prefix}.lora_B.weight", (fan_out, RANK)


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, (shape, data) in tensors.items():
        raw = data.tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for raw in blobs:
            f.write(raw)
    os.replace(path + ".tmp", path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=20)
    a = p.parse_args()
    with open(os.path.join(a.model_dir, "config.json")) as f:
        config = json.load(f)
    for i in range(a.count):
        d = os.path.join(a.out, f"ft-{i:02d}")
        if os.path.exists(os.path.join(d, "adapter_model.safetensors")):
            continue
        os.makedirs(d, exist_ok=True)
        rng = random.Random(i)
        tensors = {}
        for name, shape in shapes(config):
            n = shape[0] * shape[1]
            scale = 0.02 if "lora_A" in name else 0.002
            tensors[name] = (shape, array.array("f", (rng.uniform(-scale, scale) for _ in range(n))))
        write_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors)
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump({"peft_type": "LORA", "r": RANK, "lora_alpha": 32, "lora_dropout": 0.05,
                       "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                          "up_proj", "down_proj"],
                       "base_model_name_or_path": "smollm2-135m-instruct", "bias": "none",
                       "task_type": "CAUSAL_LM"}, f)


if __name__ == "__main__":
    main()
