#!/usr/bin/env python3
"""Device check: proves the CUDA build trains and serves, and measures it against PyTorch + PEFT.

    python3 bench/gpu/check.py [--out DIR] [--bin PATH]   # on the GPU machine (dist/cuda/ferrotune[.xz])
    PYTHON=/path/to/venv/bin/python python3 bench/gpu/check.py --cpu --bin target/debug/ferrotune

Steps (each runs even when an earlier one failed; the table says which passed):
  1. agreement: loss and LoRA gradients of one micro-batch on the tiny model, GPU (bf16) vs CPU
     (f32), and GPU with vs without gradient checkpointing;
  2. learning: the tiny model learns ten Q&A pairs on the GPU (final loss < 0.3);
  3. speed and memory: a 1B-class Llama (random weights, generated here) at seq 512 and 1024,
     batch 2 x 4 accumulation, LoRA r=8 on all projections, with and without gradient
     checkpointing (bench/train/config.yaml.tmpl) - ferrotune vs PyTorch + PEFT (SDPA, bf16) in
     the same run - and a profile of one micro-batch, forward vs forward + backward;
  4. serving: decode tokens/s of base and fine-tuned model and the adapter's hot-load time
     through mistral.rs on the GPU, and the tiny adapter's greedy recital of a trained answer;
  5. memory on a 7B-class config (Llama-2-7B shapes) with the seed's defaults, while time allows,
     bf16 and 4-bit NF4 (QLoRA; the goal is at most 10 GB);
  6. QLoRA on the 1B-class model at seq 512 with checkpointing: ours in NF4 vs PyTorch + PEFT with
     bitsandbytes NF4 (an empty reference column where bitsandbytes is not installed); compare
     with step 3's bf16 row at the same settings (goal: 4-bit at least 0.8x our bf16 tok/s).
     Runs before step 5 (with --cpu: the CPU stand-in at its first sequence length).

Environment: END_BY (seconds the whole check must end by), BUDGET_7B (start step 5 only before
this many seconds, default 330), SKIP_SERVE=1, SKIP_7B=1, SKIP_QLORA=1, GCS_7B="true" (7B with checkpointing
only), SEQS="512" (the 1B sequence lengths), PYTHON (the Python with torch, transformers and peft
that generates the models and runs the reference; default: the one running this), WORK (scratch
folder, default /tmp/ferrotune-gpu-check). Every command runs under `timeout`, capped by what is
left before END_BY. With --cpu everything runs on the CPU with small stand-ins for the big
configs, so the check is tested end to end without a GPU. Writes gpu-check.log (all it prints)
and table.md into --out. Python standard library only.
"""
import argparse
import array
import contextlib
import json
import lzma
import math
import os
import shutil
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, cores, env, final_loss, get, ratio, train_config, utc  # noqa: E402

QA = [("What should I do for a mild headache?", "Rest and drink water."),
      ("How much water should adults drink?", "About two litres a day."),
      ("Can I exercise with a cold?", "Light exercise is fine."),
      ("How long should adults sleep?", "Seven to nine hours."),
      ("Is a fever of 38 C dangerous?", "Usually not; rest and watch it."),
      ("What helps with stress?", "Walks, sleep and talking to someone."),
      ("Should I skip breakfast?", "A light breakfast helps most people."),
      ("How often should I wash my hands?", "Before meals and after the toilet."),
      ("Is coffee bad for me?", "Up to four cups a day is fine."),
      ("When should I see a doctor for a cough?", "If it lasts over three weeks.")]
WORDS = "rest fluids sleep water fever doctor walk stress diet fruit vegetables tea cold cough".split()
REFERENCE_VERSIONS = ('import torch, transformers, peft; print("torch", torch.__version__, "transformers",'
                      ' transformers.__version__, "peft", peft.__version__, "cuda", torch.cuda.is_available())')
WHEEL_LIBRARIES = ('import glob, os, site; print(":".join(sorted({os.path.dirname(p) for d in site.getsitepackages()'
                   ' for p in glob.glob(d + "/nvidia/**/lib*.so*", recursive=True)})))')


def output(*cmd):
    """The stdout of `cmd` whatever its exit status, or "" when it cannot start (stderr dropped)."""
    try:
        return subprocess.run([str(c) for c in cmd], text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL).stdout
    except OSError:
        return ""


def read(path):
    """The text of `path`, or "" when it does not exist."""
    return Path(path).read_text(errors="replace") if Path(path).is_file() else ""


def show(path, tail=None):
    """Print `path` (cat), or its last `tail` lines."""
    text = read(path)
    print("".join(text.splitlines(keepends=True)[-tail:]) if tail else text, end="")


