// The ddpm-service page: submit a job, follow its event stream, show the results.
"use strict";

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "ddpm-jobs";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
let models = [];
let source = null;
let currentJob = null;

function sessionJobs() {
  try { return JSON.parse(sessionStorage.getItem(SESSION_KEY) || "[]"); } catch { return []; }
}

function saveJob(job) {
  const jobs = sessionJobs().filter((item) => item.id !== job.id);
  jobs.unshift(job);
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(jobs.slice(0, 50)));
  renderJobs();
}

function renderJobs() {
  const list = $("jobs");
  list.replaceChildren();
  for (const job of sessionJobs()) {
    const item = document.createElement("li");
    const p = job.params || {};
    const what = `${p.n} × ${p.digit === null || p.digit === undefined ? "any" : "digit " + p.digit}, ${p.sampler}`;
    item.innerHTML = `<code></code> <span class="status"></span> <span></span>`;
    item.children[0].textContent = job.id.slice(0, 8);
    item.children[1].textContent = job.status;
    item.children[1].classList.add(job.status);
    item.children[2].textContent = what;
    item.addEventListener("click", () => follow(job.id));
    list.appendChild(item);
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadModels() {
  const response = await fetch("/models");
  const body = await response.json();
  models = body.models;
  const select = $("model");
  select.replaceChildren();
  for (const model of models) {
    const option = new Option(model.name, model.name, model.name === body.default, model.name === body.default);
    select.appendChild(option);
  }
  if (!models.length) showError("No models are installed on this server.");
  updateModel();
}

function updateModel() {
  const model = models.find((m) => m.name === $("model").value);
  const digit = $("digit");
  digit.replaceChildren(new Option("any", ""));
  if (model) {
    model.class_names.forEach((name, index) => digit.appendChild(new Option(name, String(index))));
    digit.disabled = !model.conditional;
    $("steps").max = model.num_train_timesteps;
    $("steps").value = Math.min(Number($("steps").value) || 50, model.num_train_timesteps);
  }
  updateSampler();
  updateDigit();
}

function updateSampler() {
  $("steps").disabled = $("sampler").value !== "ddim";
}

// redrawing mismatches needs a digit to match
function updateDigit() {
  const none = $("digit").value === "";
  $("redraw").disabled = none;
  if (none) $("redraw").checked = false;
}

function requestBody() {
  const body = { model: $("model").value, n: Number($("n").value), sampler: $("sampler").value };
  if ($("digit").value !== "") body.digit = Number($("digit").value);
  if (body.sampler === "ddim") body.steps = Number($("steps").value);
  if ($("guidance").value !== "") body.guidance = Number($("guidance").value);
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("redraw").checked && !$("redraw").disabled) body.redraw_mismatches = true;
  return body;
}

function apiKey() {
  const key = $("api-key").value || sessionStorage.getItem("ddpm-api-key") || "";
  if ($("api-key").value) sessionStorage.setItem("ddpm-api-key", $("api-key").value);
  return key;
}

function authHeaders() {
  const key = apiKey();
  return key ? { "x-api-key": key } : {};
}

// EventSource and <img> cannot send headers: reads protected by an API key take it as ?api_key=
function withKey(url) {
  const key = apiKey();
  return key ? `${url}?api_key=${encodeURIComponent(key)}` : url;
}

async function submit(event) {
  event.preventDefault();
  showError("");
  $("generate").disabled = true;
  try {
    const response = await fetch("/generate", {
      method: "POST", headers: { "content-type": "application/json", ...authHeaders() },
      body: JSON.stringify(requestBody()),
    });
    const body = await response.json();
    if (response.status === 401) $("api-key-label").hidden = false;
    if (response.status !== 202) {
      showError(body.message || `request failed (${response.status})`);
      return;
    }
    const job = await (await fetch(body.links.self, { headers: authHeaders() })).json();
    saveJob({ id: job.id, status: job.status, params: job.params });
    follow(job.id);
  } catch (error) {
    showError(`request failed: ${error}`);
  } finally {
    $("generate").disabled = false;
  }
}

function setStatus(status) {
  $("job-status").textContent = status;
  $("job-status").className = "status " + status;
  $("cancel").hidden = TERMINAL.has(status);
  const jobs = sessionJobs();
  const job = jobs.find((item) => item.id === currentJob);
  if (job && job.status !== status) { job.status = status; saveJob(job); }
}

function follow(jobId) {
  if (source) source.close();
  currentJob = jobId;
  $("current").hidden = false;
  $("job-id").textContent = jobId.slice(0, 8);
  $("progress").value = 0;
  $("progress-text").textContent = "";
  $("preview").removeAttribute("src");
  $("preview-box").hidden = false;
  $("png-box").hidden = true;
  $("gif-box").hidden = true;
  $("check").hidden = true;
  setStatus("queued");
  source = new EventSource(withKey(`/jobs/${jobId}/events`));
  source.addEventListener("queued", () => setStatus("queued"));
  source.addEventListener("running", () => setStatus("running"));
  source.addEventListener("progress", (event) => {
    const data = JSON.parse(event.data);
    $("progress").max = data.total;
    $("progress").value = data.step;
    const eta = data.eta_s === null ? "" : `, about ${data.eta_s.toFixed(1)} s left`;
    $("progress-text").textContent = `step ${data.step} of ${data.total}${eta}`;
  });
  source.addEventListener("preview", (event) => { $("preview").src = JSON.parse(event.data).image; });
  source.addEventListener("redraw", (event) => {
    const data = JSON.parse(event.data);
    const count = data.samples.length;
    $("progress-text").textContent =
      `redrawing ${count} sample${count === 1 ? "" : "s"} read as another digit (round ${data.round})`;
  });
  for (const status of TERMINAL) {
    source.addEventListener(status, (event) => {
      source.close();
      source = null;
      setStatus(status);
      const data = JSON.parse(event.data);
      if (status === "succeeded") showResults(jobId);
      else $("progress-text").textContent = status === "failed" ? `failed: ${data.error}` : "cancelled";
    });
  }
  source.onerror = () => {
    if (source && source.readyState === EventSource.CLOSED) showError("lost the event stream; reload to retry");
  };
}

function showResults(jobId) {
  const png = withKey(`/jobs/${jobId}/png`);
  const gif = withKey(`/jobs/${jobId}/gif`);
  $("progress").value = $("progress").max;
  if ($("progress-text").textContent.startsWith("redrawing")) $("progress-text").textContent = "done, after redrawing";
  $("preview-box").hidden = true;
  $("result-png").src = png;
  $("result-gif").src = gif;
  $("png-link").href = png;
  $("png-link").download = `ddpm-${jobId.slice(0, 8)}.png`;
  $("gif-link").href = gif;
  $("gif-link").download = `ddpm-${jobId.slice(0, 8)}.gif`;
  $("png-box").hidden = false;
  $("gif-box").hidden = false;
  fetch(`/jobs/${jobId}`, { headers: authHeaders() })
    .then((response) => (response.ok ? response.json() : null))
    .then((job) => { if (job && currentJob === jobId) renderCheck(job.check); })
    .catch(() => {});
}

// The per-digit check under the grid: what the evaluation classifier reads in each sample,
// mismatches highlighted
function renderCheck(check) {
  const box = $("check");
  const table = $("check-table");
  const rows = table.tBodies[0];
  rows.replaceChildren();
  box.hidden = !check;
  table.hidden = true;
  if (!check) return;
  if (check.skipped) {
    $("check-summary").textContent = `Not checked: ${check.skipped}.`;
    return;
  }
  const accuracy = check.classifier_test_accuracy === null
    ? "" : ` (${(100 * check.classifier_test_accuracy).toFixed(2)}% on the MNIST test set)`;
  const by = `the classifier ${check.classifier}${accuracy}`;
  let summary;
  if (check.asked === null) {
    summary = `Digits read by ${by}; no digit was asked, so nothing to match.`;
  } else {
    summary = `${check.matches} of ${check.samples.length} read as ${check.asked} by ${by}.`;
    if (check.rounds_run) {
      summary += ` First draw: ${check.first_draw_matches}; ${check.redrawn} redrawn in ${check.rounds_run} `
        + `round${check.rounds_run === 1 ? "" : "s"}.`;
    }
    if (check.matches < check.samples.length) summary += " A mismatch can be the classifier's error too.";
  }
  $("check-summary").textContent = summary;
  const columns = Math.max(1, Math.ceil(Math.sqrt(check.samples.length)));
  for (const sample of check.samples) {
    const row = rows.insertRow();
    if (sample.matches === false) row.classList.add("mismatch");
    const where = `${sample.index} (row ${Math.floor(sample.index / columns) + 1}, col ${sample.index % columns + 1})`;
    const cells = [where, sample.digit, sample.confidence.toFixed(3), sample.seed, sample.redrawn || ""];
    for (const value of cells) row.insertCell().textContent = String(value);
  }
  table.hidden = false;
}

async function cancel() {
  if (!currentJob) return;
  const response = await fetch(`/jobs/${currentJob}`, { method: "DELETE", headers: authHeaders() });
  if (response.status >= 400) showError((await response.json()).message);
}

$("generate-form").addEventListener("submit", submit);
$("model").addEventListener("change", updateModel);
$("sampler").addEventListener("change", updateSampler);
$("digit").addEventListener("change", updateDigit);
$("cancel").addEventListener("click", cancel);
renderJobs();
loadModels().catch((error) => showError(`cannot load models: ${error}`));
