// The ministry dashboard: reads /ministry/v1/meta and /ministry/v1/report with the analyst's
// API key and draws them. No library: SVG and DOM only (the gateway has no outside network).
"use strict";

const API = "/ministry/v1";
const KEY_STORE = "attest-gateway.ministry-key";
const state = { meta: null, report: null };

// --- formatting (the browser test formats the API's figures the same way) ------------------
function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const one = (x) => x.toFixed(1).replace(".", ",");
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return one(seconds / 60) + " min";
  if (seconds < 86400) return one(seconds / 3600) + " t";
  return one(seconds / 86400) + " d";
}
function fmtRate(rate) {
  if (rate === null || rate === undefined) return "–";
  return (rate * 100).toFixed(1).replace(".", ",") + " %";
}
function fmtCount(n) {
  if (n === null || n === undefined) return "–";
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ".");
}

// --- API -----------------------------------------------------------------------------------
function apiKey() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromHash) {
    sessionStorage.setItem(KEY_STORE, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(KEY_STORE);
}
async function api(path, params) {
  const qs = new URLSearchParams(Object.entries(params || {}).filter(([, v]) => v));
  const res = await fetch(`${API}/${path}${qs.size ? "?" + qs : ""}`, {
    headers: { Authorization: `Bearer ${apiKey()}` },
  });
  if (res.status === 401 || res.status === 403) {
    sessionStorage.removeItem(KEY_STORE);
    showLogin();
    throw new Error("API-nøglen blev afvist");
  }
  if (!res.ok) {
    const problem = await res.json().catch(() => ({}));
    throw new Error(problem.detail || `HTTP ${res.status}`);
  }
  return res.json();
}
function filters() {
  return {
    period: document.getElementById("f-period").value,
    from: document.getElementById("f-from").value,
    to: document.getElementById("f-to").value,
    attest_type: document.getElementById("f-attest").value,
  };
}

// --- drawing -------------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
function el(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function setText(testid, text, value) {
  const node = document.querySelector(`[data-testid="${testid}"]`);
  node.textContent = text;
  node.dataset.value = value === null || value === undefined ? "" : String(value);
}

function drawLatency(series, deadlineDays) {
  const box = document.getElementById("chart-latency");
  box.replaceChildren();
  const points = series.filter((r) => !r.suppressed && r.median !== null);
  const W = 900, H = 260, L = 48, R = 16, T = 14, B = 34;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Svartid over tid" });
  box.appendChild(svg);
  if (!points.length) {
    svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "legend" },
      "Ingen perioder med nok borgere til at blive vist"));
    return;
  }
  // The axis unit follows the data: days for real attest latencies, hours or minutes for
  // fast (compressed) traffic; the deadlines are drawn only on a day axis.
  const top = Math.max(...points.map((p) => p.p90));
  const [unit, per] = top >= 2 * 86400 ? ["dage", 86400] : top >= 2 * 3600 ? ["timer", 3600] : ["minutter", 60];
  const days = (s) => s / per;
  const lines = per === 86400 ? Object.entries(deadlineDays) : [];
  const maxY = Math.max(1, ...points.map((p) => days(p.p90)), ...lines.map(([, d]) => d)) * 1.1;
  const x = (i) => L + (points.length === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (points.length - 1));
  const y = (d) => T + (H - T - B) * (1 - d / maxY);
  for (let t = 0; t <= 4; t++) {
    const d = (maxY * t) / 4;
    svg.appendChild(el("line", { x1: L, x2: W - R, y1: y(d), y2: y(d), stroke: "#e3e8ee" }));
    svg.appendChild(el("text", { x: L - 6, y: y(d) + 4, "text-anchor": "end", class: "legend" },
      d.toFixed(d < 10 ? 1 : 0)));
  }
  for (const [label, d] of lines) {
    svg.appendChild(el("line", { x1: L, x2: W - R, y1: y(d), y2: y(d), stroke: "#c0392b",
      "stroke-dasharray": "6 4", "data-deadline": label }));
    svg.appendChild(el("text", { x: W - R - 4, y: y(d) - 4, "text-anchor": "end", class: "legend" },
      `frist ${label}`));
  }
  const path = (key) => points.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(days(p[key])).toFixed(1)}`).join(" ");
  svg.appendChild(el("path", { d: path("p90"), fill: "none", stroke: "#8fb3d9", "stroke-width": 2 }));
  svg.appendChild(el("path", { d: path("median"), fill: "none", stroke: "#0b5cad", "stroke-width": 3 }));
  points.forEach((p, i) => {
    const dot = el("circle", { cx: x(i), cy: y(days(p.median)), r: 4, fill: "#0b5cad",
      "data-period": p.period_start, "data-median": p.median, "data-testid": "latency-point" });
    dot.appendChild(el("title", {}, `${p.period_start}: median ${fmtDuration(p.median)}, 90 % ${fmtDuration(p.p90)}, n=${p.count}`));
    svg.appendChild(dot);
    if (points.length <= 14 || i % Math.ceil(points.length / 12) === 0) {
      svg.appendChild(el("text", { x: x(i), y: H - 12, "text-anchor": "middle", class: "legend" },
        p.period_start));
    }
  });
  svg.appendChild(el("text", { x: L, y: H - 1, class: "legend", "data-unit": unit }, `${unit} · mørk: median · lys: 90 %`));
}

function drawBars(id, rows, valueKey, { baseline = null, warnAbove = null } = {}) {
  const box = document.getElementById(id);
  box.replaceChildren();
  for (const r of rows) {
    const row = document.createElement("div");
    row.className = "row";
    row.dataset.group = r.group;
    const name = document.createElement("span");
    name.textContent = r.label;
    const track = document.createElement("span");
    track.className = "track";
    const value = r.suppressed ? null : r[valueKey];
    if (value !== null && value !== undefined) {
      const fill = document.createElement("span");
      fill.className = "fill" + (warnAbove !== null && value > warnAbove ? " warn" : "");
      fill.style.width = `${Math.min(100, value * 100)}%`;
      track.appendChild(fill);
    }
    if (baseline !== null) {
      const base = document.createElement("span");
      base.className = "base";
      base.style.left = `${baseline * 100}%`;
      track.appendChild(base);
    }
    const val = document.createElement("span");
    val.className = "val" + (r.suppressed ? " suppressed" : "");
    val.textContent = r.suppressed ? "under 5" : fmtRate(value);
    val.dataset.value = value === null || value === undefined ? "" : String(value);
    val.dataset.testid = "bar-value";
    row.append(name, track, val);
    box.appendChild(row);
  }
  if (!rows.length) box.textContent = "Ingen data i perioden.";
}

function cell(text, cls, value) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  if (value !== undefined) td.dataset.value = value === null ? "" : String(value);
  return td;
}

function drawTables(rep) {
  const meta = state.meta;
  const durByType = Object.fromEntries(rep.by_attest_type.durations.map((r) => [r.group, r]));
  const tbody = document.querySelector("#table-attest tbody");
  tbody.replaceChildren();
  for (const d of rep.by_attest_type.deadlines) {
    const dur = durByType[d.group] || { suppressed: true };
    const tr = document.createElement("tr");
    tr.dataset.group = d.group;
    tr.append(
      cell(d.group),
      cell(meta.deadlines[d.group] || "–"),
      cell(d.suppressed ? "under 5" : fmtCount(d.requests), "num", d.requests),
      cell(dur.suppressed ? "–" : fmtDuration(dur.median), "num", dur.median ?? null),
      cell(dur.suppressed ? "–" : fmtDuration(dur.p90), "num", dur.p90 ?? null),
      cell(d.suppressed ? "–" : fmtRate(d.overdue_rate), "num", d.overdue_rate),
    );
    tbody.appendChild(tr);
  }
  const contactByMun = Object.fromEntries(rep.by_municipality.contacts.map((r) => [r.group, r]));
  const mbody = document.querySelector("#table-municipality tbody");
  mbody.replaceChildren();
  const rows = [...rep.by_municipality.deadlines].sort(
    (a, b) => (b.overdue_rate ?? -1) - (a.overdue_rate ?? -1) || a.label.localeCompare(b.label));
  for (const d of rows) {
    const c = contactByMun[d.group] || { suppressed: true };
    const tr = document.createElement("tr");
    tr.dataset.group = d.group;
    tr.append(
      cell(d.label),
      cell(d.suppressed ? "under 5" : fmtCount(d.requests), "num" + (d.suppressed ? " suppressed" : ""), d.requests),
      cell(d.suppressed ? "–" : fmtCount(d.overdue), "num", d.overdue),
      cell(d.suppressed ? "–" : fmtRate(d.overdue_rate), "num", d.overdue_rate),
      cell(d.suppressed ? "–" : fmtRate(d.late_request_rate), "num", d.late_request_rate),
      cell(c.suppressed ? "–" : fmtRate(c.coverage), "num", c.coverage ?? null),
    );
    mbody.appendChild(tr);
  }
}

function render() {
  const rep = state.report;
  const meta = state.meta;
  const f = filters();
  document.querySelectorAll(".period-word").forEach((n) => (n.textContent = f.period === "week" ? "uge" : "måned"));
  const nat = rep.national;
  const headline = nat.durations.find((r) => r.metric === "request_to_attest") || { suppressed: true };
  const dl = nat.deadlines[0] || { suppressed: true };
  const ct = nat.contacts[0] || { suppressed: true };
  setText("kpi-requests", dl.suppressed ? "–" : fmtCount(dl.requests), dl.requests);
  setText("kpi-median", headline.suppressed ? "–" : fmtDuration(headline.median), headline.median);
  setText("kpi-p90", headline.suppressed ? "–" : fmtDuration(headline.p90), headline.p90);
  setText("kpi-overdue-rate", dl.suppressed ? "–" : fmtRate(dl.overdue_rate), dl.overdue_rate);
  setText("kpi-late-rate", dl.suppressed ? "–" : fmtRate(dl.late_request_rate), dl.late_request_rate);
  setText("kpi-coverage", ct.suppressed ? "–" : fmtRate(ct.coverage), ct.coverage);
  document.getElementById("baseline").textContent = fmtRate(meta.contact_baseline);
  document.getElementById("min-cell").textContent = meta.min_cell_citizens;
  let lines;
  if (f.attest_type) {
    lines = { [`${f.attest_type} (${meta.deadlines[f.attest_type]})`]: meta.deadline_days[f.attest_type] };
  } else {
    lines = { "14 dage": 14, "30 dage": 30, "2 mdr.": meta.deadline_days["LÆ 155"] };
  }
  drawLatency(rep.series.durations, lines);
  drawBars("chart-overdue-region", rep.by_region.deadlines, "overdue_rate", { warnAbove: 0.25 });
  drawBars("chart-coverage-region", rep.by_region.contacts, "coverage", { baseline: meta.contact_baseline });
  drawTables(rep);
  document.body.dataset.ready = "true";
}

async function load() {
  const error = document.getElementById("error");
  error.hidden = true;
  document.body.dataset.ready = "false";
  try {
    if (!state.meta) {
      state.meta = await api("meta");
      const select = document.getElementById("f-attest");
      for (const code of Object.keys(state.meta.deadlines)) {
        select.appendChild(new Option(`${code} (frist ${state.meta.deadlines[code]})`, code));
      }
    }
    state.report = await api("report", filters());
    document.getElementById("login").hidden = true;
    document.getElementById("main").hidden = false;
    render();
  } catch (exc) {
    error.textContent = `Kunne ikke hente tallene: ${exc.message}`;
    error.hidden = false;
    document.body.dataset.ready = "error";
  }
}

function showLogin() {
  document.getElementById("login").hidden = false;
  document.getElementById("main").hidden = true;
}

document.getElementById("filters").addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
document.getElementById("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_STORE, document.getElementById("api-key").value.trim());
  load();
});
// CSV downloads: the API wants the key in a header, so fetch and hand the file over.
for (const [id, path, file] of [
  ["csv-deadlines", "deadlines?by=municipality&series=true", "fristdata-kommuner.csv"],
  ["csv-durations", "durations?by=region&series=true", "svartider-regioner.csv"],
]) {
  document.getElementById(id).addEventListener("click", async (ev) => {
    ev.preventDefault();
    const f = filters();
    const qs = new URLSearchParams(Object.entries({ period: f.period, from: f.from, to: f.to,
      attest_type: f.attest_type }).filter(([, v]) => v));
    const res = await fetch(`${API}/${path}&format=csv&${qs}`, {
      headers: { Authorization: `Bearer ${apiKey()}` },
    });
    if (!res.ok) return;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await res.blob());
    link.download = file;
    link.click();
    URL.revokeObjectURL(link.href);
  });
}
if (apiKey()) load(); else showLogin();
// A living page: refresh the figures every minute while the tab is visible.
setInterval(() => { if (!document.hidden && state.meta && apiKey()) load(); }, 60000);
