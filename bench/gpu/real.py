#!/usr/bin/env python3
"""Device check on the real model (SmolLM2-135M-Instruct): serving with and without paged
attention, and issue 19's ensemble measurement, on a GPU machine that has no network, no Rust and
no PostgreSQL.

    python3 bench/gpu/real.py --gguf SmolLM2.gguf --pg pg.tar.xz --out DIR [--bin dist/cuda/ferrotune.xz]
    python3 bench/gpu/real.py --device cpu --model DIR --bin target/debug/ferrotune   # a dry run

1. imports the GGUF (`ferrotune model import-gguf`; trained dense: the stored 4-bit blocks are
   dropped so training and serving read the same bf16 weights);
2. trains a short adapter with `ferrotune train` (no database) for the engine check;
3. `ferrotune engine-check` with `--paged-attention on` and `off`, and on with `--serve-quant`
   q8_0 and q4k: decode tokens/s of the base model at 1, 8 and 32 concurrent generations and of
   the fine-tuned model, hot-load time, and the peak GPU memory in use (nvidia-smi, sampled every
   0.2 s; the base and one fine-tune resident);
4. unpacks PostgreSQL (the tarball from scripts/pack-postgres.sh: Debian's server binaries and the
   libraries they link), starts `ferrotune serve` on the GPU and runs bench/ensemble.py against it.

Writes real.log, table.md, ensemble.json and ensemble.md into --out. Environment: END_BY
(seconds the whole check must end by, default 540), EPOCHS, ENSEMBLE_K (bench/ensemble.py).
"""
import argparse
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, env, get, train_config  # noqa: E402

STARTED = time.time()
W = Path(env("WORK", "/tmp/ferrotune-real"))


def left():
    return float(env("END_BY", "540")) - (time.time() - STARTED)


def log(out, text):
    line = f"[{time.time() - STARTED:6.1f} s] {text}"
    print(line, flush=True)
    with open(out / "real.log", "a") as f:
        f.write(line + "\n")


def run(out, args, name, limit, env_extra=None):
    """Run a command under a time limit; its output goes to DIR/name.txt. Returns the output."""
    path = out / f"{name}.txt"
    limit = max(5, min(limit, left()))
    log(out, f"$ {' '.join(map(str, args))}  (limit {limit:.0f} s)")
    with open(path, "w") as f:
        try:
            code = subprocess.run([str(a) for a in args], stdout=f, stderr=subprocess.STDOUT, timeout=limit,
                                  env={**os.environ, **(env_extra or {})}).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    text = path.read_text(errors="replace")
    log(out, f"  -> {code}; last lines:\n" + "\n".join(text.splitlines()[-6:]))
    return text


class GpuMemory:
    """Peak `memory.used` (MiB) seen by nvidia-smi while the block runs."""

    def __enter__(self):
        self.peak, self.stop = 0, threading.Event()

        def sample():
            while not self.stop.is_set():
                try:
                    used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                          capture_output=True, text=True, timeout=5).stdout.split()
                    self.peak = max([self.peak, *map(int, used[:1])])
                except (OSError, ValueError, subprocess.TimeoutExpired):
                    pass
                self.stop.wait(0.2)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join()


def unpack_binary(src):
    binary = W / "ferrotune"
    if str(src).endswith(".xz"):
        with lzma.open(src) as f, open(binary, "wb") as g:
            shutil.copyfileobj(f, g)
    else:
        shutil.copy(src, binary)
    binary.chmod(0o755)
    return binary


def install_postgres(tarball):
    """Debian's PostgreSQL at its own paths (the binaries find share/ and lib/ from there) and the
    libraries it links, readable by the unprivileged user the embedded cluster runs as."""
    with tarfile.open(tarball) as t:
        t.extractall(W)
    pack = W / "pgmin"
    for src, dst in [(pack / "pg15", Path("/usr/lib/postgresql/15")), (pack / "share15", Path("/usr/share/postgresql/15"))]:
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst, symlinks=True)
    libs = Path("/usr/local/lib/ferrotune-pg")
    shutil.copytree(pack / "libs", libs, dirs_exist_ok=True)
    Path("/etc/ld.so.conf.d/ferrotune-pg.conf").write_text(f"{libs}\n")
    subprocess.run(["ldconfig"], check=False)
    for d in [W, *W.parents]:
        d.chmod(d.stat().st_mode | 0o755)
    return libs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", help="the model as GGUF (imported here)")
    p.add_argument("--model", help="a model directory instead of --gguf")
    p.add_argument("--pg", help="PostgreSQL to install (default: the machine's own)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--bin", default=str(ROOT / "dist" / "cuda" / "ferrotune.xz"))
    p.add_argument("--out", default="real-out")
    args = p.parse_args()
    final = Path(args.out)
    final.mkdir(parents=True, exist_ok=True)
    W.mkdir(parents=True, exist_ok=True)
    out = W / "logs"  # every log here; the ones worth reading are copied to --out at the end
    out.mkdir(exist_ok=True)
    try:
        measure(args, out)
    finally:
        server = (out / "server.txt").read_text(errors="replace") if (out / "server.txt").exists() else ""
        (out / "server-tail.txt").write_text("\n".join(server.splitlines()[-150:]))
        for name in ["real.log", "table.md", "ensemble.json", "ensemble.md", "engine-on.txt", "engine-off.txt",
                     "ensemble.txt", "server-tail.txt"]:  # at most 8 files come back
            if (out / name).exists():
                shutil.copy(out / name, final / name)


