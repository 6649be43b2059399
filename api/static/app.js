// The ddpm-service page: pick a model, submit a job, follow its event stream, show the results.
// The controls follow the model (GET /models): classes by name for a conditional model (the word
// "digit" only for digit models), no class or guidance for an unconditional one, points shown
// as a scatter plot; the API-key field shows when the service needs a key (GET /auth).
"use strict";

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "ddpm-jobs";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const DEFAULT_N = { image: 16, points: 2000 };
const QUEUE_POLL_MS = 1000;
let models = [];
let samplers = [];  // GET /models: the registry's samplers, in order
let samplerShown = null;
let source = null;
let currentJob = null;
let queuePoll = null;

function modelNamed(name) {
  return models.find((m) => m.name === name);
}

// digit models (MNIST) call their classes digits; every other model calls them classes
function isDigitModel(model) {
  return Boolean(model) && model.dataset === "mnist";
}

// a class index in words: "digit 3" for digit models, else the class's name ("hero")
function className(model, index) {
  if (isDigitModel(model)) return `digit ${index}`;
  return model?.class_names[index] ?? `class ${index}`;
}

// what a job draws, in words: "mnist: 4 × digit 3", "sprites: 16 × any", "board: 2000 points"
function jobSummary(params) {
  const model = modelNamed(params.model);
  if (model?.kind === "points") return `${params.model}: ${params.n} points`;
  const drawn = params.digit === null || params.digit === undefined ? "any" : className(model, params.digit);
  return `${params.model}: ${params.n} × ${drawn}`;
}

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
    const what = `${jobSummary(p)}, ${p.sampler}`;
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
  samplers = body.samplers;
  const samplerSelect = $("sampler");
  samplerSelect.replaceChildren();
  for (const sampler of samplers) {
    const fast = sampler.name === body.fast_sampler;
    const option = new Option(samplerLabel(sampler, body), sampler.name, fast, fast);
    option.title = sampler.description;
    samplerSelect.appendChild(option);
  }
  const select = $("model");
  select.replaceChildren();
  for (const model of models) {
    const option = new Option(model.name, model.name, model.name === body.default, model.name === body.default);
    select.appendChild(option);
  }
  if (!models.length) showError("No models are installed on this server.");
  updateModel();
  renderJobs();
}

// the API-key field shows only when the service needs a key
async function loadAuth() {
  const response = await fetch("/auth");
  if (!response.ok) return;
  const needs = await response.json();
  if (needs.writes || needs.reads) $("api-key-label").hidden = false;
}

let shownKind = null;

// the shown job's PNG, GIF, check and progress belong to its model: choosing another model clears
// them (the job stays in the session's list, a click shows it again)
function clearCurrent() {
  if (source) source.close();
  source = null;
  stopQueuePoll();
  currentJob = null;
  $("current").hidden = true;
  for (const id of ["preview", "result-png", "result-gif"]) $(id).removeAttribute("src");
  $("check-table").tBodies[0].replaceChildren();
  $("check").hidden = true;
}

function updateModel() {
  const model = modelNamed($("model").value);
  if (currentJob && jobParams(currentJob).model !== $("model").value) clearCurrent();
  const select = $("digit");
  select.replaceChildren(new Option("any", ""));
  if (model) {
    model.class_names.forEach((name, index) => select.appendChild(new Option(name, String(index))));
    const digits = isDigitModel(model);
    $("class-word").textContent = digits ? "Digit" : "Class";
    $("class-label").hidden = !model.conditional;
    select.disabled = !model.conditional;
    $("guidance-label").hidden = !model.conditional;  // nothing to guide towards
    $("redraw-label").hidden = !(model.conditional && model.check.checked);
    $("n-word").textContent = model.kind === "points" ? "Points" : "Samples";
    const n = $("n");
    n.max = model.n_limit;
    if (shownKind !== model.kind) n.value = Math.min(DEFAULT_N[model.kind] || 16, model.n_limit);
    else if (Number(n.value) > model.n_limit) n.value = model.n_limit;
    shownKind = model.kind;
    $("model-info").textContent = describe(model);
  }
  updateSampler();
  updateDigit();
}