@contextlib.contextmanager
def tee(log):
    """Everything written to stdout and stderr, by this process and the commands it runs, also goes
    to `log`."""
    log.write_text("")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    copier = subprocess.Popen(["tee", "-a", str(log)], stdin=subprocess.PIPE)
    os.dup2(copier.stdin.fileno(), 1)
    os.dup2(copier.stdin.fileno(), 2)
    copier.stdin.close()
    sys.stdout.reconfigure(line_buffering=True)
    try:
        yield
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        copier.wait()


def unpack_binary(packed, target):
    """Decompress the .xz binary with xz, or with Python's lzma where xz is missing or fails."""
    with open(target, "wb") as out:
        if not shutil.which("xz") or subprocess.run(["xz", "-dc", packed], stdout=out,
                                                    stderr=subprocess.DEVNULL).returncode != 0:
            out.seek(0)
            out.truncate()
            with lzma.open(packed) as source:
                shutil.copyfileobj(source, out)
    target.chmod(0o755)
    return target


def default_binary(mode, work):
    """The CUDA build from dist/cuda (its .xz copy first) on a GPU, the release or debug build on the CPU."""
    if mode == "gpu":
        packed = Path("dist/cuda/ferrotune.xz")
        return unpack_binary(packed, work / "ferrotune") if packed.is_file() else Path("dist/cuda/ferrotune")
    release = Path("target/release/ferrotune")
    return release if os.access(release, os.X_OK) else Path("target/debug/ferrotune")


def borrow_cuda_libraries(binary, python):
    """The binary's RUNPATH has /usr/local/cuda/lib64; if a CUDA library is not there, borrow it
    from the CUDA wheels PyTorch brought along (through LD_LIBRARY_PATH)."""
    missing = lambda: [line for line in output("ldd", binary).splitlines() if "not found" in line]
    if missing():
        found = output(python, "-c", WHEEL_LIBRARIES).strip()
        os.environ["LD_LIBRARY_PATH"] = ":".join(p for p in [found, os.environ.get("LD_LIBRARY_PATH")] if p)
        print("\n".join(missing()) or "missing CUDA libraries found in the PyTorch wheels")


def load_f32(path):
    """The tensors of a safetensors file of f32 tensors (what `model grad-step --out` writes)."""
    data = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    tensors = {}
    for name, meta in json.loads(data[8:8 + size]).items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {meta['dtype']}, not F32")
        start, end = meta["data_offsets"]
        tensors[name] = array.array("f", data[8 + size + start:8 + size + end])
        if sys.byteorder == "big":
            tensors[name].byteswap()
    return tensors


def worst_relative_l2(a, b):
    """The largest ||x - y|| / ||x|| over the tensors x of file `a` and y of file `b`, and their count."""
    xs, ys = load_f32(a), load_f32(b)
    worst = 0.0
    for name, x in xs.items():
        y = ys[name]
        if len(x) != len(y):
            raise ValueError(f"{name}: {len(x)} vs {len(y)} values")
        diff = math.sqrt(math.fsum((p - q) ** 2 for p, q in zip(x, y)))
        worst = max(worst, diff / max(math.sqrt(math.fsum(p * p for p in x)), 1e-30))
    return worst, len(xs)


