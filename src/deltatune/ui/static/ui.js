// deltatune ui: the pages' behaviour (no libraries; nothing loaded from the internet).
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const $$ = (sel, el = document) => Array.from(el.querySelectorAll(sel));

// fetch JSON; a refusal ({"error": "..."}) becomes an Error with that one line
async function api(method, url, body, raw) {
  const opts = { method, headers: {} };
  if (raw !== undefined) { opts.body = raw; }
  else if (body !== undefined || method === "POST") {  // the UI takes POSTs as JSON only (no cross-site forms)
    opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body === undefined ? {} : body);
  }
  const r = await fetch(url, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new Error((data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}

function showMessage(text) {
  const el = $("#message");
  if (!el) return;
  el.textContent = text || "";
  el.hidden = !text;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function fmt(v) {
  if (typeof v !== "number") return v === null || v === undefined ? "–" : String(v);
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 1000 || Math.abs(v) < 1e-3 ? v.toExponential(3) : v.toFixed(4);
}

function when(t) {
  if (!t) return "–";
  const d = new Date(t * 1000);
  return d.toLocaleString();
}

// ---- new run -------------------------------------------------------------------------------
const NUMBERS = ["epochs", "learning_rate", "batch_size", "max_seq_length", "max_train_samples", "max_eval_samples"];
const INTEGERS = new Set(["batch_size", "max_seq_length", "max_train_samples", "max_eval_samples"]);

// the form's fields; throws an Error naming the field when a number box holds no valid number
function formData() {
  const out = {};
  for (const id of ["name", "task", "model", "method", "train_file", "settings"]) out[id] = $("#" + id).value.trim();
  for (const id of ["validation_file", "test_file"]) out[id] = $("#" + id).value.trim() || null;
  for (const id of NUMBERS) {
    const input = $("#" + id), v = input.value.trim();
    const label = input.closest("label").firstChild.textContent.trim();
    if (input.validity && input.validity.badInput) throw new Error(`${label}: give a number`);
    if (v === "") { out[id] = null; continue; }
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`${label}: give a number`);
    if (n <= 0) throw new Error(`${label}: give a number above 0`);
    if (INTEGERS.has(id) && !Number.isInteger(n)) throw new Error(`${label}: give a whole number (not ${v})`);
    out[id] = n;
  }
  return out;
}

function busy(on, which) {
  const b = $(which || "#busy");
  if (b) b.hidden = !on;
  $$("#run-form button").forEach((x) => { x.disabled = on; });
}

function initNew() {
  const method = $("#method");
  const lr = () => { const o = method.selectedOptions[0]; $("#learning_rate").placeholder = o ? `default ${o.dataset.lr}` : ""; };
  method.addEventListener("change", lr);
  lr();
  $("#inspect").addEventListener("click", async () => {
    showMessage("");
    let data;
    try { data = formData(); } catch (e) { showMessage(e.message); return; }
    busy(true);
    try {
      const r = await api("POST", "/api/inspect", data);
      $("#inspect-result").hidden = false;
      const cols = Object.entries(r.settings || {}).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(", ");
      $("#inspect-task").textContent = `task: ${r.task}${cols ? " · " + cols : ""}`;
      const ul = $("#inspect-reasons");
      ul.replaceChildren(...(r.reasons || []).map((x) => el("li", { text: x })));
      $("#inspect-check").textContent = r.check;
    } catch (e) { showMessage(e.message); } finally { busy(false); }
  });
  $("#start").addEventListener("click", async () => {
    showMessage("");
    let data;
    try { data = formData(); } catch (e) { showMessage(e.message); return; }
    if (!data.name) { showMessage("run name: give the run a name (letters, digits, '.', '_', '-')"); return; }
    busy(true);
    try {
      const r = await api("POST", "/api/runs", data);
      window.location.href = r.url;
    } catch (e) { showMessage(e.message); busy(false); }
  });
  for (const input of $$("input.upload")) {
    input.addEventListener("change", async () => {
      const f = input.files[0];
      if (!f) return;
      showMessage("");
      busy(true);
      try {
        const r = await api("PUT", `/api/upload/${encodeURIComponent(f.name)}`, undefined, f);
        $("#" + input.dataset.target).value = r.path;
      } catch (e) { showMessage(e.message); } finally { busy(false); input.value = ""; }
    });
  }
}

// ---- runs list -------------------------------------------------------------------------------
async function loadRuns() {
  let data;
  try { data = await api("GET", "/api/runs"); } catch (e) { showMessage(e.message); return false; }
  const tbody = $("#runs-table tbody");
  if (!data.runs.length) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: "9", text: "No runs yet: start one on the New run page." })));
    return false;
  }
  const checked = new Set($$("#runs-table input[type=checkbox]:checked").map((c) => c.value));
  tbody.replaceChildren(...data.runs.map((r) => {
    const box = el("input", { type: "checkbox", value: r.name, "aria-label": "select " + r.name });
    box.checked = checked.has(r.name);
    const del = el("button", { type: "button", class: "secondary delete", "data-run": r.name, text: "Delete" });
    del.disabled = r.status === "running";
    del.addEventListener("click", () => deleteRun(r.name));
    const badge = el("span", { class: "badge " + r.status, text: r.status });
    if (r.reason) badge.title = r.reason;
    return el("tr", { "data-run": r.name },
      el("td", { class: "pick" }, box),
      el("td", { class: "name" }, el("a", { href: `/runs/${encodeURIComponent(r.name)}`, text: r.name })),
      el("td", { "data-label": "Task", text: r.task || "–" }), el("td", { "data-label": "Model", text: r.model || "–" }),
      el("td", { "data-label": "Method", text: r.method || "–" }),
      el("td", { class: "num", "data-label": "Metric", text: r.metric ? `${r.metric} ${fmt(r.value)}` : "–" }),
      el("td", { "data-label": "Started", text: when(r.started) }),
      el("td", { class: "status" }, badge),
      el("td", { class: "del" }, r.reason ? el("div", { class: "muted reason", text: r.reason }) : "", del));
  }));
  return data.runs.some((r) => r.status === "running");
}

