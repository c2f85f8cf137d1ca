"""Write a Llama model with random weights (seed 0) in Hugging Face layout, with the tokenizer and
chat template of a ferrotune tiny model, for the training benchmarks and the device check.

    python bench/train/make_llama.py TINY_DIR OUT_DIR {1b,7b,cpu-small} [cuda|cpu]

1b: Llama-3.2-1B shapes; 7b: Llama-2-7B shapes; cpu-small: a stand-in small enough for CPUs.
Weights are bf16 when generated on a GPU, f32 on the CPU."""
import json
import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
               rope_theta=500000.0),
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False,
               rope_theta=10000.0),
    "cpu-small": dict(vocab_size=32000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True,
                      rope_theta=500000.0),
}


def main():
    tiny, out, size = sys.argv[1:4]
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    ids = json.load(open(f"{tiny}/config.json"))
    cfg = LlamaConfig(max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu",
                      bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"], **SHAPES[size])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    # transformers 5 keeps rope_theta under rope_parameters; mistral.rs 0.8.1 reads it top-level.
    saved = json.load(open(f"{out}/config.json"))
    saved.setdefault("rope_theta", (saved.get("rope_parameters") or {}).get("rope_theta", SHAPES[size]["rope_theta"]))
    json.dump(saved, open(f"{out}/config.json", "w"), indent=2)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(f"{tiny}/{f}", f"{out}/{f}")
    print(f"{size}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters -> {out}")


if __name__ == "__main__":
    main()
