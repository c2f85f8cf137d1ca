#!/usr/bin/env python3
"""Reference fixtures for checking ferrotune's candle LoRA against HF transformers + PEFT.

Subcommands
-----------
generate        Build tiny random-weight Llama / Qwen2 models, wrap them with PEFT LoRA,
                run one forward+backward pass on a fixed batch, and write
                <out>/<arch>/{model/, adapter/, expected.safetensors} plus <out>/README.md.
verify-adapter  Load a base model + a LoRA adapter directory (e.g. one written by the Rust
                code) with HF PEFT, run a forward pass on the batch stored in an
                expected.safetensors file, and compare logits. Exit 1 on mismatch.

Everything runs on CPU in float32; no downloads (all weights are random, seeded).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ARCHS = ["llama", "qwen2"]
DEFAULT_OUT = (Path(__file__).resolve().parent / "../../tests/fixtures/parity").resolve()

# Fixed batch geometry.
BATCH, SEQ, VOCAB = 2, 12, 300
N_PAD = 3       # right padding at the end of row 1
N_PROMPT = 4    # first 4 labels of each row are masked with -100

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# "eager" attention in both generate and verify so the reference is the plain
# softmax(QK^T/sqrt(d) + mask) V computation, not a fused SDPA kernel.
ATTN_IMPL = "eager"


def make_config(arch):
    """Tiny float32 config shared by both architectures (plus arch-specific bits)."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu", initializer_range=0.1,
        attention_dropout=0.0, dtype="float32",
    )
    if arch == "llama":
        return LlamaConfig(
            **common, tie_word_embeddings=False, attention_bias=False,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
            architectures=["LlamaForCausalLM"],
        )
    if arch == "qwen2":
        # Qwen2 always has q/k/v biases (no config switch); o_proj and the MLP have none.
        return Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=False,
                           architectures=["Qwen2ForCausalLM"])
    raise ValueError(arch)


def make_batch():
    """Fixed batch: [2, 12] ids, row 1 right-padded by 3 (pad id 0), first 4 labels masked."""
    g = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int64)
    attention_mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
    attention_mask[1, -N_PAD:] = 0
    input_ids[1, -N_PAD:] = 0
    labels = input_ids.clone()
    labels[:, :N_PROMPT] = -100
    labels[attention_mask == 0] = -100
    return input_ids, attention_mask, labels


def peft_to_file_name(name):
    """PEFT parameter name -> the key it gets in adapter_model.safetensors (drop '.default')."""
    return name.replace(".default.", ".")


def generate_arch(arch, out):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    arch_dir = out / arch
    if arch_dir.exists():
        shutil.rmtree(arch_dir)
    model_dir, adapter_dir = arch_dir / "model", arch_dir / "adapter"

    # --- base model: random init (normal(0, 0.1)) under seed 0 -------------------------
    config = make_config(arch)
    config._attn_implementation = ATTN_IMPL
    torch.manual_seed(0)
    cls = LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM
    model = cls(config).to(torch.float32)
    # HF inits RMSNorm weights to 1, which would hide a bug that ignores them; set every
    # norm weight to 1 + N(0, 0.1). A private generator leaves the global RNG stream (and
    # so every other seeded weight, including PEFT's lora_A init) unchanged.
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        norms = [n for layer in model.model.layers
                 for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        for norm in norms + [model.model.norm]:
            norm.weight.copy_(1.0 + torch.randn(norm.weight.shape, generator=g) * 0.1)
    if arch == "qwen2":
        # HF zero-inits biases; make them non-zero so the bias path is actually exercised.
        torch.manual_seed(1)
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.copy_(torch.randn_like(proj.bias) * 0.1)
        assert model.lm_head.weight is model.model.embed_tokens.weight, "expected tied lm_head"
    model.save_pretrained(model_dir, safe_serialization=True)

    # --- LoRA wrap; B is zero-initialised by PEFT, which would hide bugs, so randomise it -
    lora_cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS,
                          bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora_cfg)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    model.save_pretrained(adapter_dir, safe_serialization=True)
    (adapter_dir / "README.md").unlink(missing_ok=True)  # PEFT's boilerplate model card
    # PEFT stores target_modules as a set, so its JSON order depends on PYTHONHASHSEED;
    # sort it so regenerating gives byte-identical files (PEFT reads it back as a set).
    cfg_path = adapter_dir / "adapter_config.json"
    adapter_cfg = json.loads(cfg_path.read_text())
    adapter_cfg["target_modules"] = sorted(adapter_cfg["target_modules"])
    cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n")

    # --- forward (train mode, all dropouts are 0) + backward ------------------------------
    input_ids, attention_mask, labels = make_batch()
    model.train()
    # HF loss: logits[:, :-1] vs labels[:, 1:], mean cross-entropy over labels != -100.
    out_ = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    out_.loss.backward()

    lora_params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert lora_params and all(".lora_A." in n or ".lora_B." in n for n in lora_params), \
        "only LoRA params should be trainable"
    grads = {"grad." + peft_to_file_name(n): p.grad.detach().clone().contiguous()
             for n, p in lora_params.items()}

    # The grad keys must name exactly the tensors in the saved adapter file.
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        adapter_keys = set(f.keys())
    grad_names = {k[len("grad."):] for k in grads}
    assert grad_names == adapter_keys, (sorted(grad_names ^ adapter_keys))[:10]

    tensors = {
        "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
        "logits": out_.logits.detach().to(torch.float32).contiguous(),
        "loss": out_.loss.detach().to(torch.float32).reshape(1),
        **grads,
    }
    save_file(tensors, str(arch_dir / "expected.safetensors"), metadata={"format": "pt"})
    print(f"[{arch}] loss = {out_.loss.item():.8f}  grads = {len(grads)}  "
          f"logits = {tuple(out_.logits.shape)}  -> {arch_dir}")