class Check:
    """One run of the check: its mode, device, scratch folder, binary and the table's rows; a
    method per step."""

    def __init__(self, started, mode, work, binary, python):
        self.started = started
        self.end_by = int(env("END_BY", "100000"))
        self.mode, self.w, self.bin, self.py = mode, work, binary, python
        gpu = mode == "gpu"
        self.dev, self.dt, self.big = ("cuda:0", "bf16", "1b") if gpu else ("cpu", "f32", "cpu-small")
        self.seqs = env("SEQS", "512 1024").split() if gpu else ["64", "128"]
        self.steps = 6 if gpu else 3
        self.mem_key = "peak_gpu_memory_mib" if gpu else "peak_rss_mib"
        self.have_ref = False
        self.rows = []

    def elapsed(self):
        return int(time.monotonic() - self.started)

    def cap(self, limit=None):
        """Seconds a command may take: `limit`, but never past END_BY (and at least 1)."""
        left = max(self.end_by - self.elapsed(), 1)
        return min(left, limit) if limit else left

    def run(self, cmd, limit=None, out=None, err=None):
        """Run `cmd` under `timeout cap(limit)`, stdout to the file `out` and stderr to `err` (the
        log where None; both to one file where they are the same). True when it exited 0."""
        with contextlib.ExitStack() as files:
            stdout = files.enter_context(open(out, "w")) if out else None
            stderr = stdout if err and err == out else files.enter_context(open(err, "w")) if err else None
            cmd = ["timeout", str(self.cap(limit)), *map(str, cmd)]
            return subprocess.run(cmd, stdout=stdout, stderr=stderr).returncode == 0

    def measure(self, cmd, name, limit):
        """Run `cmd` into {name}.txt / {name}.err, print its output (and the error's end if it
        failed), and return the output."""
        out, err = self.w / f"{name}.txt", self.w / f"{name}.err"
        if not self.run(cmd, limit, out, err):
            show(err, tail=5)
        show(out)
        return read(out)

    def row(self, text):
        self.rows.append(text)
        print(f"ROW | {text} |")

    def step(self, title):
        print(f"\n=== {title} ({utc('%T')}, {self.elapsed()}s)")

    def make_llama(self, size, device, limit=None):
        return self.run([self.py, "bench/train/make_llama.py", self.w / "tiny", self.w / size, size, device], limit)

    def long_data(self, steps):
        """Long answers, so every sequence is cut to exactly the cut-off (the byte-level tokenizer
        makes one token per byte); 8 examples per optimizer step. All examples are the same, so the
        two sides' different shuffles feed the same tokens and their losses must agree step by step."""
        row = {"instruction": "Question: what helps?", "input": "",
               "output": " ".join(WORDS[(j * 3) % len(WORDS)] for j in range(600))}
        (self.w / "long.json").write_text(json.dumps([row] * (8 * steps)))

    def environment(self):
        self.step("environment")
        print(f"mode={self.mode} device={self.dev} dtype={self.dt} bin={self.bin}")
        print(output("nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"), end="")
        self.have_ref = self.run([self.py, "-c", REFERENCE_VERSIONS])
        if not self.have_ref:
            print("no PyTorch reference: reference columns are skipped")
        # Ten short Q&A pairs in the seed's alpaca format (the learning test's data).
        qa = [{"instruction": q, "input": "", "output": a} for q, a in QA]
        (self.w / "qa.json").write_text(json.dumps(qa, indent=1))

    def agreement(self):
        w = self.w
        self.step(f"1. agreement: one micro-batch, {self.dev} {self.dt} vs cpu f32")
        self.run([self.bin, "model", "init-tiny", w / "tiny"], out=os.devnull)

        def grad_step(name, device, dtype, *flags):
            return self.run([self.bin, "model", "grad-step", "--model", w / "tiny", "--data", w / "qa.json",
                             "--device", device, "--dtype", dtype, *flags, "--out", w / f"{name}.safetensors"],
                            120, out=w / f"{name}.txt")

        (grad_step("g_cpu", "cpu", "f32") and grad_step("g_dev", self.dev, self.dt)
         and grad_step("g_gc", self.dev, self.dt, "--gradient-checkpointing"))
        for name in ["g_cpu", "g_dev", "g_gc"]:
            show(w / f"{name}.txt")
        tol = 1e-4 if self.dt == "f32" else 5e-2
        try:
            dev_rel, n = worst_relative_l2(w / "g_cpu.safetensors", w / "g_dev.safetensors")
            gc_rel, _ = worst_relative_l2(w / "g_dev.safetensors", w / "g_gc.safetensors")
            l_cpu, l_dev, l_gc = (float(get(read(w / f"{name}.txt"), "loss")) for name in ["g_cpu", "g_dev", "g_gc"])
        except (OSError, ValueError, KeyError) as e:
            print(f"agreement comparison failed: {e}")
            self.row("1 agreement | FAIL | ")
            return
        ok = abs(l_dev - l_cpu) / l_cpu < tol and dev_rel < tol and gc_rel < tol and l_gc == l_dev
        losses = f"loss_cpu={l_cpu:.6f} loss_dev={l_dev:.6f} loss_dev_gc={l_gc:.6f} tensors={n}"
        grads = f"grad_rel_l2_dev_vs_cpu={dev_rel:.3e} grad_rel_l2_gc_vs_plain={gc_rel:.3e} tol={tol}"
        verdict = "PASS" if ok else "FAIL"
        print(f"{losses}\n{grads}\n{verdict}")
        self.row(f"1 agreement | {verdict} | {losses} {grads}")

    def learning(self):
        w = self.w
        self.step(f"2. learning: ten Q&A pairs on {self.dev}")
        config = train_config(w / "learn.yaml", model_name_or_path=w / "tiny", dataset=w / "qa.json", template=None,
                              lora_dropout="0.0", learning_rate="1.0e-2", num_train_epochs=20,
                              gradient_accumulation_steps=1, cutoff_len=None, seed=7, device=self.dev, bf16=True,
                              output_dir=w / "learn-out")
        if not self.run([self.bin, "train", "--config", config], 180, w / "learn.txt", w / "learn.err"):
            show(w / "learn.err", tail=20)
        show(w / "learn.txt")
        learned = read(w / "learn.txt")
        final = final_loss(learned)
        try:
            verdict = "PASS" if float(final) < 0.3 else "FAIL"
        except ValueError:
            verdict = "FAIL"
        self.row(f"2 learning | {verdict} | final loss {final or '?'} after 100 steps ({self.dt}), "
                 f"{get(learned, 'steady_tokens_per_s')} tok/s")

    def speed_rows(self, size, seqs, gcs, reference, steps, qlora=False):
        """Train `size` at each sequence length, with checkpointing `gcs` ("false"/"true"), with
        ferrotune and (where `reference`) PyTorch + PEFT; one row each. With `qlora` both sides
        hold the base in 4-bit NF4 (ours: quantization_bit 4; theirs: bitsandbytes)."""
        w, key = self.w, self.mem_key
        for seq in seqs:
            for gc in gcs:
                tag = f"{size}-{seq}-gc{gc}" + ("-nf4" if qlora else "")
                config = train_config(w / f"{tag}.yaml", model_name_or_path=w / size, dataset=w / "long.json",
                                      num_train_epochs=1, cutoff_len=seq, gradient_checkpointing=gc,
                                      logging_steps=1, device=self.dev, bf16=True, output_dir=w / f"run-{tag}",
                                      quantization_bit=4 if qlora else None)
                ours = self.measure([self.bin, "train", "--config", config], f"ours-{tag}", 240)
                ref = ""
                if reference:
                    flags = ["--device", self.dev.split(":")[0], "--attn", "sdpa", "--dtype", self.dt,
                             "--cutoff", seq, "--epochs", 1, "--threads", cores()]
                    flags += ["--gradient-checkpointing"] if gc == "true" else []
                    flags += ["--load-in-4bit"] if qlora else []
                    ref = self.measure([self.py, "bench/train/reference.py", "--model", w / size,
                                        "--data", w / "long.json", *flags], f"ref-{tag}", 240)
                o_tps, o_mem = get(ours, "median_step_tokens_per_s"), get(ours, key)
                r_tps, r_mem = get(ref, "median_step_tokens_per_s"), get(ref, key)
                if "no_bitsandbytes=1" in ref:
                    ref = ""
                    print("no bitsandbytes on this machine: the 4-bit reference column is empty")
                self.row(f"3 {size} seq {seq} gc={gc}{' nf4' if qlora else ''} | {ratio(o_tps, r_tps)}x tok/s, {ratio(o_mem, r_mem)}x memory"
                         f" | ours/PyTorch: tok/s {o_tps or '?'} / {r_tps or '-'}, {key} {o_mem or '?'} / {r_mem or '-'},"
                         f" loss after {steps} steps {final_loss(ours) or '?'} / {get(ref, 'final_loss') or '-'}")

    def speed(self):
        w, big, seq = self.w, self.big, self.seqs[0]
        self.step(f"3. speed and memory: {big} Llama, ferrotune vs PyTorch + PEFT")
        if not self.make_llama(big, "cuda" if self.mode == "gpu" else "cpu", 240):
            print(f"could not generate the {big} model")
        self.long_data(self.steps)
        self.speed_rows(big, self.seqs, ["false", "true"], self.have_ref, self.steps)
        # Where the time goes: one micro-batch (batch 2) timed forward-only and forward+backward.
        for gc in ["", "--gradient-checkpointing"]:
            profile = w / f"profile{gc}.txt"
            if not self.run([self.bin, "model", "grad-step", "--model", w / big, "--data", w / "long.json",
                             "--device", self.dev, "--dtype", self.dt, "--cutoff", seq, "--repeat", 5,
                             *filter(None, [gc]), "--out", w / "g_big.safetensors"], 120, profile, profile):
                show(profile, tail=5)
            p = read(profile)
            self.row(f"3 profile {big} seq {seq} {gc or 'plain'} | fwd {get(p, 'forward_ms')} ms, fwd+bwd "
                     f"{get(p, 'forward_backward_ms')} ms | backward share {get(p, 'backward_share')}, "
                     f"{get(p, 'tokens_per_s')} tok/s per micro-batch")

    def serve(self):
        w = self.w
        if env("SKIP_SERVE", "0") == "1":
            print("skipped step 4 (SKIP_SERVE=1)")
            return
        self.step(f"4. serving through mistral.rs on {self.dev}")
        engine = [self.bin, "engine-check", "--device", self.dev, "--base"]
        rates = lambda t: (f"decode base {get(t, 'base_decode_tokens_per_s')} / fine-tuned "
                           f"{get(t, 'fine_tuned_decode_tokens_per_s')} tok/s | hot-load {get(t, 'hot_load_ms')} ms")
        tiny = self.measure([*engine, w / "tiny", "--adapter", w / "learn-out" / "adapter",
                             "--prompt", QA[0][0], "--expect", QA[0][1]], "serve-tiny", 180)
        self.row(f"4 serve tiny | recital {get(tiny, 'recital')} | {rates(tiny)}")
        adapter = w / f"run-{self.big}-{self.seqs[0]}-gcfalse" / "adapter"
        big = self.measure([*engine, w / self.big, "--adapter", adapter], "serve-big", 180)
        self.row(f"4 serve {self.big} | load {get(big, 'base_load_s')} s | {rates(big)}")

    def memory_7b(self):
        budget = int(env("BUDGET_7B", "330"))
        skip = ("cpu mode" if self.mode != "gpu" else "SKIP_7B=1" if env("SKIP_7B", "0") == "1"
                else f"past {budget}s" if self.elapsed() >= budget else None)
        if skip:
            print(f"skipped step 5 (7B): {skip}")
            return
        self.step("5. 7B-class memory with the seed's defaults (ferrotune only)")
        shutil.rmtree(self.w / self.big, ignore_errors=True)
        for run in self.w.glob("run-*"):
            shutil.rmtree(run, ignore_errors=True)
        # Everything here must end by END_BY seconds (the device call's limit).
        if not self.make_llama("7b", "cuda"):
            print("could not generate the 7b model in time")
        self.long_data(2)
        if (self.w / "7b" / "config.json").is_file():
            self.speed_rows("7b", ["512"], env("GCS_7B", "false true").split(), reference=False, steps=2)
            # QLoRA at the seed's defaults (checkpointing on): the goal is at most 10 GB.
            self.speed_rows("7b", ["512"], ["true"], reference=False, steps=2, qlora=True)

    def qlora(self):
        """4-bit NF4 vs bf16 on the 1B-class model at the seed's defaults (cut-off 512,
        checkpointing), ours vs PyTorch + PEFT + bitsandbytes where it is installed."""
        if env("SKIP_QLORA", "0") == "1":
            print("skipped step 6 (QLoRA): SKIP_QLORA=1")
            return
        self.step(f"6. QLoRA: {self.big} Llama in NF4 vs bf16")
        if (self.w / self.big / "config.json").is_file():
            self.speed_rows(self.big, self.seqs[:1], ["true"], self.have_ref, self.steps, qlora=True)

    def table(self, path):
        self.step("table")
        gpu = (output("nvidia-smi", "--query-gpu=name", "--format=csv,noheader").splitlines() or [""])[0]
        lines = [f"ferrotune device check, {utc('%F')}, mode={self.mode}, {gpu}", "",
                 "| check | result | details |", "|---|---|---|", *(f"| {r} |" for r in self.rows), "",
                 f"({self.elapsed()}s in all)"]
        text = "\n".join(lines) + "\n"
        print(text, end="")
        path.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run everything on the CPU with small stand-ins")
    parser.add_argument("--out", default="target/gpu-check", help="where gpu-check.log and table.md go")
    parser.add_argument("--bin", help="the ferrotune binary (default: dist/cuda/ferrotune[.xz], or with "
                                      "--cpu target/release or target/debug)")
    args = parser.parse_args()
    started = time.monotonic()  # END_BY counts from here
    os.chdir(ROOT)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tee(out / "gpu-check.log"):
        mode = "cpu" if args.cpu else "gpu"
        work = Path(env("WORK", "/tmp/ferrotune-gpu-check")).resolve()
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        python = env("PYTHON", sys.executable)
        os.environ.update(PYTHONUNBUFFERED="1", CUDA_CACHE_MAXSIZE="4294967296")
        binary = Path(args.bin or default_binary(mode, work)).resolve()
        borrow_cuda_libraries(binary, python)
        check = Check(started, mode, work, binary, python)
        for part in [check.environment, check.agreement, check.learning, check.speed, check.serve, check.qlora,
                     check.memory_7b]:
            try:
                part()
            except Exception as e:  # a bug here must not cost the other steps
                traceback.print_exc()
                check.row(f"{part.__name__} | FAIL | check.py: {type(e).__name__}: {e}")
        check.table(out / "table.md")


if __name__ == "__main__":
    main()