async function deleteRun(name) {
  if (!window.confirm(`Delete run ${name} and its files? This cannot be undone.`)) return;
  showMessage("");
  try { await api("DELETE", `/api/runs/${encodeURIComponent(name)}`); } catch (e) { showMessage(e.message); }
  loadRuns();
}

function initRuns() {
  const tick = async () => { const running = await loadRuns(); setTimeout(tick, running ? 2000 : 5000); };
  tick();
  $("#compare").addEventListener("click", async () => {
    showMessage("");
    const names = $$("#runs-table input[type=checkbox]:checked").map((c) => c.value);
    if (names.length < 2) { showMessage("select at least two runs to compare"); return; }
    try {
      const r = await api("POST", "/api/compare", { runs: names });
      window.location.href = r.url;
    } catch (e) { showMessage(e.message); }
  });
}

// ---- charts (inline SVG) -----------------------------------------------------------------------
const COLORS = ["#2b59c3", "#d9480f", "#1a7f37", "#7048e8", "#c2255c"];

function niceTicks(lo, hi, n) {
  if (lo === hi) { lo -= 1; hi += 1; }
  const step0 = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

function axisLabel(v) {  // an axis label: short, no trailing zeros
  if (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3)) return v.toExponential(1);
  return String(+v.toPrecision(4));
}