def measure(args, out):
    binary = unpack_binary(args.bin)
    rows = []
    model = Path(args.model) if args.model else W / "smollm2"
    if not model.exists():
        run(out, [binary, "model", "import-gguf", args.gguf, model, "--dtype", "f32"], "import", 120)
        (model / "stored_blocks.gguf").unlink(missing_ok=True)
    data = ROOT / "examples" / "data" / "health_qa.json"

    # An adapter for the engine check, trained without a database.
    cfg = train_config(W / "short.yaml", model_name_or_path=model, dataset=data, num_train_epochs=1,
                       output_dir=W / "short", per_device_train_batch_size=8, gradient_accumulation_steps=1,
                       device=args.device, logging_steps=5)
    train = run(out, [binary, "train", "--config", cfg], "train-short", 120)
    rows.append(f"| train 1 epoch (25 steps of 8) | {get(train, 'median_step_tokens_per_s')} tok/s median step | |")
    found = [line.split(": ", 1)[1] for line in train.splitlines() if line.startswith("adapter: ")]
    adapter = Path(found[-1]) if found else W / "short" / "adapter"

    for paged, quant in [("on", "none"), ("off", "none"), ("on", "q8_0"), ("on", "q4k")]:
        name = f"engine-{paged}" + ("" if quant == "none" else f"-{quant}")
        with GpuMemory() as mem:
            t = run(out, [binary, "engine-check", "--base", model, "--adapter", adapter, "--device", args.device,
                          "--dtype", "auto", "--paged-attention", paged, "--serve-quant", quant,
                          "--streams", "8,32", "--tokens", "200"], name, 150)
        rates = " / ".join(get(t, k) or "-" for k in ["base_decode_tokens_per_s", "base_decode_tokens_per_s_streams_8",
                                                      "base_decode_tokens_per_s_streams_32",
                                                      "fine_tuned_decode_tokens_per_s"])
        rows.append(f"| paged attention {paged}, serve-quant {quant} ({get(t, 'paged_attention')}, KV "
                    f"{get(t, 'kv_cache_mib') or '-'} MiB) | {rates} | hot-load {get(t, 'hot_load_ms')} ms, "
                    f"GPU peak {mem.peak} MiB |")

    # The ensemble measurement through the server.
    server_env = {**os.environ, "FERROTUNE_HOME": str(W / "home")}
    try:
        if args.pg:
            libs = install_postgres(args.pg)
            server_env["LD_LIBRARY_PATH"] = f"{libs}:{os.environ.get('LD_LIBRARY_PATH', '')}"
    except Exception as e:  # noqa: BLE001 - reported in the table, the rest still runs
        log(out, f"PostgreSQL install failed: {e}")
    server_log = open(out / "server.txt", "w")
    server = subprocess.Popen([binary, "serve", "--base-model", model, "--base-model-name", "smollm2-135m-instruct",
                               "--device", args.device, "--port", "8080", "--max-resident-models", "8",
                               "--data-dir", W / "data"],
                              stdout=server_log, stderr=subprocess.STDOUT, env=server_env)
    try:
        import urllib.request
        for _ in range(120):
            try:
                urllib.request.urlopen("http://127.0.0.1:8080/v1/models", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(1)
        with GpuMemory() as mem:
            run(out, [sys.executable, ROOT / "bench" / "ensemble.py", "--url", "http://127.0.0.1:8080", "--out", out],
                    "ensemble", left() - 15, {"PYTHONUNBUFFERED": "1"})
        rows.append(f"| ensemble measurement | {'done' if (out / 'ensemble.md').exists() else 'failed'} | GPU peak {mem.peak} MiB |")
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    table = "| step | base 1 / 8 / 32 streams / fine-tuned decode tok/s | notes |\n|---|---|---|\n" + "\n".join(rows)
    (out / "table.md").write_text(table + "\n")
    log(out, "\n" + table)


if __name__ == "__main__":
    main()
