"""The dashboard in a real browser: Debian's Chromium driven by Playwright (its own browser
download is never used). Enter the key, upload a file (and see a bad one rejected with its line),
start a job from the form, watch the loss chart gain points, open the playground and get an answer
from the base and the fine-tuned model side by side. Screenshots of every page land in
target/ui-screenshots/."""
import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import KEY_A, KEY_B, QA, ROOT

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "target" / "ui-screenshots"
# What a closed network needs (no background fetches to Google), as root in a container.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def shot(pg, name):
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def enter_key(pg, server, key):
    pg.goto(f"{server}/ui/files")
    expect(pg.locator("#key-form")).to_be_visible()
    pg.fill("#key-input", "wrong-key")
    pg.click("#key-form button[type=submit]")
    expect(pg.locator("#key-error")).to_contain_text("Incorrect API key")
    pg.fill("#key-input", key)
    pg.click("#key-form button[type=submit]")
    expect(pg.locator("#key-status")).to_have_text("key set")


def test_dashboard_end_to_end(server, page, tmp_path, fine_tuned):
    pg = page
    enter_key(pg, server, KEY_A)

    # Files: a bad file is rejected with its line, a good one accepted and previewed.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
                   + "\n{not json\n")
    pg.set_input_files("#upload-form input[name=file]", str(bad))
    pg.click("#upload-form button[type=submit]")
    expect(pg.locator("#upload-result")).to_contain_text("Rejected")
    expect(pg.locator("#upload-result")).to_contain_text("line 2")
    shot(pg, "files-rejected")
    good = tmp_path / "health-ui.jsonl"
    lines = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA * 2]
    good.write_text("".join(json.dumps(line) + "\n" for line in lines))
    pg.set_input_files("#upload-form input[name=file]", str(good))
    pg.click("#upload-form button[type=submit]")
    result = pg.locator("#upload-result")
    expect(result).to_contain_text("Accepted")
    expect(result).to_contain_text("20 examples")
    expect(pg.locator("#preview")).to_contain_text(QA[0][0])
    file_id = result.inner_text().split(" as ")[1].split()[0]
    expect(pg.locator(f"#files-table tr[data-file='{file_id}']")).to_be_visible()
    shot(pg, "files")

    # Jobs: start one from the form.
    pg.goto(f"{server}/ui/jobs")
    form = pg.locator("#job-form")
    expect(form.locator(f"select[name=training_file] option[value='{file_id}']")).to_have_count(1)
    form.locator("select[name=training_file]").select_option(file_id)
    form.locator("select[name=model]").select_option("ferrotune-tiny")
    form.locator("input[name=suffix]").fill("ui")
    form.locator("input[name=seed]").fill("7")
    form.locator("input[name=validation_split]").fill("0.2")
    # 400 steps (16 examples, batch 2, 50 epochs): long enough that the page, redrawn every
    # second, shows the chart part-way on a fast machine too.
    for name, value in {"n_epochs": "50", "batch_size": "2", "gradient_accumulation_steps": "1",
                        "learning_rate": "0.01", "lora_dropout": "0", "logging_steps": "2"}.items():
        form.locator(f"input[name={name}]").fill(value)
    form.locator("button[type=submit]").click()
    pg.wait_for_url("**/ui/job?id=ftjob-*")
    job_id = pg.url.split("id=")[1]

    # The loss chart gains points while the job runs.
    points = pg.locator("#chart-points")
    seen = []
    deadline = time.time() + 180
    while time.time() < deadline:
        n = int(points.get_attribute("data-points") or 0)
        if not seen or seen[-1] != n:
            seen.append(n)
            if len(seen) == 2:
                shot(pg, "job-running")
        status = pg.locator("#job-summary").get_attribute("data-status")
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.25)
    assert status == "succeeded", pg.locator("#events").inner_text()
    expect(pg.locator("#result-files li")).not_to_have_count(0)
    expect(pg.locator("#evaluation tbody tr")).not_to_have_count(0)
    final = int(points.get_attribute("data-points") or 0)
    seen.append(final)
    assert final >= 10, seen
    assert len(set(n for n in seen if n > 0)) >= 2, f"the chart never gained points while watched: {seen}"
    assert seen == sorted(seen), seen
    expect(pg.locator(".chart[data-metric=loss] svg")).to_have_count(1)
    expect(pg.locator(".chart[data-metric=learning_rate] svg")).to_contain_text("learning rate")
    expect(pg.locator("#checkpoints tbody tr")).not_to_have_count(0)
    pg.check("#log-scale")
    expect(pg.locator(".chart[data-metric=loss] svg")).to_contain_text("loss (log)")
    shot(pg, "job")

    # Compare: this run and the SDK suite's job (suffix "health") on one chart.
    pg.goto(f"{server}/ui/compare?jobs={job_id},{fine_tuned.id}")
    expect(pg.locator("#compare-chart svg")).to_have_count(1)
    expect(pg.locator("#chart-points")).to_contain_text("from 2 jobs")
    expect(pg.locator("#compare-chart svg")).to_contain_text("ui train")
    expect(pg.locator("#compare-chart svg")).to_contain_text("health train")
    expect(pg.locator(f"#compare-jobs input[value='{fine_tuned.id}']")).to_be_checked()
    shot(pg, "compare")

    # A batch followed to the end, its output file offered for download.
    requests = "\n".join(json.dumps({"custom_id": f"u{i}", "method": "POST", "url": "/v1/chat/completions",
                                      "body": {"model": "ferrotune-tiny", "max_tokens": 4,
                                               "messages": [{"role": "user", "content": "hi"}]}})
                          for i in range(3))
    batch_file = httpx.post(f"{server}/v1/files", headers={"Authorization": f"Bearer {KEY_A}"},
                            files={"file": ("b.jsonl", requests.encode())}, data={"purpose": "batch"}).json()
    batch = httpx.post(f"{server}/v1/batches", headers={"Authorization": f"Bearer {KEY_A}"},
                       json={"input_file_id": batch_file["id"], "endpoint": "/v1/chat/completions",
                             "completion_window": "24h"}).json()
    pg.goto(f"{server}/ui/batches")
    row = pg.locator(f"#batches-table tr[data-batch='{batch['id']}']")
    expect(row).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(row).to_contain_text("3 / 3")
    expect(row.get_by_role("button", name="output")).to_be_visible()
    shot(pg, "batches")

    # Models list, then the playground with base and fine-tuned model side by side.
    pg.goto(f"{server}/ui/models")
    expect(pg.locator("#models-table tr[data-model='ferrotune-tiny']")).to_contain_text("base")
    shot(pg, "models")
    pg.goto(f"{server}/ui/job?id={job_id}")
    pg.click("#open-final")
    pg.wait_for_url("**/ui/playground?*")
    expect(pg.locator("#right-model")).to_have_value(re.compile(r"^ft:ferrotune-tiny:.*:ui:"))
    expect(pg.locator("#left-model")).to_have_value("ferrotune-tiny")
    pg.fill("#message", QA[0][0])
    pg.fill("#max-tokens", "24")
    pg.click("#chat-form button[type=submit]")
    for side in ("left", "right"):
        answer = pg.locator(f"#{side}-out .assistant")
        expect(answer).to_have_attribute("data-state", "done", timeout=60_000)
        assert answer.inner_text().strip(), f"the {side} model gave no text"
    # The fine-tuned tiny model learned the answer; the random base did not.
    assert QA[0][1] in pg.locator("#right-out .assistant").inner_text()
    assert QA[0][1] not in pg.locator("#left-out .assistant").inner_text()
    shot(pg, "playground")


def test_another_organization_sees_none_of_it(server, page):
    mine = httpx.get(f"{server}/v1/fine_tuning/jobs?limit=100", headers={"Authorization": f"Bearer {KEY_A}"}).json()["data"]
    files = httpx.get(f"{server}/v1/files", headers={"Authorization": f"Bearer {KEY_A}"}).json()["data"]
    assert mine and files, "the first organization has jobs and files to hide"
    enter_key(page, server, KEY_B)
    page.goto(f"{server}/ui/jobs")
    expect(page.locator("#jobs-table tbody[data-loaded]")).to_have_count(1)
    for job in mine:
        expect(page.locator(f"#jobs-table tr[data-job='{job['id']}']")).to_have_count(0)
    page.goto(f"{server}/ui/files")
    expect(page.locator("#files-table tbody[data-loaded]")).to_have_count(1)
    for f in files:
        expect(page.locator(f"#files-table tr[data-file='{f['id']}']")).to_have_count(0)
    shot(page, "jobs-other-organization")
