// ortserve demo page: plain JavaScript, no build step. Every URL is relative, so the page also
// works when the service sits behind a path prefix.
"use strict";

const IMAGE_TASKS = new Set(["classify", "detect", "segment", "pipeline"]);
const RENDERED_TASKS = new Set(["detect", "segment", "pipeline"]);
const TIMING_HEADERS = [
  ["x-total-time-ms", "total", "ms"],
  ["x-queue-time-ms", "queue", "ms"],
  ["x-inference-time-ms", "inference (batch)", "ms"],
  ["x-batch-size", "batch size", ""],
  // pipelines: one time per stage
  ["x-detect-time-ms", "detect stage", "ms"],
  ["x-crop-time-ms", "crop stage", "ms"],
  ["x-classify-time-ms", "classify stage", "ms"],
  ["x-crops", "crops classified", ""],
  ["x-classify-batch-size", "classifier batch size", ""],
  ["x-request-id", "request id", ""],
];

const $ = (id) => document.getElementById(id);
const state = { models: [], file: null, previewUrl: null, resultUrl: null };

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function errorText(response) {
  try {
    const body = await response.json();
    const message = typeof body.error === "string" ? body.error : body.error?.message;
    return `${response.status}: ${message ?? JSON.stringify(body)}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// -- models -------------------------------------------------------------------------------
async function loadModels() {
  const response = await fetch("v1/models", { headers: authHeaders() });
  if (!response.ok) {
    setStatus(`cannot list models: ${await errorText(response)}`, true);
    return;
  }
  state.models = (await response.json()).models;
  fillModels();
}

function fillModels() {
  const task = $("task").value;
  const select = $("model");
  select.replaceChildren();
  const models = state.models.filter((m) => m.task === task);
  for (const m of models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.status === "ready" ? m.name : `${m.name} (${m.status})`;
    option.disabled = m.status !== "ready";
    if (m.default_for.includes(task)) option.selected = true;
    select.append(option);
  }
  if (!models.length) setStatus(`no model serves ${task} here`, true);
  else if ($("status").classList.contains("error")) setStatus("");
}

function showInputs() {
  const task = $("task").value;
  $("image-input").hidden = !IMAGE_TASKS.has(task);
  $("text-input").hidden = task !== "embed";
  for (const row of document.querySelectorAll("[data-tasks]")) {
    row.hidden = !row.dataset.tasks.split(" ").includes(task);
  }
  $("confidence").value = task === "segment" ? "0.5" : "0.25";
  fillModels();
}

// -- image input --------------------------------------------------------------------------
function useFile(file) {
  if (!file) return;
  state.file = file;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  const preview = $("preview");
  preview.src = state.previewUrl;
  preview.hidden = false;
  $("drop-hint").textContent = file.name;
}

function wireDropZone() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => {
    useFile(e.target.files[0]);
    if (state.file) run();
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    useFile(e.dataTransfer.files[0]);
    if (state.file) run();
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") $("file").click();
  });
}

// -- results ------------------------------------------------------------------------------
function showTimings(response) {
  const body = $("timings").tBodies[0];
  body.replaceChildren();
  for (const [header, name, unit] of TIMING_HEADERS) {
    const value = response.headers.get(header);
    if (value === null) continue;
    const row = body.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = unit ? `${value} ${unit}` : value;
  }
  $("timings").hidden = !body.rows.length;
}

// long base64 masks and embedding vectors would drown the JSON view: shorten them for display
function abbreviate(value) {
  if (typeof value === "string" && value.length > 96) {
    return `${value.slice(0, 48)}… (${value.length} characters)`;
  }
  if (Array.isArray(value)) {
    if (value.length > 8 && value.every((v) => typeof v === "number")) {
      return [...value.slice(0, 6).map((v) => Number(v.toFixed(5))), `… (${value.length} values)`];
    }
    return value.map(abbreviate);
  }
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, abbreviate(v)]));
  }
  return value;
}

function showJson(body) {
  $("json").textContent = JSON.stringify(abbreviate(body), null, 2);
}

function showVisual(caption, ...nodes) {
  const figure = $("visual");
  const cap = $("visual-caption");
  cap.textContent = caption;
  figure.replaceChildren(cap, ...nodes);
}

function showPicture(url, caption) {
  if (state.resultUrl && state.resultUrl !== state.previewUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = url;
  const img = document.createElement("img");
  img.id = "rendered";
  img.alt = caption;
  img.src = url;
  return img;
}

function predictionList(predictions) {
  const list = document.createElement("ul");
  list.className = "predictions";
  for (const p of predictions) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = p.label;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, p.score * 100)}%`;
    const score = document.createElement("span");
    score.textContent = p.score.toFixed(3);
    item.append(label, bar, score);
    list.append(item);
  }
  return list;
}

