// ferrotune dashboard: every page reads and writes through the public /v1 API with the key the
// user entered (kept in localStorage). Charts are SVG drawn by the server (/ui/charts/...).
"use strict";

const KEY_STORE = "ferrotune.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

/** An API error carrying OpenAI's envelope. */
class ApiError extends Error {
  constructor(status, body) {
    const e = body && body.error ? body.error : {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.param = e.param;
    this.code = e.code;
  }
}

/** Call the API; JSON in and out unless `raw` is set (then the Response is returned). */
async function api(path, { method = "GET", json, body, raw = false } = {}) {
  const init = { method, headers: headers() };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  const res = await fetch(path, init);
  if (res.status === 401) showKeyForm("This server needs an API key.");
  if (!res.ok) {
    let payload = null;
    try {
      payload = await res.json();
    } catch (_) {
      /* not JSON */
    }
    throw new ApiError(res.status, payload);
  }
  return raw ? res : res.json();
}

/** Every page of a paginated list (`has_more` + `after`). */
async function listAll(path, limit = 100) {
  const out = [];
  let after = null;
  for (let i = 0; i < 20; i++) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=${limit}${after ? `&after=${after}` : ""}`);
    out.push(...page.data);
    if (!page.has_more || page.data.length === 0) break;
    after = page.data[page.data.length - 1].id;
  }
  return out;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function when(unix) {
  if (!unix) return "";
  return new Date(unix * 1000).toLocaleString();
}

function duration(seconds) {
  if (seconds <= 0) return "any moment";
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds % 60);
  return m > 0 ? `${m} min ${s} s` : `${s} s`;
}

function showError(err) {
  const box = $("#page-error");
  if (!box) return;
  box.hidden = !err;
  box.textContent = err ? `Error: ${err.message || err}` : "";
}

function showKeyForm(message) {
  const form = $("#key-form");
  form.hidden = false;
  $("#key-error").textContent = message || "";
  $("#key-input").focus();
}

function setupKey() {
  $("#key-status").textContent = apiKey() ? "key set" : "no key";
  $("#key-change").addEventListener("click", () => showKeyForm(""));
  $("#key-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    localStorage.setItem(KEY_STORE, $("#key-input").value.trim());
    try {
      await api("/v1/models");
      location.reload();
    } catch (e) {
      $("#key-error").textContent = e.message;
    }
  });
}

/** Repeat `fn` every `ms` while the page is open; `fn` returns false to stop. */
function every(ms, fn) {
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    let again = true;
    try {
      again = (await fn()) !== false;
      showError(null);
    } catch (e) {
      showError(e);
    }
    if (again) setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
  };
}

// ---------------------------------------------------------------- charts

/** Fetch a server-drawn chart into `box`; returns the number of points drawn. */
async function loadChart(box, metric, jobIds, log) {
  const q = new URLSearchParams({ jobs: jobIds.join(","), log: log ? "true" : "false" });
  const res = await api(`/ui/charts/${metric}?${q}`, { raw: true });
  box.innerHTML = await res.text();
  const points = Number(res.headers.get("X-Chart-Points") || 0);
  box.dataset.points = String(points);
  return points;
}

// ---------------------------------------------------------------- progress

/** The newest metrics event of a job: `{step, total_steps, ...}` or null. */
async function latestMetrics(jobId) {
  const page = await api(`/v1/fine_tuning/jobs/${jobId}/events?limit=50`);
  const m = page.data.find((e) => e.type === "metrics" && e.data);
  return m ? m.data : null;
}

function progressOf(job, metrics) {
  if (job.status === "succeeded") return { fraction: 1, text: "done" };
  if (!metrics || !metrics.total_steps) return { fraction: 0, text: job.status };
  const f = metrics.step / metrics.total_steps;
  return { fraction: f, text: `step ${metrics.step}/${metrics.total_steps} (${Math.round(f * 100)} %)` };
}

function eta(job) {
  if (job.status !== "running" || !job.estimated_finish) return "";
  return duration(job.estimated_finish - Date.now() / 1000);
}

function suffixOf(job) {
  if (job.suffix) return job.suffix;
  const parts = (job.fine_tuned_model || "").split(":");
  return parts.length >= 5 ? parts[parts.length - 2] : "";
}

// ---------------------------------------------------------------- pages

async function fillModelSelect(select, { baseOnly = false, selected } = {}) {
  const models = await api("/v1/models");
  select.innerHTML = "";
  for (const m of models.data) {
    if (baseOnly && (m.id.startsWith("ft:") || m.owned_by !== "ferrotune")) continue;
    select.append(el("option", { value: m.id, selected: m.id === selected }, m.id));
  }
  if (selected && !models.data.some((m) => m.id === selected)) {
    select.append(el("option", { value: selected, selected: true }, selected));
  }
}

async function fillFileSelect(select, { optional = false, selected } = {}) {
  const files = await listAll("/v1/files?purpose=fine-tune");
  select.innerHTML = "";
  if (optional) select.append(el("option", { value: "" }, "none"));
  for (const f of files) {
    select.append(el("option", { value: f.id, selected: f.id === selected }, `${f.filename} (${f.id})`));
  }
}

async function uploadFile(file, purpose = "fine-tune") {
  const form = new FormData();
  form.append("purpose", purpose);
  form.append("file", file, file.name);
  return api("/v1/files", { method: "POST", body: form });
}

const PAGES = {};

PAGES.jobs = async () => {
  const tbody = $("#jobs-table tbody");
  const selected = new Set();
  every(2000, async () => {
    const page = await api("/v1/fine_tuning/jobs?limit=50");
    const rows = [];
    for (const job of page.data) {
      const metrics = job.status === "running" || job.status === "paused" ? await latestMetrics(job.id) : null;
      const p = progressOf(job, metrics);
      const box = el("input", {
        type: "checkbox",
        checked: selected.has(job.id),
        onchange: (e) => (e.target.checked ? selected.add(job.id) : selected.delete(job.id)),
      });
      rows.push(
        el(
          "tr",
          { "data-job": job.id, "data-status": job.status },
          el("td", {}, box),
          el("td", {}, el("a", { href: `/ui/job?id=${job.id}` }, job.id)),
          el("td", { class: `status ${job.status}` }, job.status),
          el("td", {}, job.model),
          el("td", {}, suffixOf(job)),
          el("td", {}, el("progress", { max: 1, value: p.fraction }), " ", p.text),
          el("td", {}, eta(job)),
          el("td", {}, when(job.created_at)),
          el("td", {}, job.trained_tokens ?? ""),
        ),
      );
    }
    tbody.replaceChildren(...rows);
    tbody.dataset.loaded = "true";
  });
  $("#compare-selected").addEventListener("click", () => {
    location.href = `/ui/compare?jobs=${[...selected].join(",")}`;
  });
  const form = $("#job-form");
  await Promise.all([
    fillFileSelect(form.training_file),
    fillFileSelect(form.validation_file, { optional: true }),
    fillModelSelect(form.model, { baseOnly: true }),
  ]);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = $("#job-form-result");
    out.textContent = "…";
    try {
      let training = form.training_file.value;
      if (form.upload.files.length) {
        const f = await uploadFile(form.upload.files[0]);
        training = f.id;
      }
      const hp = {};
      for (const name of ["n_epochs", "batch_size", "gradient_accumulation_steps", "lora_rank", "max_length", "logging_steps", "early_stopping_patience"]) {
        if (form[name].value) hp[name] = Number.parseInt(form[name].value, 10);
      }
      for (const name of ["learning_rate", "lora_alpha", "lora_dropout", "warmup_ratio", "neftune_noise_alpha"]) {
        if (form[name].value) hp[name] = Number.parseFloat(form[name].value);
      }
      if (form.load_best_model_at_end.value) hp.load_best_model_at_end = form.load_best_model_at_end.value === "true";
      hp.lr_scheduler_type = form.lr_scheduler_type.value;
      if (form.quantization_bit.value) hp.quantization_bit = Number(form.quantization_bit.value);
      if (form.gradient_checkpointing.checked) hp.gradient_checkpointing = true;
      if (form.validation_split.value) hp.validation_split = Number.parseFloat(form.validation_split.value);
      const kind = form.method.value;
      if (kind === "dpo" && form.beta.value) hp.beta = Number.parseFloat(form.beta.value);
      const body = {
        model: form.model.value,
        training_file: training,
        method: { type: kind, [kind]: { hyperparameters: hp } },
      };
      if (form.suffix.value) body.suffix = form.suffix.value;
      if (form.seed.value) body.seed = Number.parseInt(form.seed.value, 10);
      if (form.validation_file.value) body.validation_file = form.validation_file.value;
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", json: body });
      location.href = `/ui/job?id=${job.id}`;
    } catch (e) {
      out.textContent = `Error: ${e.message}${e.param ? ` (${e.param})` : ""}`;
      out.className = "error";
    }
  });
};

function renderFacts(dl, facts) {
  dl.replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "")]));
}

async function showEvaluation(job) {
  const tbody = $("#evaluation tbody");
  for (const id of job.result_files) {
    const meta = await api(`/v1/files/${id}`);
    if (!meta.filename.endsWith("eval.jsonl")) continue;
    const text = await (await api(`/v1/files/${id}/content`, { raw: true })).text();
    const rows = text
      .split("\n")
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l));
    tbody.replaceChildren(
      ...rows.map((r) =>
        el(
          "tr",
          {},
          el("td", {}, r.prompt),
          el("td", {}, r.reference),
          el("td", {}, r.base_answer),
          el("td", { class: "num" }, (r.base?.rougeL ?? 0).toFixed(3)),
          el("td", {}, r.fine_tuned_answer),
          el("td", { class: "num" }, (r.fine_tuned?.rougeL ?? 0).toFixed(3)),
        ),
      ),
    );
    $("#evaluation-note").textContent = `${rows.length} validation prompts, greedy answers.`;
    return;
  }
}

async function download(fileId, filename) {
  const res = await api(`/v1/files/${fileId}/content`, { raw: true });
  const url = URL.createObjectURL(await res.blob());
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

PAGES.job = async () => {
  const id = new URLSearchParams(location.search).get("id");
  if (!id) throw new Error("no job id in the address (?id=ftjob-…)");
  $("#page-title").textContent = `Job ${id}`;
  const log = $("#log-scale");
  const charts = async () => {
    let points = 0;
    for (const box of $$(".chart")) {
      if (box.closest("[hidden]")) continue;
      const n = await loadChart(box, box.dataset.metric, [id], log.checked);
      if (box.dataset.metric === "loss") points = n;
    }
    $("#chart-points").textContent = `${points} loss points`;
    $("#chart-points").dataset.points = String(points);
  };
  log.addEventListener("change", () => charts().catch(showError));
  for (const b of $$("button[data-action]")) {
    b.addEventListener("click", async () => {
      const out = $("#job-action-result");
      try {
        const job = await api(`/v1/fine_tuning/jobs/${id}/${b.dataset.action}`, { method: "POST" });
        out.textContent = `now ${job.status}`;
        out.className = "";
      } catch (e) {
        out.textContent = e.message;
        out.className = "error";
      }
    });
  }
  let shownResults = false;
  every(1000, async () => {
    const job = await api(`/v1/fine_tuning/jobs/${id}`);
    if (job.method?.type === "dpo") $$(".dpo-only").forEach((f) => (f.hidden = false));
    const metrics = await latestMetrics(id);
    const p = progressOf(job, metrics);
    renderFacts($("#job-summary"), [
      ["Status", job.status],
      ["Base model", job.model],
      ["Fine-tuned model", job.fine_tuned_model],
      ["Suffix", suffixOf(job)],
      ["Training file", job.training_file],
      ["Validation file", job.validation_file],
      ["Created", when(job.created_at)],
      ["Finished", when(job.finished_at)],
      ["ETA", eta(job)],
      ["Trained tokens", job.trained_tokens],
      ["Error", job.error ? job.error.message : null],
    ]);
    $("#job-summary").dataset.status = job.status;
    $("#job-progress-bar").style.width = `${Math.round(p.fraction * 100)}%`;
    $("#job-progress-text").textContent = p.text;
    const hp = job.method?.supervised?.hyperparameters || job.hyperparameters || {};
    $("#hyperparameters tbody").replaceChildren(
      ...Object.entries(hp).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, JSON.stringify(v)))),
    );
    const events = await api(`/v1/fine_tuning/jobs/${id}/events?limit=100`);
    $("#events").replaceChildren(
      ...events.data.map((e) =>
        el("li", { class: `level-${e.level}` }, el("time", {}, when(e.created_at)), " ", e.message),
      ),
    );
    const ckpts = await api(`/v1/fine_tuning/jobs/${id}/checkpoints?limit=100`);
    $("#checkpoints tbody").replaceChildren(
      ...ckpts.data.map((c) =>
        el(
          "tr",
          {},
          el("td", {}, c.step_number),
          el("td", { class: "mono" }, c.fine_tuned_model_checkpoint),
          el("td", { class: "num" }, c.metrics?.train_loss?.toFixed?.(4) ?? ""),
          el("td", { class: "num" }, c.metrics?.valid_loss?.toFixed?.(4) ?? ""),
          el(
            "td",
            {},
            el(
              "a",
              {
                href: `/ui/playground?left=${encodeURIComponent(job.model)}&right=${encodeURIComponent(c.fine_tuned_model_checkpoint)}`,
              },
              "open in playground",
            ),
          ),
        ),
      ),
    );
    if (job.fine_tuned_model && !$("#open-final")) {
      $("#job-progress-text").after(
        el(
          "p",
          {},
          el(
            "a",
            {
              id: "open-final",
              href: `/ui/playground?left=${encodeURIComponent(job.model)}&right=${encodeURIComponent(job.fine_tuned_model)}`,
            },
            "Open the fine-tuned model in the playground",
          ),
        ),
      );
    }
    await charts();
    if (TERMINAL.has(job.status) && !shownResults) {
      shownResults = true;
      const list = $("#result-files");
      list.replaceChildren();
      for (const fid of job.result_files) {
        const meta = await api(`/v1/files/${fid}`);
        list.append(
          el("li", {}, el("button", { type: "button", class: "link", onclick: () => download(fid, meta.filename) }, meta.filename), ` (${meta.bytes} bytes)`),
        );
      }
      await showEvaluation(job);
    }
    return !TERMINAL.has(job.status);
  });
};

PAGES.compare = async () => {
  const params = new URLSearchParams(location.search);
  const chosen = new Set((params.get("jobs") || "").split(",").filter(Boolean));
  const picker = $("#compare-jobs");
  const jobs = await api("/v1/fine_tuning/jobs?limit=50");
  const draw = async () => {
    const ids = [...chosen];
    const box = $("#compare-chart");
    if (ids.length === 0) {
      box.textContent = "Pick at least one job.";
      return;
    }
    const n = await loadChart(box, $("#compare-metric").value, ids, $("#log-scale").checked);
    $("#chart-points").textContent = `${n} points from ${ids.length} jobs`;
    history.replaceState(null, "", `/ui/compare?jobs=${ids.join(",")}`);
  };
  picker.replaceChildren(
    ...jobs.data.map((j) =>
      el(
        "label",
        { class: "check" },
        el("input", {
          type: "checkbox",
          value: j.id,
          checked: chosen.has(j.id),
          onchange: (e) => {
            e.target.checked ? chosen.add(j.id) : chosen.delete(j.id);
            draw().catch(showError);
          },
        }),
        ` ${j.id} ${suffixOf(j)} (${j.status})`,
      ),
    ),
  );
  $("#compare-metric").addEventListener("change", () => draw().catch(showError));
  $("#log-scale").addEventListener("change", () => draw().catch(showError));
  every(3000, draw);
};

function previewLine(obj) {
  if (Array.isArray(obj.messages)) {
    return el("div", { class: "example" }, ...obj.messages.map((m) => el("p", {}, el("b", {}, `${m.role}: `), typeof m.content === "string" ? m.content : JSON.stringify(m.content ?? m.tool_calls))));
  }
  return el("pre", { class: "example" }, JSON.stringify(obj, null, 2));
}

async function preview(file) {
  const box = $("#preview");
  const res = await api(`/v1/files/${file.id}/content`, { raw: true });
  const text = await res.text();
  let items = [];
  const trimmed = text.trim();
  if (trimmed.startsWith("[")) {
    items = JSON.parse(trimmed).slice(0, 5);
  } else {
    items = trimmed
      .split("\n")
      .filter((l) => l.trim())
      .slice(0, 5)
      .map((l) => JSON.parse(l));
  }
  box.replaceChildren(el("h3", {}, `${file.filename}: first ${items.length} examples`), ...items.map(previewLine));
}

PAGES.files = async () => {
  const refresh = async () => {
    const files = await listAll("/v1/files");
    $("#files-table tbody").replaceChildren(
      ...files.map((f) =>
        el(
          "tr",
          { "data-file": f.id },
          el("td", { class: "mono" }, f.id),
          el("td", {}, f.filename),
          el("td", {}, f.purpose),
          el("td", {}, f.dataset_format ?? ""),
          el("td", { class: "num" }, f.example_count ?? ""),
          el("td", { class: "num" }, f.bytes),
          el("td", {}, when(f.created_at)),
          el("td", {}, el("button", { type: "button", class: "link", onclick: () => preview(f).catch(showError) }, "preview")),
        ),
      ),
    );
    $("#files-table tbody").dataset.loaded = "true";
  };
  $("#upload-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = ev.target;
    const out = $("#upload-result");
    out.hidden = false;
    out.textContent = "uploading…";
    try {
      const f = await uploadFile(form.file.files[0], form.purpose.value);
      out.className = "result ok";
      out.replaceChildren(
        el("p", {}, el("b", {}, "Accepted: "), `${f.filename} as ${f.id}`),
        el("p", {}, `format ${f.dataset_format ?? "n/a"}, ${f.example_count ?? "?"} examples, ${f.bytes} bytes, status ${f.status}`),
      );
      await refresh();
      await preview(f);
    } catch (e) {
      out.className = "result error";
      out.replaceChildren(el("p", {}, el("b", {}, "Rejected: "), e.message), e.param ? el("p", {}, `parameter: ${e.param}`) : "");
    }
  });
  await refresh();
};

PAGES.models = async () => {
  const [models, ensembles] = await Promise.all([api("/v1/models"), api("/v1/ensembles").catch(() => ({ data: [] }))]);
  const ensembleIds = new Set(ensembles.data.map((e) => e.id));
  const kind = (m) => (ensembleIds.has(m.id) ? "ensemble" : m.id.startsWith("ft:") ? (m.id.includes(":ckpt-step-") ? "checkpoint" : "fine-tuned") : m.owned_by === "ferrotune" ? "base" : "adapter");
  $("#models-table tbody").replaceChildren(
    ...models.data.map((m) =>
      el(
        "tr",
        { "data-model": m.id },
        el("td", { class: "mono" }, m.id),
        el("td", {}, kind(m)),
        el("td", {}, m.owned_by),
        el("td", {}, when(m.created)),
        el("td", {}, el("a", { href: `/ui/playground?right=${encodeURIComponent(m.id)}` }, "chat")),
      ),
    ),
  );
};

PAGES.batches = async () => {
  const done = new Set(["completed", "failed", "expired", "cancelled"]);
  const fileLink = (id, name) =>
    id ? el("button", { type: "button", class: "link", onclick: () => download(id, name).catch(showError) }, name) : "";
  const refresh = async () => {
    const batches = await listAll("/v1/batches");
    $("#batches-table tbody").replaceChildren(
      ...batches.map((b) => {
        const c = b.request_counts;
        return el(
          "tr",
          { "data-batch": b.id, "data-status": b.status },
          el("td", { class: "mono" }, b.id),
          el("td", { class: "mono" }, b.endpoint),
          el("td", {}, b.status),
          el("td", { class: "num" }, `${c.completed + c.failed} / ${c.total}${c.failed ? ` (${c.failed} failed)` : ""}`),
          el("td", {}, when(b.created_at)),
          el("td", {}, fileLink(b.output_file_id, "output"), " ", fileLink(b.error_file_id, "errors")),
        );
      }),
    );
    $("#batches-table tbody").dataset.loaded = "true";
    // Keep following while a batch runs.
    return batches.some((b) => !done.has(b.status));
  };
  every(2000, refresh);
};

/** Stream one chat completion into `out`; resolves with the full text. */
async function streamChat(model, messages, opts, out) {
  out.textContent = "";
  const res = await api("/v1/chat/completions", {
    method: "POST",
    json: { model, messages, stream: true, max_tokens: opts.maxTokens, temperature: opts.temperature },
    raw: true,
  });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of frame.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const c of chunk.choices || []) {
          const piece = c.delta?.content || "";
          text += piece;
          out.textContent = text;
        }
      }
    }
  }
  return text;
}

PAGES.playground = async () => {
  const params = new URLSearchParams(location.search);
  const left = $("#left-model");
  const right = $("#right-model");
  await fillModelSelect(left, { selected: params.get("left") || undefined });
  await fillModelSelect(right, { selected: params.get("right") || undefined });
  const sides = [
    { select: left, out: $("#left-out"), title: $("#left-title"), history: [] },
    { select: right, out: $("#right-out"), title: $("#right-title"), history: [] },
  ];
  $("#chat-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const message = $("#message").value;
    const system = $("#system").value.trim();
    const opts = {
      maxTokens: Number.parseInt($("#max-tokens").value, 10) || 64,
      temperature: Number.parseFloat($("#temperature").value) || 0,
    };
    await Promise.all(
      sides.map(async (side) => {
        side.title.textContent = side.select.value;
        const turn = el("div", { class: "turn" }, el("p", { class: "user" }, message));
        const answer = el("p", { class: "assistant", "data-state": "streaming" });
        turn.append(answer);
        side.out.append(turn);
        const messages = [...(system ? [{ role: "system", content: system }] : []), ...side.history, { role: "user", content: message }];
        try {
          const text = await streamChat(side.select.value, messages, opts, answer);
          side.history.push({ role: "user", content: message }, { role: "assistant", content: text });
          answer.dataset.state = "done";
        } catch (e) {
          answer.textContent = `Error: ${e.message}`;
          answer.dataset.state = "error";
        }
      }),
    );
  });
};

document.addEventListener("DOMContentLoaded", async () => {
  setupKey();
  const page = document.body.dataset.page;
  try {
    await PAGES[page]?.();
  } catch (e) {
    showError(e);
  }
});