def lib_versions():
    import numpy, peft, safetensors, transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "safetensors": safetensors.__version__,
            "numpy": numpy.__version__}


def write_readme(out):
    versions = "\n".join(f"- {k} {v}" for k, v in lib_versions().items())
    (out / "README.md").write_text(f"""# LoRA parity fixtures

Reference outputs from HF transformers + PEFT for checking ferrotune's candle LoRA.
Generated by `scripts/parity/make_fixtures.py` from random, seeded weights (no downloads).

Per architecture (`llama`, `qwen2`):

- `model/` - tiny float32 base model in HF layout (`config.json`, `model.safetensors`).
  hidden 64, 2 layers, 4 heads / 2 KV heads, vocab 300. Llama uses llama3 rope scaling
  and an untied `lm_head`; Qwen2 has tied embeddings (no `lm_head.weight`) and non-zero
  q/k/v biases. Linear/embedding weights are N(0, 0.1); every RMSNorm weight
  (`input_layernorm`, `post_attention_layernorm`, final `model.norm`) is 1 + N(0, 0.1)
  rather than HF's all-ones init, so ignoring a norm weight changes the outputs.
- `adapter/` - PEFT LoRA adapter (r=4, alpha=8, all 7 linear projections), with the
  `lora_B` weights randomised (PEFT would init them to zero).
- `expected.safetensors` - `input_ids`, `attention_mask`, `labels` (int64, [2, 12]),
  `logits` (f32 [2, 12, 300]), `loss` (f32 [1]) and `grad.<adapter tensor name>` for
  every LoRA weight (names identical to the keys of `adapter/adapter_model.safetensors`).

The batch is right-padded: row 1 has its last 3 positions masked (`attention_mask` 0,
token id 0). Labels are the input ids with -100 at the first 4 positions and at padding.
The loss is HF's causal-LM loss: logits at position t predict labels at t+1, mean
cross-entropy over all shifted labels != -100 in the whole batch (13 tokens here).
Forward ran in train mode with all dropouts 0 and eager attention.

Regenerate (from the repo root):

```
python3 -m venv /tmp/parity-venv
/tmp/parity-venv/bin/pip install -r scripts/parity/requirements.txt
/tmp/parity-venv/bin/python scripts/parity/make_fixtures.py generate
```

Check an adapter (e.g. one written by ferrotune) against HF PEFT:

```
/tmp/parity-venv/bin/python scripts/parity/make_fixtures.py verify-adapter \\
    --model tests/fixtures/parity/llama/model --adapter ADAPTER_DIR \\
    --expected tests/fixtures/parity/llama/expected.safetensors
```

Library versions used:

{versions}
""")


def cmd_generate(args):
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # keep CPU reductions in a fixed order
    for arch in ARCHS:
        generate_arch(arch, out)
    write_readme(out)


def cmd_verify_adapter(args):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                attn_implementation=ATTN_IMPL)
    model = PeftModel.from_pretrained(base, args.adapter).eval()

    exp = load_file(args.expected)
    # Other writers may store ids as int32/uint32; torch wants int64 indices.
    input_ids = exp["input_ids"].to(torch.int64)
    attention_mask = exp["attention_mask"].to(torch.int64) if "attention_mask" in exp \
        else torch.ones_like(input_ids)
    expected = exp["logits"].to(torch.float32)

    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    if logits.shape != expected.shape:
        print(f"FAIL: logits shape {tuple(logits.shape)} != expected {tuple(expected.shape)}")
        sys.exit(1)

    diff = (logits - expected).abs()
    max_abs = diff.max().item()
    max_rel = max_abs / max(expected.abs().max().item(), 1e-12)
    valid = attention_mask.bool()  # same, restricted to non-padded positions (informative)
    print(f"max abs diff            : {max_abs:.3e}")
    print(f"max abs diff (unpadded) : {diff[valid].max().item():.3e}")
    print(f"max rel diff            : {max_rel:.3e}  (vs max|expected| = "
          f"{expected.abs().max().item():.4f}, tol {args.tol:g})")
    # PASS criterion: max |got - expected| <= tol * max |expected| over all positions.
    if max_rel <= args.tol:
        print("PASS")
    else:
        print("FAIL")
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write reference fixtures")
    g.add_argument("--out", default=str(DEFAULT_OUT), help=f"output dir (default {DEFAULT_OUT})")
    g.set_defaults(func=cmd_generate)
    v = sub.add_parser("verify-adapter", help="load model+adapter in HF PEFT, compare logits")
    v.add_argument("--model", required=True, help="base model dir (config.json + safetensors)")
    v.add_argument("--adapter", required=True, help="PEFT adapter dir")
    v.add_argument("--expected", required=True, help="safetensors with input_ids/attention_mask/logits")
    v.add_argument("--tol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    v.set_defaults(func=cmd_verify_adapter)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
