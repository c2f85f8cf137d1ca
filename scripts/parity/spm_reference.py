#!/usr/bin/env python3
"""A SentencePiece BPE tokenizer trained like Llama 2's (identity normalization, whitespace kept,
a dummy prefix, split digits, byte fallback), written as the `tokenizer.ggml.*` values a
llama.cpp converter stores for it (model `llama`: pieces, scores, token types), with the ids
sentencepiece itself gives a varied corpus. tests/api/gguf_spm.rs builds a GGUF file from it and
checks that the imported tokenizer gives the same ids.

    /tmp/parity-venv/bin/python scripts/parity/spm_reference.py --out tests/fixtures/spm/reference.json
"""
import argparse
import io
import json
from pathlib import Path

import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[2]

CORPUS = [
    "What should I do for a mild headache?",
    "Drink about two litres of water a day, more when it is hot.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Pi is 3.14159; 1,000,000 people; 2026-12-02.",
    "Café, naïve, façade, Straße — zebra quixotic jinx.",
    "Emoji 👍 and 東京 are not in the training text.",
    "spaces    and\ttabs\t\tand\n\nnewlines   ",
    "  leading and trailing  ",
]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    rows = json.loads((ROOT / "examples/data/health_qa.json").read_text())
    text = [r["instruction"] for r in rows] + [r["output"] for r in rows]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model, model_type="bpe", vocab_size=600,
        character_coverage=1.0, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        pieces.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "sentencepiece": spm.__version__,
        "tokens": pieces, "scores": scores, "token_type": types,
        "bos_token_id": 1, "eos_token_id": 2, "unknown_token_id": 0,
        "corpus": CORPUS, "ids": [sp.encode(t) for t in CORPUS],
    }, ensure_ascii=False) + "\n")
    for t in CORPUS[:3]:
        print(repr(t), sp.encode(t, out_type=str))


if __name__ == "__main__":
    main()
