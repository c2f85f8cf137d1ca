"""Start one real `ferrotune serve` (embedded Postgres, generated tiny model, two API keys) for
the whole suite, and hand out SDK clients for it."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
KEY_A = "sk-ferrotune-a"
KEY_B = "sk-ferrotune-b"

# Ten short health answers the tiny model learns to recite.
QA = [
    ("What should I do for a mild headache?", "Rest and drink water."),
    ("How much water should adults drink?", "About two litres a day."),
    ("Can I exercise with a cold?", "Light exercise is fine."),
    ("How long should adults sleep?", "Seven to nine hours."),
    ("What helps a sore throat?", "Warm drinks and honey."),
    ("When is a fever serious?", "Above 39.5 C or over three days."),
    ("When should I wash my hands?", "Before meals and after the toilet."),
    ("Is ibuprofen fine on an empty stomach?", "Take it with food."),
    ("What is a normal resting pulse?", "60 to 100 beats a minute."),
    ("How can I lower stress?", "Walk daily and breathe slowly."),
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server():
    binary = os.environ.get("FERROTUNE_BIN", str(ROOT / "target" / "debug" / "ferrotune"))
    data = tempfile.mkdtemp(prefix="ferrotune-sdk-", dir="/tmp")
    os.chmod(data, 0o755)  # the embedded cluster may run as an unprivileged user
    port = _free_port()
    log = open(Path(data) / "server.log", "w")
    proc = subprocess.Popen(
        [binary, "serve", "--base-model", "ferrotune-tiny", "--port", str(port), "--data-dir", data, "--api-key", KEY_A, "--api-key", KEY_B,
         "--poll-interval-ms", "100"],
        stdout=log, stderr=subprocess.STDOUT, env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"ferrotune exited: {(Path(data) / 'server.log').read_text()}")
        time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("ferrotune never became healthy")
    yield base
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def client(server):
    return OpenAI(base_url=f"{server}/v1", api_key=KEY_A, max_retries=0)


@pytest.fixture(scope="session")
def strict(server):
    return OpenAI(base_url=f"{server}/v1", api_key=KEY_A, max_retries=0, _strict_response_validation=True)


def qa_file_bytes():
    return json.dumps([{"instruction": q, "input": "", "output": a} for q, a in QA]).encode()


@pytest.fixture(scope="session")
def training_file(strict):
    return strict.files.create(file=("health.json", qa_file_bytes()), purpose="fine-tune")


def wait_for(client, job_id, statuses, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job.status}")


@pytest.fixture(scope="session")
def fine_tuned(strict, training_file):
    """A job trained to `succeeded` with the SDK; returns the job."""
    job = strict.fine_tuning.jobs.create(
        model="ferrotune-tiny",
        training_file=training_file.id,
        suffix="health",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 20, "batch_size": 2}}},
        extra_body={"hyperparameters": {"learning_rate": 0.01, "lora_dropout": 0.0, "logging_steps": 10}},
    )
    return wait_for(strict, job.id, {"succeeded", "failed", "cancelled"})
