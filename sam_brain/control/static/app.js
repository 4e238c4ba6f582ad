// SAM Brain dashboard: reads the daemon's GET /api endpoints and draws them. No mutation, no
// secrets, no third-party code: charts are inline SVG built here. Untrusted text (samples,
// reasons) only ever goes through textContent, never innerHTML.
"use strict";
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const PALETTE = ["#2f6fde", "#d9731a", "#1a9b55", "#b03fb5", "#c93a3a", "#0c9aa6", "#7a6a00", "#555"];
const state = { runs: [], selectedRun: "", sampleId: "", training: false };

async function api(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" } });
  const doc = await resp.json();
  if (!resp.ok) throw new Error(doc.error || resp.statusText);
  return doc;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
const day = (t) => new Date(t * 1000).toLocaleDateString([], { month: "short", day: "numeric" });

// One line chart: series = [{name, color, points: [[x, y], ...], dashed}], marks = [{x, y, color, label}].
function lineChart(box, series, opts = {}) {
  box.replaceChildren();
  const w = Math.max(box.clientWidth, 280), h = Math.max(box.clientHeight, 140);
  const pad = { l: 48, r: 12, t: 10, b: 24 };
  const svg = svgEl("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": opts.label || "chart" });
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) {
    const t = svgEl("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "empty" });
    t.textContent = opts.empty || "no data yet";
    svg.append(t);
    box.append(svg);
    return;
  }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (opts.zero) y0 = Math.min(0, y0);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 += Math.abs(y1) * 0.1 || 1; y0 -= opts.zero ? 0 : Math.abs(y0) * 0.1 || 1; }
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (w - pad.l - pad.r);
  const Y = (y) => h - pad.b - ((y - y0) / (y1 - y0)) * (h - pad.t - pad.b);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    svg.append(svgEl("line", { x1: pad.l, x2: w - pad.r, y1: Y(y), y2: Y(y), class: "grid" }));
    const t = svgEl("text", { x: pad.l - 6, y: Y(y) + 4, "text-anchor": "end" });
    t.textContent = (opts.yFmt || ((v) => fmt(v, 2)))(y);
    svg.append(t);
  }
  const ticks = w < 500 ? 2 : 4; // time labels collide on a phone
  for (let i = 0; i <= ticks; i++) {
    const x = x0 + ((x1 - x0) * i) / ticks;
    const t = svgEl("text", { x: X(x), y: h - 6, "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" });
    t.textContent = (opts.xFmt || ((v) => Math.round(v)))(x);
    svg.append(t);
  }
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    const path = svgEl("path", { d, fill: "none", "stroke-width": 2, class: "line", "data-series": s.name, "data-points": s.points.length });
    path.style.stroke = s.color; // CSSOM, not a style attribute: the CSP allows it and var() resolves
    if (s.dashed) path.setAttribute("stroke-dasharray", "5 4");
    const title = svgEl("title");
    title.textContent = s.name;
    path.append(title);
    svg.append(path);
    if (s.dots) for (const p of s.points) {
      const dot = svgEl("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3 });
      dot.style.fill = s.color;
      svg.append(dot);
    }
  }
  for (const m of opts.marks || []) {
    const ring = svgEl("circle", { cx: X(m.x), cy: Y(m.y), r: 6, fill: "none", "stroke-width": 2.5, class: "mark", "data-step": m.x });
    ring.style.stroke = m.color;
    svg.append(ring);
    const t = svgEl("text", { x: X(m.x), y: Y(m.y) - 10, "text-anchor": X(m.x) > w - 80 ? "end" : "middle" });
    t.textContent = m.label;
    svg.append(t);
  }
  box.append(svg);
}

function legend(box, names) {
  box.replaceChildren(...names.map((n, i) => {
    const span = el("span", {}, el("i"), n);
    span.style.color = PALETTE[i % PALETTE.length];
    return span;
  }));
}