function describe(model) {
  const shape = model.sample_shape.join("×");
  const what = model.kind === "points" ? `${shape}-D points (a scatter plot)` : `${shape} images`;
  const classes = !model.conditional ? "unconditional"
    : isDigitModel(model) ? `digits ${model.class_names.join(", ")}`
      : `classes ${model.class_names.join(", ")}`;
  const trained = model.training_steps === null ? "" : `, trained ${model.training_steps.toLocaleString("en-US")} steps`;
  const limit = `up to ${model.n_limit} ${model.kind === "points" ? "points" : "samples"} per job`;
  const check = model.check.checked ? `checked by ${model.check.by}` : `not checked: ${model.check.skipped}`;
  return `${model.name}: ${what} of ${model.dataset}, ${classes}${trained}; ${limit}; ${check}.`;
}

// "UniPC (fast)", "DDPM (all steps, the default)": the registry's title and what it is for here
function samplerLabel(sampler, listing) {
  if (sampler.name === listing.fast_sampler) return `${sampler.title} (fast)`;
  if (!sampler.chooses_steps) return `${sampler.title} (all steps${sampler.name === listing.default_sampler ? ", the API's default" : ""})`;
  return sampler.title;
}

function samplerNamed(name) {
  return samplers.find((s) => s.name === name);
}

// the steps field follows the sampler and the model: its range, its default when the sampler changes
function updateSampler() {
  const model = modelNamed($("model").value);
  const sampler = samplerNamed($("sampler").value);
  const steps = $("steps");
  if (!model || !sampler) return;
  const range = model.steps[sampler.name];
  steps.min = range.min;
  steps.max = range.max;
  steps.disabled = !sampler.chooses_steps;
  if (samplerShown !== sampler.name || !sampler.chooses_steps || steps.value === "") steps.value = range.default;
  steps.value = Math.min(Math.max(Number(steps.value), range.min), range.max);
  samplerShown = sampler.name;
  updateExpected();
}

// what a job will cost: its steps x its forward rows (n, twice n guided towards a class) at this
// model's recent seconds per row on the server
function updateExpected() {
  const model = modelNamed($("model").value);
  const steps = Number($("steps").value);
  if (!model || !steps) return;
  const calls = `${steps} model call${steps === 1 ? "" : "s"}`;
  if (model.row_seconds === null) {
    $("expected").textContent = calls;
    return;
  }
  const guidance = $("guidance").value === "" ? model.default_guidance : Number($("guidance").value);
  const guided = model.conditional && $("digit").value !== "" && guidance > 0;
  const rows = Number($("n").value) * (guided ? 2 : 1);
  $("expected").textContent = `${calls}: about ${formatSeconds(steps * rows * model.row_seconds)} on this server now`;
}

function formatSeconds(seconds) {
  if (seconds < 1) return `${Math.max(10, Math.round(seconds * 100) * 10)} ms`;
  return seconds < 10 ? `${seconds.toFixed(1)} s` : `${Math.round(seconds)} s`;
}

// redrawing mismatches needs a class to match
function updateDigit() {
  const none = $("digit").value === "" || $("digit").disabled;
  $("redraw").disabled = none;
  if (none) $("redraw").checked = false;
}

function requestBody() {
  const body = { model: $("model").value, n: Number($("n").value), sampler: $("sampler").value };
  if ($("digit").value !== "" && !$("digit").disabled) body.class = Number($("digit").value);
  if (samplerNamed(body.sampler)?.chooses_steps) body.steps = Number($("steps").value);
  if ($("guidance").value !== "" && !$("guidance-label").hidden) body.guidance = Number($("guidance").value);
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
  return key ? `${url}${url.includes("?") ? "&" : "?"}api_key=${encodeURIComponent(key)}` : url;
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
  if (status !== "queued") stopQueuePoll();
  $("job-status").textContent = status;
  $("job-status").className = "status " + status;
  $("cancel").hidden = TERMINAL.has(status);
  const jobs = sessionJobs();
  const job = jobs.find((item) => item.id === currentJob);
  if (job && job.status !== status) { job.status = status; saveJob(job); }
}

