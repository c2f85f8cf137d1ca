"""Reference side of bench/train: PyTorch + transformers + PEFT LoRA SFT on the same generated
model, the same examples rendered with the same ChatML template, the same LoRA targets, rank,
batch, accumulation, cut-off and thread count as ferrotune's run. Prints steady-state tokens/s
(after the first optimizer step), peak RSS (and peak GPU memory on CUDA) and the final loss as
key=value lines. On a GPU: `--device cuda --dtype bf16 --attn sdpa [--gradient-checkpointing]`;
`--load-in-4bit` loads the base with bitsandbytes NF4 (double-quantized, compute in --dtype), the
QLoRA reference; without bitsandbytes it prints `no_bitsandbytes=1` and exits 3."""
import argparse
import json
import math
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def encode(tok, q, a, cutoff):
    prompt = tok.encode(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).ids
    answer = tok.encode(f"{a}<|im_end|>\n", add_special_tokens=False).ids
    ids = (prompt + answer)[:cutoff]
    labels = ([-100] * len(prompt) + answer)[:cutoff]
    return ids, labels


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--accum", type=int, default=4)
    p.add_argument("--cutoff", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    p.add_argument("--attn", default="eager", help="eager | sdpa")
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--load-in-4bit", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    tok = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    pad = tok.token_to_id("<|endoftext|>")
    records = json.load(open(args.data))
    samples = [encode(tok, r["instruction"], r["output"], args.cutoff) for r in records]
    if args.load_in_4bit:
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            print("no_bitsandbytes=1")
            sys.exit(3)
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation=args.attn,
                                                     quantization_config=bnb, device_map={"": dev})
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation=args.attn).to(dev)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=args.dropout, target_modules=targets, task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(samples) / (args.batch * args.accum))
    total = steps_per_epoch * args.epochs
    step, tokens, t1, tok1, loss_value = 0, 0, None, 0, float("nan")
    marks = []
    g = torch.Generator().manual_seed(0)
    for epoch in range(args.epochs):
        order = torch.randperm(len(samples), generator=g).tolist()
        for k in range(steps_per_epoch):
            chunk = order[k * args.batch * args.accum:(k + 1) * args.batch * args.accum]
            micro = [chunk[i:i + args.batch] for i in range(0, len(chunk), args.batch)]
            losses = []
            for m in micro:
                batch = [samples[i] for i in m]
                t = max(len(s[0]) for s in batch)
                ids = torch.tensor([s[0] + [pad] * (t - len(s[0])) for s in batch], device=dev)
                mask = torch.tensor([[1] * len(s[0]) + [0] * (t - len(s[0])) for s in batch], device=dev)
                labels = torch.tensor([s[1] + [-100] * (t - len(s[1])) for s in batch], device=dev)
                out = model(input_ids=ids, attention_mask=mask, labels=labels)
                (out.loss / len(micro)).backward()
                losses.append(out.loss.item())
                tokens += int(mask.sum())
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            loss_value = sum(losses) / len(losses)
            print(f"step {step}: train_loss={loss_value:.4f}", file=sys.stderr)
            if cuda:
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), tokens))
            if step == 1:
                t1, tok1 = marks[-1]
    if cuda:
        torch.cuda.synchronize()
    rate = (tokens - tok1) / (marks[-1][0] - t1) if step > 1 else float("nan")
    per_step = sorted((b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(marks, marks[1:]))
    print(f"steps={step}")
    print(f"steady_tokens_per_s={rate:.1f}")
    if per_step:
        print(f"median_step_tokens_per_s={per_step[len(per_step) // 2]:.1f}")
    print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
    if cuda:
        print(f"peak_gpu_memory_mib={torch.cuda.max_memory_allocated() / 1048576:.1f}")
    print(f"final_loss={loss_value:.4f}")


if __name__ == "__main__":
    main()