// -- Now -------------------------------------------------------------------------------------
async function refreshNow() {
  const [self, training] = await Promise.all([api("/api/self"), api("/api/training")]);
  const ts = self.training_stats, td = ts.training_data, dep = ts.deployment, st = self.status;
  $("story").textContent = self.explanation;
  $("active").textContent = ts.model_version;
  $("active-sub").textContent = ts.deployed_at ? `deployed ${when(ts.deployed_at)} · gate ${ts.model_gate}` : "no adapter yet: the base model serves";
  $("canary").textContent = dep.canary ? `${dep.canary.version} at ${dep.canary.percent}%` : "none";
  $("canary-sub").textContent = dep.canary ? `since ${when(dep.canary.since)} · gate ${dep.canary.gate}` : `${dep.total_versions} versions · rollback ${dep.rollback_available ? "available" : "not available"}`;
  $("pool").textContent = `${td.total_samples} samples`;
  $("pool-sub").textContent = `${td.trainable_samples} trainable · ${td.new_samples} new of ${td.min_for_training} needed`;
  $("daemon").textContent = st.daemon;
  $("daemon-sub").textContent = `${st.backend || "-"} backend · up ${Math.round((st.uptime_seconds || 0) / 60)} min`;
  const cur = training.current;
  state.training = Boolean(training.training);
  if (cur) {
    const p = cur.progress || {};
    const pct = p.total_steps ? Math.min(100, (100 * p.step) / p.total_steps) : 0;
    $("run-title").textContent = `run ${cur.run_id} (${cur.trigger}) ${cur.status}: step ${p.step ?? 0} of ${p.total_steps ?? "?"}`;
    $("run-bar").style.width = `${pct}%`;
    $("run-stats").textContent = `loss ${fmt(p.train_loss)} · validation ${fmt(p.val_loss)} · ${fmt(p.tokens_per_sec, 0)} tokens/s · eta ${p.eta_seconds ? Math.round(p.eta_seconds) + " s" : "–"}`;
  } else {
    const last = ts.last_training;
    $("run-title").textContent = last.run_id ? `no run in progress · last run ${last.run_id} ${last.status} ${last.reason || ""}` : "no run in progress · none yet";
    $("run-bar").style.width = "0";
    $("run-stats").textContent = "";
  }
  $("why").textContent = training.blocked_by ? `Why no automatic run: ${training.blocked_by}` : "";
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

// -- Training --------------------------------------------------------------------------------
async function refreshTraining() {
  const [curves, gate] = await Promise.all([api("/api/training/curves?runs=10"), api("/api/gate?limit=20")]);
  state.runs = curves.runs;
  const sel = $("run-select");
  const ids = state.runs.map((r) => r.run_id);
  if (!ids.includes(state.selectedRun)) state.selectedRun = (state.runs.find((r) => r.count > 0) || state.runs[0] || {}).run_id || "";
  sel.replaceChildren(...state.runs.map((r) => el("option", { value: r.run_id }, `${r.run_id} · ${r.status} · ${r.count} points`)));
  sel.value = state.selectedRun;
  drawLoss();
  const body = $("gate").tBodies[0];
  body.replaceChildren(...gate.decisions.map((g) => el("tr", {},
    el("td", {}, when(g.ts)), el("td", {}, g.version), el("td", {}, g.against),
    el("td", {}, fmt(g.candidate_loss, 4)), el("td", {}, fmt(g.reference_loss, 4)),
    el("td", { class: g.promote ? "pass" : "fail" }, g.promote ? "promote" : "reject"),
    el("td", {}, (g.reasons || []).join("; ")))));
  if (!gate.decisions.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no candidate judged yet")));
}

function drawLoss() {
  const run = state.runs.find((r) => r.run_id === state.selectedRun);
  const pts = run ? run.points : [];
  const train = pts.filter((p) => p.train_loss !== null).map((p) => [p.step, p.train_loss]);
  const val = pts.filter((p) => p.val_loss !== null).map((p) => [p.step, p.val_loss]);
  const marks = run && run.best ? [{ x: run.best.step, y: run.best.val_loss, color: "var(--best)", label: `best ${fmt(run.best.val_loss)} @ ${run.best.step}` }] : [];
  lineChart($("loss-chart"), [
    { name: "train loss", color: "var(--train)", points: train },
    { name: "validation loss", color: "var(--val)", points: val, dots: true },
  ], { marks, label: "loss by step", empty: run ? "no loss points recorded for this run" : "no runs yet" });
  const m = (run && run.metrics) || {};
  $("run-meta").textContent = run ? `${run.samples_count} samples · started ${when(run.created_at)} · initial val ${fmt(m.initial_val_loss)} → best ${fmt(m.best_val_loss)}` : "";
}

// -- Rollout ---------------------------------------------------------------------------------
const GOOD = new Set(["canary_promoted", "version_activated"]);
const BAD = new Set(["version_rejected", "rollback", "canary_aborted", "rollback_unavailable"]);
function stepText(e, version) {
  const d = e.data;
  switch (e.kind) {
    case "version_registered": return "registered";
    case "evaluated": return `gate: ${d.promote ? "pass" : "fail"} (${fmt(d.candidate_loss)} vs ${fmt(d.reference_loss)})`;
    case "version_gate": return `gate ${d.gate}`;
    case "canary_started": return `canary ${d.percent}%`;
    case "canary_weight": return `${d.to}%`;
    case "canary_promoted": return "promoted";
    case "canary_aborted": return `aborted: ${d.reason}`;
    case "version_rejected": return `rejected: ${d.reason}`;
    case "version_activated": return `active (${d.reason})`;
    case "rollback": return d.from === version ? `rolled back: ${d.reason}` : `restored (rollback from ${d.from})`;
    default: return e.kind;
  }
}

async function refreshRollout() {
  const [tl, series] = await Promise.all([api("/api/versions/timeline"), api("/api/serving/series")]);
  const box = $("timelines");
  box.replaceChildren(...tl.versions.slice().reverse().map((v) => el("div", { class: "timeline", "data-version": v.version },
    el("b", {}, v.version), el("span", { class: "muted" }, `${v.status}${v.gate ? " · " + v.gate : ""}`),
    ...v.events.map((e) => el("span", { class: `step ${GOOD.has(e.kind) ? "good" : BAD.has(e.kind) && !(e.kind === "rollback" && e.data.to === v.version) ? "bad" : ""}`, title: when(e.ts) }, stepText(e, v.version))))));
  if (!tl.versions.length) box.append(el("p", { class: "muted" }, "no versions yet"));
  const names = Object.keys(series.versions);
  const pick = (key) => names.map((n, i) => ({ name: `${n} ${key}`, color: PALETTE[i % PALETTE.length], points: series.versions[n].map((p) => [p.t, p[key]]), dots: true }));
  lineChart($("rate-chart"), pick("rate"), { xFmt: clock, zero: true, empty: "no chat requests served since the daemon started" });
  lineChart($("lat-chart"), [...pick("p50_ms"), ...pick("p99_ms").map((s) => ({ ...s, dashed: true }))], { xFmt: clock, zero: true, yFmt: (v) => fmt(v, 0), empty: "no chat requests served since the daemon started" });
  legend($("serving-legend"), names.map((n) => {
    const last = series.versions[n].at(-1);
    return `${n}: ${last.requests} requests, ${fmt(100 * last.error_rate, 1)}% errors`;
  }));
}

// -- Data ------------------------------------------------------------------------------------
async function refreshData() {
  const [growth, ingests, stats] = await Promise.all([api("/api/data/growth"), api("/api/data/ingests?limit=10"), api("/api/data/stats")]);
  for (const [key, box, leg] of [["by_source", "growth-source", "legend-source"], ["by_tier", "growth-tier", "legend-tier"]]) {
    const names = Object.keys(growth[key]);
    lineChart($(box), names.map((n, i) => ({ name: n, color: PALETTE[i % PALETTE.length], points: growth.times.map((t, j) => [t, growth[key][n][j]]) })),
      { xFmt: growth.times.length && growth.times.at(-1) - growth.times[0] > 86400 ? day : clock, zero: true, yFmt: (v) => fmt(v, 0), empty: "the pool is empty" });
    legend($(leg), names.map((n) => `${n} ${growth[key][n].at(-1)}`));
  }
  const body = $("ingests").tBodies[0];
  const counts = (o) => Object.entries(o || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "–";
  body.replaceChildren(...ingests.reports.map((r) => el("tr", {},
    el("td", {}, r.when.replace(/^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)$/, "$1-$2-$3 $4:$5:$6")), el("td", {}, r.collector),
    el("td", {}, r.collected), el("td", {}, r.stored), el("td", {}, r.inserted), el("td", {}, toolCalls(r.coverage)),
    el("td", {}, counts(r.skipped)), el("td", {}, counts(r.dropped)))));
  if (!ingests.reports.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no ingest reports yet")));
  for (const [key, id] of [["by_source", "f-source"], ["by_tier", "f-tier"]]) {
    const sel = $(id), keep = sel.value;
    sel.replaceChildren(sel.options[0], ...Object.keys(stats[key] || {}).sort().map((v) => el("option", { value: v }, v)));
    sel.value = keep;
  }
}

function toolCalls(coverage) {
  const t = (coverage || {}).total || {};
  return t.tool_calls_seen ? `${t.tool_calls_supervised ?? 0} of ${t.tool_calls_seen}` : "–";
}

async function search(ev) {
  if (ev) ev.preventDefault();
  const params = new URLSearchParams({ limit: "50" });
  for (const [k, id] of [["q", "q"], ["source", "f-source"], ["tier", "f-tier"], ["split", "f-split"]]) if ($(id).value) params.set(k, $(id).value);
  const doc = await api(`/api/data/samples?${params}`);
  $("results-count").textContent = `${doc.matched} samples match${doc.matched > doc.samples.length ? `, showing ${doc.samples.length}` : ""}`;
  $("results").replaceChildren(...doc.samples.map((s) => {
    const li = el("li", { "data-id": s.id }, s.preview, el("small", {}, `${s.source} · tier ${s.tier} · ${s.split} · ${s.turns} turns`));
    li.addEventListener("click", () => showSample(s.id));
    return li;
  }));
  if (doc.samples.length) await showSample(doc.samples[0].id);
}

async function showSample(id) {
  state.sampleId = id;
  for (const li of $("results").children) li.classList.toggle("sel", li.dataset.id === id);
  const box = $("sample");
  const doc = await api(`/api/data/samples/${encodeURIComponent(id)}`);
  box.classList.remove("muted");
  if (doc.text === null) { box.replaceChildren(doc.note); return; }
  const parts = [el("div", { class: "muted" }, `${id} · ${doc.split} · rendered with the ${doc.rendered_with} · ${doc.spans.length} supervised spans (highlighted)`)];
  let pos = 0;
  for (const [a, b] of doc.spans) {
    parts.push(doc.text.slice(pos, a), el("mark", {}, doc.text.slice(a, b)));
    pos = b;
  }
  parts.push(doc.text.slice(pos));
  box.replaceChildren(...parts);
}

// -- wiring ----------------------------------------------------------------------------------
function guard(fn) {
  return () => fn().catch((err) => { $("updated").textContent = `error: ${err.message}`; });
}
const refreshAll = () => Promise.all([refreshNow(), refreshTraining(), refreshRollout(), refreshData()]);
document.addEventListener("DOMContentLoaded", () => {
  $("run-select").addEventListener("change", (e) => { state.selectedRun = e.target.value; drawLoss(); });
  $("search").addEventListener("submit", (e) => guard(() => search(e))());
  guard(async () => {
    await refreshAll();
    await search();
    document.body.dataset.ready = "1";
    performance.mark("sam-ready"); // every section drawn: what bench/dashboard.py times
  })();
  // Live: the progress and the running curve every 2 s while training, everything every 15 s.
  setInterval(() => { if (state.training) guard(() => Promise.all([refreshNow(), refreshTraining()]))(); }, 2000);
  setInterval(guard(refreshAll), 15000);
  let resize = 0;
  window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(guard(refreshAll), 250); });
});
