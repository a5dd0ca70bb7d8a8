// The mcaas-search page: plain JavaScript over the JSON API (no build step, no CDN).
// Every request carries the bearer token; live progress is read from the Server-Sent Events
// stream with fetch (EventSource cannot send the token header).
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("mcaas-token") || "";
let current = null;       // the study shown
let stream = null;        // AbortController of its event stream
let lastFinished = -1;    // finished trials when the plot was last drawn
let shownTrial = null;

function showError(message) { $("error").textContent = message || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${token}` }, options.headers || {});
  const response = await fetch(`/api${path}`, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let line = `${response.status} ${response.statusText}`;
    try { line = (await response.json()).error || line; } catch (e) { /* not JSON */ }
    throw new Error(line);
  }
  return response;
}
const getJson = async (path) => (await api(path)).json();

function cell(row, text, left) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (left) td.className = "l";
  row.appendChild(td);
  return td;
}
const fmt = (x, digits = 2) => (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "-");

async function login() {
  token = $("token").value.trim() || token;
  try {
    const server = await getJson("/server");
    sessionStorage.setItem("mcaas-token", token);
    showError("");
    $("login").hidden = true;
    $("main").hidden = false;
    const datasets = $("upload-dataset");
    datasets.replaceChildren(...server.datasets.map((d) => new Option(d, d)));
    await refreshModels();
    await refreshStudies();
    setInterval(() => refreshStudies().catch(() => {}), 5000);
  } catch (e) {
    showError(`log in: ${e.message}`);
  }
}

async function refreshModels() {
  const models = await getJson("/models");
  const select = $("model");
  const keep = select.value;
  select.replaceChildren(new Option("demo: the demo CNN on digits (teacher trained on first use)", "demo"));
  for (const m of models) {
    const d = m.description;
    select.appendChild(new Option(`${m.id}: ${m.architecture} on ${m.dataset} (${d.parameters.toLocaleString()} parameters)`, m.id));
  }
  select.value = [...select.options].some((o) => o.value === keep) ? keep : "demo";
}

async function upload() {
  const file = $("upload-file").files[0];
  if (!file) { showError("upload: choose a checkpoint file first"); return; }
  const form = new FormData();
  form.append("file", file);
  form.append("model", $("upload-arch").value.trim());
  form.append("dataset", $("upload-dataset").value);
  try {
    const record = await (await api("/models", { method: "POST", body: form })).json();
    const described = `${record.id}: ${JSON.stringify(record.description, null, 1)}`;
    $("upload-result").textContent = `${described}\ninspect: ${record.inspect.state}...`;
    showError("");
    await refreshModels();
    $("model").value = record.id;
    // The pre-flight analysis runs in its own process on the server; show it when it is done.
    for (let inspect = record.inspect; inspect.state === "running"; ) {
      await new Promise((resolve) => setTimeout(resolve, 2000));
      inspect = (await getJson(`/models/${record.id}`)).inspect;
      const rows = inspect.rows ? inspect.rows.map(([what, finding]) => `  ${what}: ${finding}`).join("\n") : "";
      $("upload-result").textContent = `${described}\ninspect: ${inspect.state}${inspect.error ? ` (${inspect.error})` : ""}\n${rows}`;
    }
  } catch (e) {
    showError(`upload: ${e.message}`);
  }
}

async function startJob() {
  const body = {
    model: $("model").value,
    target: $("target").value,
    max_drop: Number($("max-drop").value),
    trials: Number($("trials").value),
  };
  const space = $("space").value.trim();
  if (space) body.space = space;
  try {
    const created = await (await api("/studies", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    })).json();
    showError("");
    await refreshStudies();
    show(created.id);
  } catch (e) {
    showError(`start: ${e.message}`);
  }
}

function bestText(s) {
  if (!s.best) return "none yet";
  return `trial ${s.best.trial}: ${fmt(s.best.ratio)}x ${s.target}, drop ${fmt(s.best.drop)} pt`;
}

async function refreshStudies() {
  const studies = await getJson("/studies");
  const body = $("studies").tBodies[0];
  body.replaceChildren();
  for (const s of studies.slice().reverse()) {
    const row = body.insertRow();
    row.dataset.study = s.id;
    if (s.id === current) row.className = "selected";
    cell(row, s.id, true);
    cell(row, s.state, true).className = `l state-${s.state}`;
    cell(row, `${s.trials.finished ?? 0}/${s.trials.total ?? "?"}`);
    cell(row, bestText(s), true);
    const open = document.createElement("button");
    open.textContent = "open";
    open.onclick = () => show(s.id);
    row.insertCell().appendChild(open);
  }
}

function showStatus(s) {
  $("state").textContent = s.state;
  $("state").className = `state-${s.state}`;
  const t = s.trials || {};
  const parts = [`${t.finished ?? 0}/${t.total ?? "?"} trials`];
  if (t.running !== undefined) parts.push(`${t.running} running, ${t.pruned} pruned, ${t.failed} failed`);
  if (s.best) parts.push(`best feasible: ${bestText(s)}`);
  if (s.eta_s) parts.push(`ETA ${Math.round(s.eta_s)} s`);
  if (s.job && s.job.error) parts.push(`error: ${s.job.error}`);
  $("progress-text").textContent = parts.join(" · ");
  $("cancel-button").hidden = !(s.job && (s.state === "running" || s.state === "queued"));
  if ((t.finished ?? 0) !== lastFinished) {
    lastFinished = t.finished ?? 0;
    drawPlot().catch((e) => showError(`plot: ${e.message}`));
  }
}

async function show(id) {
  current = id;
  lastFinished = -1;
  $("study").hidden = false;
  $("trial").hidden = true;
  $("study-title").textContent = id;
  $("plot").replaceChildren();
  for (const row of $("studies").tBodies[0].rows) row.className = row.dataset.study === id ? "selected" : "";
  follow(id);
}

async function follow(id) {
  if (stream) stream.abort();
  stream = new AbortController();
  try {
    const response = await api(`/studies/${encodeURIComponent(id)}/events`, { signal: stream.signal });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = (chunk.match(/^event: (.*)$/m) || [])[1];
        const data = (chunk.match(/^data: (.*)$/m) || [])[1];
        if (!event || !data || id !== current) continue;
        if (event === "status") showStatus(JSON.parse(data));
        if (event === "error") showError(JSON.parse(data).error);
        if (event === "end") { lastFinished = -1; await drawPlot(); await refreshStudies(); }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") showError(`progress: ${e.message}`);
  }
}

async function drawPlot() {
  if (!current) return;
  const id = current;
  let front;
  try {
    front = await getJson(`/studies/${encodeURIComponent(id)}/front`);
  } catch (e) {
    if (e.message.includes("has not started yet")) return;  // the teacher is being measured
    throw e;
  }
  if (id !== current) return;
  const plot = $("plot");
  await Plotly.react(plot, front.figure.data, front.figure.layout, { displaylogo: false, responsive: true });
  plot.dataset.points = String(front.figure.data.reduce((n, t) => n + (t.customdata ? t.customdata.length : 0), 0));
  plot.removeAllListeners && plot.removeAllListeners("plotly_click");
  plot.on("plotly_click", (event) => {
    const point = event.points.find((p) => p.customdata !== undefined);
    if (point) showTrial(point.customdata).catch((e) => showError(`trial: ${e.message}`));
  });
}

function keyValueRows(table, entries) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const [k, v] of entries) {
    const row = body.insertRow();
    cell(row, k, true);
    cell(row, typeof v === "number" ? +v.toPrecision(6) : v);
  }
}

async function showTrial(number) {
  const t = await getJson(`/studies/${encodeURIComponent(current)}/trials/${number}`);
  shownTrial = number;
  $("trial").hidden = false;
  $("trial-title").textContent = `Trial ${t.number}${t.profile ? ` (${t.profile})` : ""}: ${t.state}${t.feasible ? ", feasible" : ""}`;
  const ratios = Object.entries(t.ratios || {}).map(([k, v]) => `${k} ${fmt(v)}x`).join(", ");
  $("trial-summary").textContent = `${t.settings} · drop ${fmt(t.drop)} pt · ${ratios}${t.reason ? ` · ${t.reason}` : ""}`;
  keyValueRows($("trial-settings"), Object.entries(t.config || {}));
  keyValueRows($("trial-metrics"), Object.entries(t.metrics || {}));
  // Each stage: {stage, seconds, metrics: {...}}; one column per metric any stage recorded.
  const stages = (t.stages || []).map((s) => Object.assign({ stage: s.stage, seconds: s.seconds }, s.metrics || {}));
  const keys = [...new Set(stages.flatMap((s) => Object.keys(s)))];
  const head = $("trial-stages").tHead;
  head.replaceChildren();
  const hr = head.insertRow();
  for (const k of keys) { const th = document.createElement("th"); th.textContent = k; hr.appendChild(th); }
  const body = $("trial-stages").tBodies[0];
  body.replaceChildren();
  for (const s of stages) {
    const row = body.insertRow();
    for (const k of keys) cell(row, typeof s[k] === "number" ? +s[k].toPrecision(5) : s[k], k === "stage");
  }
  const exportable = t.state === "complete";
  $("download-onnx").disabled = !exportable;
  $("download-sidecar").disabled = !exportable;
  $("download-note").textContent = exportable ? "verified in ONNX Runtime before it is served" : "no model: the trial did not complete";
}

async function download(file) {
  const name = `${current}-t${shownTrial}${file === "model.onnx" ? ".onnx" : ".onnx.json"}`;
  $("download-note").textContent = "exporting and verifying...";
  try {
    const blob = await (await api(`/studies/${encodeURIComponent(current)}/trials/${shownTrial}/${file}`)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    $("download-note").textContent = `downloaded ${name} (${blob.size.toLocaleString()} bytes)`;
  } catch (e) {
    showError(`download: ${e.message}`);
  }
}

async function openReport() {
  try {
    const html = await (await api(`/studies/${encodeURIComponent(current)}/report`)).blob();
    window.open(URL.createObjectURL(html), "_blank");
  } catch (e) {
    showError(`report: ${e.message}`);
  }
}

async function cancelJob() {
  try { await api(`/studies/${encodeURIComponent(current)}/cancel`, { method: "POST" }); }
  catch (e) { showError(`cancel: ${e.message}`); }
}

$("login-button").onclick = login;
$("upload-button").onclick = upload;
$("start-button").onclick = startJob;
$("download-onnx").onclick = () => download("model.onnx");
$("download-sidecar").onclick = () => download("sidecar.json");
$("report-button").onclick = openReport;
$("cancel-button").onclick = cancelJob;
if (token) login();