function stopQueuePoll() {
  if (queuePoll !== null) clearInterval(queuePoll);
  queuePoll = null;
}

// while a job waits, its place in the queue (GET /jobs/{id}: queue_position), every second
function watchQueue(jobId) {
  stopQueuePoll();
  const poll = async () => {
    try {
      const response = await fetch(`/jobs/${jobId}`, { headers: authHeaders() });
      if (!response.ok || currentJob !== jobId) return;
      const job = await response.json();
      if (job.status !== "queued") stopQueuePoll();  // the event stream tells the rest
      if (job.status !== "queued" || currentJob !== jobId) return;
      const position = job.queue_position;
      $("progress-text").textContent = position
        ? `waiting in the queue: ${position === 1 ? "next to run" : `number ${position}`}`
        : "waiting for a worker";
    } catch { /* the event stream reports failures */ }
  };
  poll();
  queuePoll = setInterval(poll, QUEUE_POLL_MS);
}

function jobParams(jobId) {
  return (sessionJobs().find((item) => item.id === jobId) || {}).params || {};
}

function follow(jobId) {
  if (source) source.close();
  stopQueuePoll();
  currentJob = jobId;
  const points = modelNamed(jobParams(jobId).model)?.kind === "points";
  $("preview-caption").textContent = `live preview (predicted clean ${points ? "points" : "images"})`;
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
  watchQueue(jobId);
  source = new EventSource(withKey(`/jobs/${jobId}/events?previews=true`));
  source.addEventListener("queued", () => {
    if (queuePoll === null) watchQueue(jobId);  // queued again: its worker stopped
    setStatus("queued");
  });
  source.addEventListener("running", () => {
    setStatus("running");
    $("progress-text").textContent = "running";
  });
  source.addEventListener("progress", (event) => {
    const data = JSON.parse(event.data);
    $("progress").max = data.total;
    $("progress").value = data.step;
    const eta = data.eta_s === null || data.eta_s === undefined ? "" : `, about ${data.eta_s.toFixed(1)} s left`;
    $("progress-text").textContent = `step ${data.step} of ${data.total}${eta}`;
  });
  source.addEventListener("preview", (event) => { $("preview").src = JSON.parse(event.data).image; });
  source.addEventListener("redraw", (event) => {
    const data = JSON.parse(event.data);
    const count = data.samples.length;
    $("progress-text").textContent =
      `redrawing ${count} sample${count === 1 ? "" : "s"} read as another class (round ${data.round})`;
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
  const redrawn = $("progress-text").textContent.startsWith("redrawing") ? ", after redrawing" : "";
  $("progress-text").textContent = `done${redrawn}`;
  $("preview-box").hidden = true;
  $("result-png").src = png;
  $("result-gif").src = gif;
  $("png-link").href = png;
  $("png-link").download = `ddpm-${jobId.slice(0, 8)}.png`;
  $("gif-link").href = gif;
  $("gif-link").download = `ddpm-${jobId.slice(0, 8)}.gif`;
  const params = jobParams(jobId);
  const points = modelNamed(params.model)?.kind === "points";
  $("png-caption").textContent = points ? `a scatter plot of ${params.n} points;` : "";
  $("png-box").hidden = false;
  $("gif-box").hidden = false;
  fetch(`/jobs/${jobId}`, { headers: authHeaders() })
    .then((response) => (response.ok ? response.json() : null))
    .then((job) => {
      if (!job || currentJob !== jobId) return;
      const took = elapsedSeconds(job);
      if (took !== null) $("progress-text").textContent = `done in ${formatSeconds(took)}${redrawn}`;
      renderCheck(job.check, modelNamed(job.model));
    })
    .catch(() => {});
}

// a finished job's time from its submission to its end (null when a timestamp is missing)
function elapsedSeconds(job) {
  const start = Date.parse(job.created_at ?? "");
  const end = Date.parse(job.finished_at ?? "");
  return Number.isNaN(start) || Number.isNaN(end) ? null : Math.max(0, (end - start) / 1000);
}

// pixel art is scaled up with hard edges, never scaled down so: a large image shrunk with
// nearest-neighbour sampling aliases
function fitRendering(img) {
  if (!img.naturalWidth || !img.clientWidth) return;
  img.classList.toggle("upscaled", img.clientWidth * (window.devicePixelRatio || 1) > img.naturalWidth);
}

function fitAll() {
  for (const img of document.querySelectorAll("figure img")) fitRendering(img);
}

// The per-digit check under the grid: what the evaluation classifier reads in each sample,
// mismatches highlighted
function renderCheck(check, model) {
  const box = $("check");
  const table = $("check-table");
  const rows = table.tBodies[0];
  rows.replaceChildren();
  box.hidden = !check;
  table.hidden = true;
  if (!check) return;
  const digits = isDigitModel(model);
  $("check-title").textContent = digits ? "Per-digit check" : "Check";
  $("check-read").textContent = digits ? "digit read" : "class read";
  if (check.skipped) {
    $("check-summary").textContent = `Not checked: ${check.skipped}.`;
    return;
  }
  if (check.points) {
    $("check-summary").textContent = pointsSummary(check.points);
    return;
  }
  if (!Array.isArray(check.samples) || !check.samples.length) {
    $("check-summary").textContent = "No samples were checked.";
    return;
  }
  const testSet = digits ? "the MNIST test set" : "its test images";
  const accuracy = check.classifier_test_accuracy === null
    ? "" : ` (${(100 * check.classifier_test_accuracy).toFixed(2)}% on ${testSet})`;
  const by = `the classifier ${check.classifier}${accuracy}`;
  let summary;
  if (check.asked === null) {
    summary = `${digits ? "Digits" : "Classes"} read by ${by}; none was asked, so nothing to match.`;
  } else {
    const asked = check.asked_class ?? (digits ? check.asked : className(model, check.asked));
    summary = `${check.matches} of ${check.samples.length} read as ${asked} by ${by}.`;
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
    const read = sample.class_name ?? sample.label ?? sample.digit;
    const cells = [where, read, sample.confidence.toFixed(3), sample.seed, sample.redrawn || ""];
    for (const value of cells) row.insertCell().textContent = String(value);
  }
  table.hidden = false;
}

// a point model's measure, e.g. "3,912 of 4,000 points (97.8%) on black squares; the training
// data: 100%, points spread evenly: 50%."
function pointsSummary(points) {
  const percent = (value) => `${(100 * value).toFixed(1).replace(/\.0$/, "")}%`;
  const measure = points.measure.replaceAll("_", " ");
  return `${points.count.toLocaleString("en")} of ${points.total.toLocaleString("en")} points `
    + `(${percent(points.fraction)}) ${measure}; the training data: ${percent(points.reference)}, `
    + `points spread evenly: ${percent(points.chance)}.`;
}

async function cancel() {
  if (!currentJob) return;
  const response = await fetch(`/jobs/${currentJob}`, { method: "DELETE", headers: authHeaders() });
  if (response.status >= 400) showError((await response.json()).message);
}

$("generate-form").addEventListener("submit", submit);
$("model").addEventListener("change", updateModel);
$("sampler").addEventListener("change", updateSampler);
for (const id of ["steps", "n", "guidance", "digit"]) $(id).addEventListener("input", updateExpected);
$("digit").addEventListener("change", updateDigit);
$("cancel").addEventListener("click", cancel);
for (const img of document.querySelectorAll("figure img")) img.addEventListener("load", () => fitRendering(img));
window.addEventListener("resize", fitAll);
renderJobs();
loadModels().catch((error) => showError(`cannot load models: ${error}`));
loadAuth().catch(() => {});
