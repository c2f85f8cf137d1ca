#!/usr/bin/env python3
"""Reference DPO / IPO / SimPO losses and LoRA gradients for ferrotune's preference trainer.

Written for this project in plain PyTorch + PEFT (the formulas of TRL's DPOTrainer and of
LLaMA-Factory's SimPO and `pref_ftx`), on the Llama parity fixture (`tests/fixtures/parity/llama`:
tiny random model and an adapter with random B). The policy is the model with the adapter; the
reference is the same model inside PEFT's `disable_adapter()`. Sequence log-probabilities are the
sums of log-softmax over the answer tokens, each sequence run alone (no padding), and the
gradients come from autograd through the whole model.

Writes tests/fixtures/parity/llama/dpo.safetensors:
  seq{i}.input_ids, seq{i}.labels   int64 [len]  (pairs are (seq0, seq1) and (seq2, seq3))
  ref_logps, policy_logps           f32 [4]
  {case}.loss                       f32 [1]
  {case}.grad.<adapter tensor name> for every LoRA weight
Cases: sigmoid (beta 0.3), ipo (beta 0.3), simpo (beta 0.3, gamma 0.5), sigmoid_ftx (beta 0.3,
pref_ftx 0.2). Run with the parity venv: scripts/parity/requirements.txt.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import DEFAULT_OUT, peft_to_file_name  # noqa: E402

CASES = {
    "sigmoid": dict(loss="sigmoid", beta=0.3, ftx=0.0),
    "ipo": dict(loss="ipo", beta=0.3, ftx=0.0),
    "simpo": dict(loss="simpo", beta=0.3, ftx=0.0, gamma=0.5),
    "sigmoid_ftx": dict(loss="sigmoid", beta=0.3, ftx=0.2),
}
# (prompt length, answer length) of each sequence; pairs share their prompt.
SHAPES = [(4, 5), (4, 3), (3, 6), (3, 2)]


def sequences():
    g = torch.Generator().manual_seed(11)
    out = []
    for pair in range(2):
        plen = SHAPES[2 * pair][0]
        prompt = torch.randint(1, 300, (plen,), generator=g)
        for k in range(2):
            alen = SHAPES[2 * pair + k][1]
            answer = torch.randint(1, 300, (alen,), generator=g)
            ids = torch.cat([prompt, answer])
            labels = ids.clone()
            labels[:plen] = -100
            out.append((ids, labels))
    return out


def seq_logps(model, seqs):
    """(sum of answer log-probs, answer tokens) per sequence."""
    sums, counts = [], []
    for ids, labels in seqs:
        logits = model(input_ids=ids[None]).logits[0, :-1].float()
        target = labels[1:]
        mask = target != -100
        lp = torch.log_softmax(logits, -1)[mask].gather(1, target[mask][:, None]).squeeze(1)
        sums.append(lp.sum())
        counts.append(int(mask.sum()))
    return torch.stack(sums), torch.tensor(counts, dtype=torch.float64)


def loss_of(case, pol, ref, n):
    beta = case["beta"]
    pol64, ref64 = pol.double(), ref.double()
    c, r = pol64[0::2], pol64[1::2]
    rc, rr = ref64[0::2], ref64[1::2]
    nc, nr = n[0::2], n[1::2]
    if case["loss"] == "sigmoid":
        losses = -F.logsigmoid(beta * ((c - rc) - (r - rr)))
    elif case["loss"] == "ipo":
        h = (c / nc - rc / nc) - (r / nr - rr / nr)
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = -F.logsigmoid(beta * (c / nc - r / nr) - case["gamma"])
    if case["ftx"] > 0:
        losses = losses + case["ftx"] * (-c / nc)
    return losses.mean()


def main():
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fixture = DEFAULT_OUT / "llama"
    base = AutoModelForCausalLM.from_pretrained(fixture / "model", dtype=torch.float32,
                                                attn_implementation="eager")
    model = PeftModel.from_pretrained(base, fixture / "adapter", is_trainable=True)
    model.train()
    seqs = sequences()
    with torch.no_grad(), model.disable_adapter():
        ref, _ = seq_logps(model, seqs)
    tensors = {}
    for i, (ids, labels) in enumerate(seqs):
        tensors[f"seq{i}.input_ids"] = ids.contiguous()
        tensors[f"seq{i}.labels"] = labels.contiguous()
    tensors["ref_logps"] = ref.float().contiguous()
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for name, case in CASES.items():
        model.zero_grad(set_to_none=True)
        pol, n = seq_logps(model, seqs)
        loss = loss_of(case, pol, ref, n)
        loss.backward()
        tensors["policy_logps"] = pol.detach().float().contiguous()
        tensors[f"{name}.loss"] = loss.detach().float().reshape(1)
        for pname, p in lora.items():
            tensors[f"{name}.grad.{peft_to_file_name(pname)}"] = p.grad.detach().clone().contiguous()
        print(f"{name}: loss {loss.item():.8f}")
    save_file(tensors, str(fixture / "dpo.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