function chart(container, title, series) {
  // the legend sits in its own band under the title, above the plot area (never over a line)
  const named = series.filter((s) => s.points.length);
  // drawn at the container's width (1 unit = 1 CSS pixel), so the text is 12-14 px on a phone and a desktop alike
  const W = Math.max(280, Math.min(900, container.clientWidth || 480)), L = 52, R = 12, B = 38;
  const T = 30 + 17 * Math.max(named.length, 1), H = Math.round(Math.min(300, W * 0.5)) + T;
  const pts = series.flatMap((s) => s.points);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  add("text", { x: 4, y: 20, "font-size": 15, "font-weight": 600, fill: "#1d2330" }, title);
  if (!pts.length) {
    add("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#667085", "font-size": 13 }, "no points yet");
    container.replaceChildren(svg);
    return;
  }
  let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
  let y0 = Math.min(...pts.map((p) => p[1])), y1 = Math.max(...pts.map((p) => p[1]));
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  const pad = (y1 - y0) * 0.08 || Math.abs(y0) * 0.1 || 1;
  y0 -= pad; y1 += pad;
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R), sy = (y) => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  for (const t of niceTicks(y0, y1, 4)) {
    if (t < y0 || t > y1) continue;
    add("line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), stroke: "#e4e7ec" });
    add("text", { x: L - 6, y: sy(t) + 5, "text-anchor": "end", "font-size": 12, fill: "#667085" }, axisLabel(t));
  }
  for (const t of niceTicks(x0, x1, 5).filter(Number.isInteger)) {  // steps
    if (t < x0 || t > x1) continue;
    add("text", { x: sx(t), y: H - B + 18, "text-anchor": "middle", "font-size": 12, fill: "#667085" }, axisLabel(t));
  }
  add("text", { x: (L + W - R) / 2, y: H - 3, "text-anchor": "middle", "font-size": 12, fill: "#667085" }, "step");
  add("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#98a2b3" });
  named.forEach((s, i) => {
    const color = COLORS[series.indexOf(s) % COLORS.length];
    add("polyline", { points: s.points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none", stroke: color, "stroke-width": 2.5 });
    for (const p of s.points) add("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: color });
    const y = 40 + 17 * i;  // legend band: a swatch and the name
    add("line", { x1: 6, x2: 26, y1: y - 4, y2: y - 4, stroke: color, "stroke-width": 3 });
    add("text", { x: 32, y, "font-size": 13, fill: color }, s.name);
  });
  container.replaceChildren(svg);
}

function curveSeries(records, key) {
  return records.filter((r) => typeof r[key] === "number" && typeof r.step === "number").map((r) => [r.step, r[key]]);
}

// ---- one run -----------------------------------------------------------------------------------
let RUN = null, TRIED = false, CHAT = [], STOPPED = false;

function renderFinal(ev) {
  const tbody = $("#final-table tbody");
  const rows = [];
  for (const [split, metrics] of Object.entries(ev)) {
    if (split === "train" || typeof metrics !== "object" || metrics === null) continue;
    for (const [k, v] of Object.entries(metrics)) {
      if (typeof v !== "number") continue;
      rows.push(el("tr", { "data-split": split, "data-metric": k },
        el("th", { text: `${split} ${k}` }), el("td", { class: "num", "data-value": String(v), text: fmt(v) })));
    }
  }
  const train = ev.train || {};
  if (typeof train.train_seconds === "number") rows.push(el("tr", {}, el("th", { text: "training time" }), el("td", { class: "num", text: `${train.train_seconds} s (${train.global_step} steps)` })));
  tbody.replaceChildren(...rows);
  $("#final").hidden = rows.length === 0;
}

const GENERATIVE = ["causal-lm", "instruction", "summarization", "translation", "generative-qa"];

function tryForm(task, inputs) {
  const labels = { text: "Text", text_pair: "Second text", question: "Question", context: "Context" };
  $("#try-form").replaceChildren(...inputs.map((f) => el("label", {}, labels[f] || f,
    el("textarea", { id: `try-${f}`, name: f, rows: f === "context" ? "5" : "2", placeholder: task === "masked-lm" ? "text with [MASK]" : "" }))));
  $("#try").hidden = false;
}

function renderTry(d) {
  if (TRIED) return;
  TRIED = true;
  $("#predict").addEventListener("click", predict);
  $("#chat-form").addEventListener("submit", chat);
  if (d.inputs) tryForm(d.task, d.inputs);
  if (!d.inputs || GENERATIVE.includes(d.task)) {  // the loaded run says which columns its prompt reads and whether it chats
    $("#try-busy").textContent = "loading the model…";
    $("#try-busy").hidden = false;
    api("POST", `/api/runs/${encodeURIComponent(RUN)}/load`).then((c) => {
      tryForm(c.task, c.inputs);
      if (c.chat) $("#chat").hidden = false;
    }).catch((e) => showMessage(e.message)).finally(() => { $("#try-busy").hidden = true; $("#try-busy").textContent = "predicting…"; });
  }
}

function showPrediction(p) {
  const out = $("#prediction");
  out.hidden = false;
  out.replaceChildren();
  if (p && p.label !== undefined) {
    out.append(el("div", { class: "label-pred", id: "predicted-label", text: Array.isArray(p.label) ? p.label.join(", ") : String(p.label) }));
  } else if (p && p.generated !== undefined) {
    out.append(el("div", { class: "label-pred", id: "predicted-label", text: p.generated }));
  } else if (p && p.answer !== undefined) {
    out.append(el("div", { class: "label-pred", id: "predicted-label", text: p.answer || "(no answer)" }));
  } else if (p && Array.isArray(p.entities)) {
    const text = p.entities.map((e) => `${e.word !== undefined ? e.word : e.text} (${e.entity_group || e.entity || e.label})`).join(", ");
    out.append(el("div", { class: "label-pred", id: "predicted-label", text: text || "(no entities)" }));
  }
  out.append(document.createTextNode(JSON.stringify(p, null, 2)));
}

async function predict() {
  showMessage("");
  const inputs = {};
  for (const t of $$("#try-form textarea")) inputs[t.name] = t.value;
  $("#try-busy").hidden = false;
  $("#predict").disabled = true;
  try {
    const r = await api("POST", `/api/runs/${encodeURIComponent(RUN)}/predict`, { inputs });
    showPrediction(r.predictions[0]);
  } catch (e) { showMessage(e.message); } finally { $("#try-busy").hidden = true; $("#predict").disabled = false; }
}

function addMessage(role, content) {
  const log = $("#chat-log");
  log.append(el("div", { class: "msg " + role, text: content }));
  log.scrollTop = log.scrollHeight;
}

async function chat() {
  const input = $("#chat-input"), text = input.value.trim();
  if (!text) return;
  showMessage("");
  input.value = "";
  CHAT.push({ role: "user", content: text });
  addMessage("user", text);
  $("#chat-send").disabled = true;
  try {
    const r = await api("POST", `/api/runs/${encodeURIComponent(RUN)}/chat`, { messages: CHAT });
    CHAT.push({ role: "assistant", content: r.content });
    addMessage("assistant", r.content);
  } catch (e) { CHAT.pop(); showMessage(e.message); } finally { $("#chat-send").disabled = false; }
}

function renderRun(d) {
  const status = $("#status");
  status.textContent = d.status;
  status.className = "badge " + d.status;
  $("#run-summary").textContent = [d.task, d.model, d.method && `Δθ ${d.method}`].filter(Boolean).join(" · ");
  const total = d.total_steps, step = d.step || 0;
  const done = d.status === "finished";
  $("#progress-bar").style.width = total ? `${Math.min(100, 100 * step / total)}%` : (done ? "100%" : "0");
  $("#progress-text").textContent = total ? `step ${step} / ${total}` : (step ? `step ${step}` : (d.status === "running" ? "starting…" : ""));
  const last = (k) => { const r = [...d.records].reverse().find((x) => typeof x[k] === "number"); return r ? r[k] : undefined; };
  const metricKey = d.records.some((r) => typeof r["eval_" + d.metric] === "number") ? "eval_" + d.metric
    : (Object.keys(Object.assign({}, ...d.records)).find((k) => k.startsWith("eval_") && k !== "eval_loss") || null);
  const latest = [];
  if (last("loss") !== undefined) latest.push(`loss ${fmt(last("loss"))}`);
  if (last("eval_loss") !== undefined) latest.push(`validation loss ${fmt(last("eval_loss"))}`);
  if (metricKey && last(metricKey) !== undefined) latest.push(`${metricKey.slice(5)} ${fmt(last(metricKey))}`);
  $("#latest").textContent = latest.join(" · ");
  chart($("#chart-loss"), "loss", [
    { name: "train loss", points: curveSeries(d.records, "loss") },
    { name: "validation loss", points: curveSeries(d.records, "eval_loss") },
  ]);
  chart($("#chart-metric"), metricKey ? `validation ${metricKey.slice(5)}` : "validation metric",
    metricKey ? [{ name: metricKey.slice(5), points: curveSeries(d.records, metricKey) }] : []);
  const log = $("#log"), atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.textContent = d.log.length ? d.log.join("\n") : (d.log_note || "");
  if (atEnd) log.scrollTop = log.scrollHeight;  // follow the log unless the reader scrolled up
  $("#config").textContent = JSON.stringify(d.config, null, 2);
  // Stop: only for the UI's own trainer, once (a second SIGINT would break the checkpoint being saved)
  $("#stop").hidden = d.status !== "running" || !d.own;
  $("#stop").disabled = !!d.stopping || STOPPED;
  $("#stop").textContent = d.stopping || STOPPED ? "Stopping… (saving a checkpoint)" : "Stop (checkpoint)";
  $("#trainer").hidden = !(d.status === "running" && !d.own);
  $("#trainer").textContent = d.trainer_pid ? `trained by process ${d.trainer_pid}, not started by this UI: stop it where it runs (Ctrl-C, or kill -INT ${d.trainer_pid})` : "";
  $("#report-link").hidden = d.status === "running" || d.status === "damaged" || !d.records.length;
  if (d.error && d.status !== "running") showMessage(d.error);
  if (Object.keys(d.eval || {}).length) renderFinal(d.eval);
  if (d.has_model && d.status !== "running") renderTry(d);
}

function initRun() {
  RUN = document.body.dataset.run;
  const tick = async () => {
    let d;
    try { d = await api("GET", `/api/runs/${encodeURIComponent(RUN)}`); } catch (e) { showMessage(e.message); setTimeout(tick, 3000); return; }
    renderRun(d);
    if (d.status === "running") setTimeout(tick, 1500);
  };
  tick();
  $("#stop").addEventListener("click", async () => {
    if (STOPPED || !window.confirm("Stop training? A checkpoint is saved; resume with deltatune train --resume.")) return;
    STOPPED = true;
    $("#stop").disabled = true;
    $("#stop").textContent = "Stopping… (saving a checkpoint)";
    try { await api("POST", `/api/runs/${encodeURIComponent(RUN)}/stop`); } catch (e) { showMessage(e.message); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "new") initNew();
  else if (page === "runs") initRuns();
  else if (page === "run") initRun();
});