function similarityTable(texts, embeddings) {
  const norms = embeddings.map((v) => Math.hypot(...v) || 1);
  const table = document.createElement("table");
  table.id = "similarity";
  const head = table.createTHead().insertRow();
  head.append(document.createElement("th"));
  for (const text of texts) {
    const th = document.createElement("th");
    th.textContent = text;
    th.title = text;
    head.append(th);
  }
  const body = table.createTBody();
  embeddings.forEach((a, i) => {
    const row = body.insertRow();
    const th = document.createElement("th");
    th.textContent = texts[i];
    th.title = texts[i];
    row.append(th);
    embeddings.forEach((b, j) => {
      let dot = 0;
      for (let k = 0; k < a.length; k++) dot += a[k] * b[k];
      const cosine = dot / (norms[i] * norms[j]);
      const cell = row.insertCell();
      cell.textContent = cosine.toFixed(3);
      const t = Math.max(0, Math.min(1, (cosine + 1) / 2));
      cell.style.background = `rgba(11, 107, 203, ${(t * t * 0.85).toFixed(3)})`;
      cell.style.color = t > 0.75 ? "#fff" : "inherit";
    });
  });
  return table;
}

// -- running ------------------------------------------------------------------------------
// a pipeline is named in the path; its own config names its models and settings
function imagePath(task) {
  return task === "pipeline" ? `pipelines/${encodeURIComponent($("model").value)}` : task;
}

function imageForm(task, render) {
  const form = new FormData();
  form.append("file", state.file, state.file.name || "image");
  const model = $("model").value;
  if (model && task !== "pipeline") form.append("model", model);
  if (task === "classify") form.append("top_k", $("top-k").value);
  if (RENDERED_TASKS.has(task) && task !== "pipeline") form.append("confidence", $("confidence").value);
  if (render) form.append("render", "true");
  return form;
}

async function runImage(task) {
  if (!state.file) throw new Error("choose or drop an image first");
  if (task === "pipeline" && !$("model").value) throw new Error("no pipeline to run");
  const post = (render) =>
    fetch(imagePath(task), { method: "POST", body: imageForm(task, render), headers: authHeaders() });
  // JSON and picture in parallel: the batcher may even run them together
  const [json, picture] = await Promise.all([
    post(false),
    RENDERED_TASKS.has(task) ? post(true) : Promise.resolve(null),
  ]);
  if (!json.ok) throw new Error(await errorText(json));
  const body = await json.json();
  showTimings(json);
  showJson(body);
  if (picture) {
    if (!picture.ok) throw new Error(await errorText(picture));
    const url = URL.createObjectURL(await picture.blob());
    showVisual(`${task} · ${body.model}`, showPicture(url, `${task} result`));
  } else {
    const predictions = body.results[0].predictions;
    showVisual(`${task} · ${body.model}`, showPicture(state.previewUrl, "input"), predictionList(predictions));
  }
}

async function runEmbed() {
  const texts = $("texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (!texts.length) throw new Error("type at least one text");
  const payload = { inputs: texts };
  const model = $("model").value;
  if (model) payload.model = model;
  const response = await fetch("embed", {
    method: "POST",
    body: JSON.stringify(payload),
    headers: { "Content-Type": "application/json", ...authHeaders() },
  });
  if (!response.ok) throw new Error(await errorText(response));
  const body = await response.json();
  showTimings(response);
  showJson(body);
  showVisual(`cosine similarity · ${body.model} · ${body.dimensions} dimensions`, similarityTable(texts, body.embeddings));
}

async function run() {
  const task = $("task").value;
  const button = $("run");
  button.disabled = true;
  setStatus("running…");
  try {
    if (task === "embed") await runEmbed();
    else await runImage(task);
    setStatus("done");
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  wireDropZone();
  $("task").addEventListener("change", showInputs);
  $("run").addEventListener("click", run);
  $("api-key").addEventListener("change", loadModels);
  showInputs();
  loadModels();
});
