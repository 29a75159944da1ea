// The ministry dashboard: reads /ministry/v1/meta and /ministry/v1/report (refreshed every
// minute) and /ministry/v1/coverage and /latency (row-based: read when the filters are shown)
// with the analyst's API key and draws them, in Danish or English. No library: SVG and DOM only
// (the gateway has no outside network). The browser test formats the API's figures the same way.
"use strict";

const API = "/ministry/v1";
const KEY_STORE = "attest-gateway.ministry-key";
const LANG_STORE = "attest-gateway.lang";
const state = { meta: null, report: null, rows: null, lang: "da" };

// --- words ---------------------------------------------------------------------------------
const WORDS = {
  da: {
    title: "Attester fra sundhedsvæsenet til jobcentre — overblik",
    skip: "Spring til tallene",
    h1: "Lægeattester til jobcentre",
    intro: "Svartider, fristoverskridelser og direkte kontakt mellem jobcenter og psykiatri.",
    suppressNote: "Tal fra attest-gatewayen; grupper med færre end {n} borgere vises ikke (»under {n}«).",
    switchTo: "English", switchLang: "en",
    filters: "Filtre", period: "Periode", month: "måned", week: "uge", from: "Fra", to: "Til",
    attestType: "Attesttype", all: "alle", show: "Vis",
    apiKey: "Ministeriets API-nøgle", logIn: "Log ind",
    keyNote: "Nøglen gemmes kun i denne fane (sessionStorage).",
    kpis: "Nøgletal",
    kpiRequests: "Anmodninger",
    kpiMedian: "Median anmodning → attest (besvarede)",
    kpiP90: "90 % besvaret inden for",
    kpiOverdue: "Overskred fristen (af afgjorte)",
    kpiLate: "Anmodet for sent: efter første opfølgning (af anmodninger)",
    kpiNoContact: "Uden kontakt med psykiatrien (forløb med anmodning)",
    ofAnswered: "af {n} besvarede",
    ofDecided: "{k} af {n} afgjorte",
    ofRequests: "{k} af {n} anmodninger",
    ofEpisodes: "{k} af {n} afsluttede forløb",
    ofCases: "{k} af {n} sager",
    baselineKpi: "Rigsrevisionen: {b} uden kontakt · mål: {t}",
    legendBaseline: "Rigsrevisionens udgangspunkt: {b} uden direkte kontakt",
    legendTarget: "Mål: højst {t} uden direkte kontakt",
    provisional: "Foreløbige tal: {k} af {n} anmodninger ({p}) er endnu ikke besvaret. Median og 90 % tæller kun de besvarede og undervurderer derfor svartiden; se svartiden medregnet åbne anmodninger nederst.",
    latencyTitle: "Svartid fra anmodning til attest over tid (besvarede anmodninger)",
    latencySub: "Median og 90 %-fraktil pr. {period}, mod fristerne.",
    legendMedian: "median", legendP90: "90 %-fraktil", legendDeadline: "frist (stiplet)",
    legendOpen: "foreløbig: perioden har åbne anmodninger (hul prik)",
    axis: "Lodret akse: {unit}",
    days: "dage", hours: "timer", minutes: "minutter",
    chartLabel: "Svartid over tid",
    noPeriods: "Ingen perioder med nok borgere til at blive vist",
    deadlineLine: "frist {label}",
    overdueRegionTitle: "Fristoverskridelser pr. region",
    overdueRegionSub: "Andel af de afgjorte anmodninger (besvaret, eller fristen passeret uden svar), der overskred fristen.",
    contactRegionTitle: "Uden kontakt med psykiatrien pr. region (forløb med anmodning)",
    contactRegionSub: "Andel af de afsluttede psykiatriske forløb med en anmodning, der ikke havde kontakt inden for vinduet. I disse løbende optællinger tæller en anmodning sendt til psykiatrien som kontakt, også ubesvaret, og borgere uden nogen anmodning er ikke med; tallene over registrerede sygesager nederst bruger den reviderede definition af direkte kontakt.",
    attestTitle: "Pr. attesttype", munTitle: "Pr. kommune",
    colAttest: "Attest", colDeadline: "Frist", colRequests: "Anmodninger",
    colMedian: "Median (besvarede)", colP90: "90 % (besvarede)",
    colOverdue: "Overskred fristen, af afgjorte",
    colMunicipality: "Kommune",
    colLate: "Anmodet for sent, af anmodninger",
    colNoContact: "Uden kontakt med psykiatrien, af afsluttede forløb",
    rowsTitle: "Over registrerede sygesager og medregnet åbne anmodninger",
    rowsSub: "Disse tal læses fra de enkelte sager og anmodninger i perioden, ikke fra de løbende optællinger, så de koster i forhold til periodens længde: de hentes kun på forlangende, og uden en fra-dato for de seneste {weeks} uger.",
    rowsLoad: "Hent tallene",
    rowsNotLoaded: "Ikke hentet.", rowsLoading: "Henter …", rowsFailed: "Kunne ikke hente: {msg}",
    rowsPeriod: "Periode: {from} – {to}.", today: "i dag",
    casesTitle: "Sygesager med psykiatrisk forløb uden direkte kontakt, pr. region",
    casesNational: "Hele landet: {share} — {k} af {n} sager (vinduet lukket); {pending} endnu åbne vinduer.",
    casesNone: "Ingen registrerede sager med lukket vindue i perioden (eller for få til at blive vist).",
    kmTitle: "Svartid medregnet åbne anmodninger (Kaplan–Meier), pr. attesttype",
    colOpen: "Stadig åbne, af anmodninger", colKmMedian: "Median", colKmP90: "90 %",
    colAnsweredMedian: "Median kun besvarede",
    kmNote: "–: ikke nået, fordi for mange anmodninger stadig er åbne, eller for få til at blive vist.",
    national: "Alle",
    csv: "Hent som CSV (med de valgte filtre; varigheder i dage med én decimal):",
    csvDeadlines: "fristdata pr. kommune", csvDurations: "svartider pr. region",
    csvLatency: "svartider medregnet åbne pr. attesttype",
    suppressed: "under {n}", noData: "Ingen data i perioden.",
    rejected: "API-nøglen blev afvist", loadFailed: "Kunne ikke hente tallene: {msg}",
    unitDays: "d", dayWord: "dage", dayOne: "dag",
    units: { d: ["dag", "dage"], wd: ["arbejdsdag", "arbejdsdage"], w: ["uge", "uger"], m: ["måned", "måneder"] },
    anchor: { request: "fra anmodning", receipt: "fra modtagelse" },
    deadlineOption: "{code} (frist {rule})",
    decimal: ",", thousands: ".", pct: " %",
  },
  en: {
    title: "Health attests to job centres — overview",
    skip: "Skip to the figures",
    h1: "Medical attests to job centres",
    intro: "Response times, missed deadlines and direct contact between job centres and psychiatry.",
    suppressNote: "Figures from the attest gateway; groups of fewer than {n} citizens are not shown (“under {n}”).",
    switchTo: "Dansk", switchLang: "da",
    filters: "Filters", period: "Period", month: "month", week: "week", from: "From", to: "To",
    attestType: "Attest type", all: "all", show: "Show",
    apiKey: "The ministry's API key", logIn: "Log in",
    keyNote: "The key is kept in this tab only (sessionStorage).",
    kpis: "Key figures",
    kpiRequests: "Requests",
    kpiMedian: "Median request → attest (answered)",
    kpiP90: "90% answered within",
    kpiOverdue: "Past the deadline (of settled)",
    kpiLate: "Requested late: after the first follow-up (of requests)",
    kpiNoContact: "Without contact with psychiatry (courses with a request)",
    ofAnswered: "of {n} answered",
    ofDecided: "{k} of {n} settled",
    ofRequests: "{k} of {n} requests",
    ofEpisodes: "{k} of {n} closed courses",
    ofCases: "{k} of {n} cases",
    baselineKpi: "Audit office: {b} without contact · target: {t}",
    legendBaseline: "Audit office's baseline: {b} without direct contact",
    legendTarget: "Target: at most {t} without direct contact",
    provisional: "Provisional figures: {k} of {n} requests ({p}) are not answered yet. The median and 90th percentile count only answered requests and so understate the time to attest; see the time to attest counting open requests at the bottom.",
    latencyTitle: "Time from request to attest over time (answered requests)",
    latencySub: "Median and 90th percentile per {period}, against the deadlines.",
    legendMedian: "median", legendP90: "90th percentile", legendDeadline: "deadline (dashed)",
    legendOpen: "provisional: the period has open requests (hollow dot)",
    axis: "Vertical axis: {unit}",
    days: "days", hours: "hours", minutes: "minutes",
    chartLabel: "Time to attest over time",
    noPeriods: "No period with enough citizens to be shown",
    deadlineLine: "deadline {label}",
    overdueRegionTitle: "Missed deadlines by region",
    overdueRegionSub: "Share of settled requests (answered, or the deadline passed without an answer) that missed the deadline.",
    contactRegionTitle: "Without contact with psychiatry by region (courses with a request)",
    contactRegionSub: "Share of closed psychiatric courses with a request that had no contact within the window. In these running counts a request sent to psychiatry counts as contact, even unanswered, and citizens without any request are not included; the figures over registered sickness cases at the bottom use the revised definition of direct contact.",
    attestTitle: "By attest type", munTitle: "By municipality",
    colAttest: "Attest", colDeadline: "Deadline", colRequests: "Requests",
    colMedian: "Median (answered)", colP90: "90% (answered)",
    colOverdue: "Past the deadline, of settled",
    colMunicipality: "Municipality",
    colLate: "Requested late, of requests",
    colNoContact: "Without contact with psychiatry, of closed courses",
    rowsTitle: "Over registered sickness cases and counting open requests",
    rowsSub: "These figures are read from the single cases and requests of the period, not from the running counts, so they cost in proportion to the period's length: they are fetched on demand only, and without a from date for the last {weeks} weeks.",
    rowsLoad: "Load the figures",
    rowsNotLoaded: "Not loaded.", rowsLoading: "Loading …", rowsFailed: "Could not load: {msg}",
    rowsPeriod: "Period: {from} – {to}.", today: "today",
    casesTitle: "Sickness cases with a psychiatric course without direct contact, by region",
    casesNational: "Whole country: {share} — {k} of {n} cases (window closed); {pending} windows still open.",
    casesNone: "No registered cases with a closed window in the period (or too few to be shown).",
    kmTitle: "Time to attest counting open requests (Kaplan–Meier), by attest type",
    colOpen: "Still open, of requests", colKmMedian: "Median", colKmP90: "90%",
    colAnsweredMedian: "Median of answered only",
    kmNote: "–: not reached, because too many requests are still open, or too few to be shown.",
    national: "All",
    csv: "Download as CSV (with the filters chosen; durations in days with one decimal):",
    csvDeadlines: "deadlines by municipality", csvDurations: "response times by region",
    csvLatency: "response times counting open requests by attest type",
    suppressed: "under {n}", noData: "No data in the period.",
    rejected: "The API key was refused", loadFailed: "Could not load the figures: {msg}",
    unitDays: "d", dayWord: "days", dayOne: "day",
    units: { d: ["day", "days"], wd: ["working day", "working days"], w: ["week", "weeks"], m: ["month", "months"] },
    anchor: { request: "from the request", receipt: "from receipt" },
    deadlineOption: "{code} (deadline {rule})",
    decimal: ".", thousands: ",", pct: "%",
  },
};
function t(key, vars) {
  let text = WORDS[state.lang][key];
  for (const [k, v] of Object.entries(vars || {})) text = text.replaceAll(`{${k}}`, String(v));
  return text;
}

// --- formatting ----------------------------------------------------------------------------
function one(x) {
  return x.toFixed(1).replace(".", t("decimal"));
}
function fmtDays(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return `${one(seconds / 86400)} ${t("dayWord")}`;
}
function fmtRate(rate) {
  if (rate === null || rate === undefined) return "–";
  return one(rate * 100) + t("pct");
}
function fmtCount(n) {
  if (n === null || n === undefined) return "–";
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, t("thousands"));
}
// "4 af 15 (26,7 %)": a share with what it is of.
function fmtShare(k, n) {
  if (k === null || k === undefined || !n) return "–";
  return `${fmtCount(k)} ${state.lang === "da" ? "af" : "of"} ${fmtCount(n)} (${fmtRate(k / n)})`;
}
// "14d@receipt" → "14 dage fra modtagelse"
function fmtDeadline(rule) {
  const m = /^(\d+)(wd|d|w|m)(@receipt)?$/.exec(rule || "");
  if (!m) return rule || "–";
  const n = Number(m[1]);
  const [singular, plural] = WORDS[state.lang].units[m[2]];
  return `${n} ${n === 1 ? singular : plural} ${WORDS[state.lang].anchor[m[3] ? "receipt" : "request"]}`;
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
    throw new Error(t("rejected"));
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
function byTestId(testid) {
  return document.querySelector(`[data-testid="${testid}"]`);
}
function setText(testid, text, value) {
  const node = byTestId(testid);
  node.textContent = text;
  if (value !== undefined) node.dataset.value = value === null ? "" : String(value);
}

function drawLatency(series, openByPeriod, deadlineDays) {
  const box = document.getElementById("chart-latency");
  box.replaceChildren();
  const points = series.filter((r) => !r.suppressed && r.median !== null);
  const W = 900, H = 250, L = 52, R = 16, T = 16, B = 28;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": t("chartLabel") });
  box.appendChild(svg);
  if (!points.length) {
    svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "legend" }, t("noPeriods")));
    setText("latency-unit", "");
    return;
  }
  // The axis unit follows the data: days for real attest latencies, hours or minutes for
  // fast (compressed) traffic; the deadlines are drawn only on a day axis.
  const top = Math.max(...points.map((p) => p.p90));
  const [unit, per] = top >= 2 * 86400 ? ["days", 86400] : top >= 2 * 3600 ? ["hours", 3600] : ["minutes", 60];
  const scaled = (s) => s / per;
  const lines = per === 86400 ? Object.entries(deadlineDays) : [];
  const highest = Math.max(1, ...points.map((p) => scaled(p.p90)), ...lines.map(([, d]) => d)) * 1.08;
  // Round ticks: a step of 1, 2 or 5 times a power of ten, four or five steps up the axis.
  const power = 10 ** Math.floor(Math.log10(highest / 4));
  const step = [1, 2, 5, 10].map((m) => m * power).find((v) => highest / v <= 5);
  const ticks = Math.ceil(highest / step);
  const maxY = ticks * step;
  const x = (i) => L + (points.length === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (points.length - 1));
  const y = (d) => T + (H - T - B) * (1 - d / maxY);
  for (let k = 0; k <= ticks; k++) {
    const d = step * k;
    svg.appendChild(el("line", { x1: L, x2: W - R, y1: y(d), y2: y(d), stroke: "#e3e8ee" }));
    svg.appendChild(el("text", { x: L - 6, y: y(d) + 4, "text-anchor": "end", class: "legend" },
      d.toFixed(step < 1 ? 1 : 0).replace(".", t("decimal"))));
  }
  for (const [label, d] of lines) {
    svg.appendChild(el("line", { x1: L, x2: W - R, y1: y(d), y2: y(d), stroke: "#b03a2e",
      "stroke-dasharray": "6 4", "data-deadline": label }));
    svg.appendChild(el("text", { x: W - R - 4, y: y(d) - 4, "text-anchor": "end", class: "legend" },
      t("deadlineLine", { label })));
  }
  const path = (key) => points.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(scaled(p[key])).toFixed(1)}`).join(" ");
  svg.appendChild(el("path", { d: path("p90"), fill: "none", stroke: "#5b8fc9", "stroke-width": 2, "stroke-dasharray": "2 3" }));
  svg.appendChild(el("path", { d: path("median"), fill: "none", stroke: "#0b5cad", "stroke-width": 3 }));
  points.forEach((p, i) => {
    const open = openByPeriod[p.period_start] || 0;
    const dot = el("circle", { cx: x(i), cy: y(scaled(p.median)), r: 5, "stroke-width": 2, stroke: "#0b5cad",
      fill: open > 0 ? "#fff" : "#0b5cad", "data-period": p.period_start, "data-median": p.median,
      "data-provisional": String(open > 0), "data-testid": "latency-point" });
    dot.appendChild(el("title", {}, `${p.period_start}: median ${fmtDays(p.median)}, 90 % ${fmtDays(p.p90)}, n=${p.count}`));
    svg.appendChild(dot);
    if (points.length <= 14 || i % Math.ceil(points.length / 12) === 0) {
      const anchor = points.length > 1 && i === 0 ? "start" : points.length > 1 && i === points.length - 1 ? "end" : "middle";
      svg.appendChild(el("text", { x: x(i), y: H - 8, "text-anchor": anchor, class: "legend" }, p.period_start));
    }
  });
  setText("latency-unit", t("axis", { unit: t(unit) }), unit);
}

// Bars of a share, with the share's denominator beside it ("4 af 15 (26,7 %)"); `part` and
// `whole` name the row's fields; lines at `marks` (class → share).
function drawBars(id, rows, part, whole, { marks = {}, warnAbove = null } = {}) {
  const box = document.getElementById(id);
  box.replaceChildren();
  const n = state.meta.min_cell_citizens;
  for (const r of rows) {
    const row = document.createElement("div");
    row.className = "row";
    row.dataset.group = r.group;
    const name = document.createElement("span");
    name.textContent = r.label;
    const track = document.createElement("span");
    track.className = "track";
    const k = r.suppressed ? null : r[part];
    const total = r.suppressed ? null : r[whole];
    const value = k !== null && total ? k / total : null;
    if (value !== null) {
      const fill = document.createElement("span");
      fill.className = "fill" + (warnAbove !== null && value > warnAbove ? " warn" : "");
      fill.style.width = `${Math.min(100, value * 100)}%`;
      track.appendChild(fill);
    }
    for (const [cls, share] of Object.entries(marks)) {
      const mark = document.createElement("span");
      mark.className = `mark ${cls}`;
      mark.style.left = `${share * 100}%`;
      track.appendChild(mark);
    }
    const val = document.createElement("span");
    val.className = "val" + (r.suppressed ? " suppressed" : "");
    val.textContent = r.suppressed ? t("suppressed", { n }) : fmtShare(k, total);
    val.dataset.value = value === null ? "" : String(value);
    row.append(name, track, val);
    box.appendChild(row);
  }
  if (!rows.length) box.textContent = t("noData");
}

function cell(text, cls, value) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  if (value !== undefined) td.dataset.value = value === null ? "" : String(value);
  return td;
}
function shareCell(row, part, whole) {
  if (row.suppressed) return cell("–", "num", null);
  const k = row[part], n = row[whole];
  return cell(fmtShare(k, n), "num", k !== null && n ? k / n : null);
}

function drawTables(rep) {
  const meta = state.meta;
  const under = t("suppressed", { n: meta.min_cell_citizens });
  const durByType = Object.fromEntries(rep.by_attest_type.durations.map((r) => [r.group, r]));
  const tbody = document.querySelector("#table-attest tbody");
  tbody.replaceChildren();
  for (const d of rep.by_attest_type.deadlines) {
    const dur = durByType[d.group] || { suppressed: true };
    const tr = document.createElement("tr");
    tr.dataset.group = d.group;
    tr.append(
      cell(d.group),
      cell(fmtDeadline(meta.deadlines[d.group])),
      cell(d.suppressed ? under : fmtCount(d.requests), "num" + (d.suppressed ? " suppressed" : ""), d.requests),
      cell(dur.suppressed ? "–" : fmtDays(dur.median), "num", dur.median ?? null),
      cell(dur.suppressed ? "–" : fmtDays(dur.p90), "num", dur.p90 ?? null),
      shareCell(d, "overdue", "decided"),
    );
    tbody.appendChild(tr);
  }
  const contactByMun = Object.fromEntries(rep.by_municipality.contacts.map((r) => [r.group, r]));
  const mbody = document.querySelector("#table-municipality tbody");
  mbody.replaceChildren();
  const rows = [...rep.by_municipality.deadlines].sort(
    (a, b) => (b.overdue_rate ?? -1) - (a.overdue_rate ?? -1) || a.label.localeCompare(b.label, "da"));
  for (const d of rows) {
    const c = contactByMun[d.group] || { suppressed: true };
    const tr = document.createElement("tr");
    tr.dataset.group = d.group;
    tr.append(
      cell(d.label),
      cell(d.suppressed ? under : fmtCount(d.requests), "num" + (d.suppressed ? " suppressed" : ""), d.requests),
      shareCell(d, "overdue", "decided"),
      shareCell(d, "late_requests", "requests"),
      shareCell(c, "without_contact", "settled"),
    );
    mbody.appendChild(tr);
  }
}

function drawRows() {
  const rows = state.rows;
  if (!rows) {
    setText("rows-status", t("rowsNotLoaded"));
    return;
  }
  setText("rows-status", t("rowsPeriod", { from: state.rowsPeriod.from, to: state.rowsPeriod.to || t("today") }));
  byTestId("rows-status").dataset.from = state.rowsPeriod.from;
  const meta = state.meta;
  const marks = { baseline: meta.no_contact_baseline, target: meta.no_contact_target };
  const nat = rows.coverage.find((r) => r.group === "DK");
  if (nat && !nat.suppressed && nat.cases) {
    setText("cases-national", t("casesNational", { share: fmtRate(nat.share_without_contact),
      k: fmtCount(nat.without_contact), n: fmtCount(nat.cases), pending: fmtCount(nat.pending) }),
    nat.share_without_contact);
  } else {
    setText("cases-national", t("casesNone"), null);
  }
  drawBars("chart-cases-region", rows.coverageByRegion, "without_contact", "cases", { marks, warnAbove: meta.no_contact_target });
  const tbody = document.querySelector("#table-latency tbody");
  tbody.replaceChildren();
  for (const r of [...rows.latency.map((x) => ({ ...x, label: t("national") })), ...rows.latencyByType]) {
    const tr = document.createElement("tr");
    tr.dataset.group = r.group;
    tr.append(
      cell(r.label),
      r.suppressed ? cell(t("suppressed", { n: meta.min_cell_citizens }), "num suppressed", null) : shareCell(r, "open", "requests"),
      cell(r.suppressed ? "–" : fmtDays(r.median), "num", r.median ?? null),
      cell(r.suppressed ? "–" : fmtDays(r.p90), "num", r.p90 ?? null),
      cell(r.suppressed ? "–" : fmtDays(r.answered_only_median), "num", r.answered_only_median ?? null),
    );
    tbody.appendChild(tr);
  }
}

function translate() {
  document.documentElement.lang = state.lang;
  document.title = t("title");
  document.querySelectorAll("[data-i18n]").forEach((n) => (n.textContent = t(n.dataset.i18n)));
  document.querySelectorAll("[data-i18n-aria]").forEach((n) => n.setAttribute("aria-label", t(n.dataset.i18nAria)));
  const sw = document.getElementById("lang-switch");
  sw.textContent = t("switchTo");
  sw.lang = t("switchLang");
  const n = state.meta ? state.meta.min_cell_citizens : 5;
  setText("suppress-note", t("suppressNote", { n }));
  document.querySelector('[data-i18n="rowsSub"]').textContent = t("rowsSub", { weeks: ROWS_WEEKS });
  if (state.meta) {
    const select = document.getElementById("f-attest");
    for (const option of select.options) {
      if (option.value) option.textContent = t("deadlineOption", { code: option.value, rule: fmtDeadline(state.meta.deadlines[option.value]) });
    }
  }
}

function render() {
  translate();
  const rep = state.report;
  const meta = state.meta;
  if (!rep || !meta) return;
  const f = filters();
  const nat = rep.national;
  const headline = nat.durations.find((r) => r.metric === "request_to_attest") || { suppressed: true };
  const dl = nat.deadlines[0] || { suppressed: true };
  const ct = nat.contacts[0] || { suppressed: true };
  const ok = (r, v) => (r.suppressed ? null : v);
  setText("kpi-requests", dl.suppressed ? "–" : fmtCount(dl.requests), ok(dl, dl.requests));
  setText("kpi-median", headline.suppressed ? "–" : fmtDays(headline.median), ok(headline, headline.median));
  setText("kpi-p90", headline.suppressed ? "–" : fmtDays(headline.p90), ok(headline, headline.p90));
  const answered = headline.suppressed ? "" : t("ofAnswered", { n: fmtCount(headline.count) });
  setText("kpi-median-den", answered);
  setText("kpi-p90-den", answered);
  const share = (r, k, n) => (r.suppressed || !r[n] ? null : r[k] / r[n]);
  setText("kpi-overdue-rate", fmtRate(share(dl, "overdue", "decided")), share(dl, "overdue", "decided"));
  setText("kpi-overdue-rate-den", dl.suppressed ? "" : t("ofDecided", { k: fmtCount(dl.overdue), n: fmtCount(dl.decided) }));
  setText("kpi-late-rate", fmtRate(share(dl, "late_requests", "requests")), share(dl, "late_requests", "requests"));
  setText("kpi-late-rate-den", dl.suppressed ? "" : t("ofRequests", { k: fmtCount(dl.late_requests), n: fmtCount(dl.requests) }));
  setText("kpi-no-contact", fmtRate(share(ct, "without_contact", "settled")), share(ct, "without_contact", "settled"));
  setText("kpi-no-contact-den", ct.suppressed ? "" : t("ofEpisodes", { k: fmtCount(ct.without_contact), n: fmtCount(ct.settled) }));
  const b = fmtRate(meta.no_contact_baseline), tg = fmtRate(meta.no_contact_target);
  setText("kpi-baseline", t("baselineKpi", { b, t: tg }));
  setText("legend-baseline", t("legendBaseline", { b }));
  setText("legend-target", t("legendTarget", { t: tg }));

  const note = document.getElementById("provisional");
  note.hidden = dl.suppressed || !(dl.open > 0);
  if (!note.hidden) {
    setText("provisional", t("provisional", { k: fmtCount(dl.open), n: fmtCount(dl.requests), p: fmtRate(dl.open / dl.requests) }), dl.open);
  }
  setText("latency-sub", t("latencySub", { period: t(f.period) }));
  let lines;
  if (f.attest_type) {
    lines = { [`${f.attest_type} (${fmtDeadline(meta.deadlines[f.attest_type])})`]: meta.deadline_days[f.attest_type] };
  } else {
    const days = (n) => `${n} ${WORDS[state.lang].units.d[1]}`;
    lines = { [days(14)]: 14, [days(30)]: 30, [`2 ${WORDS[state.lang].units.m[1]}`]: meta.deadline_days["LÆ 155"] };
  }
  const openByPeriod = Object.fromEntries(rep.series.deadlines.filter((r) => !r.suppressed).map((r) => [r.period_start, r.open]));
  drawLatency(rep.series.durations, openByPeriod, lines);
  drawBars("chart-overdue-region", rep.by_region.deadlines, "overdue", "decided", { warnAbove: 0.25 });
  drawBars("chart-coverage-region", rep.by_region.contacts, "without_contact", "settled",
    { marks: { baseline: meta.no_contact_baseline, target: meta.no_contact_target }, warnAbove: meta.no_contact_target });
  drawTables(rep);
  drawRows();
}

async function load() {
  const error = document.getElementById("error");
  error.hidden = true;
  document.body.dataset.ready = "false";
  try {
    if (!state.meta) {
      state.meta = await api("meta");
      const select = document.getElementById("f-attest");
      for (const code of Object.keys(state.meta.deadlines)) select.appendChild(new Option(code, code));
    }
    state.report = await api("report", filters());
    document.getElementById("login").hidden = true;
    document.getElementById("main").hidden = false;
    render();
    document.body.dataset.ready = "true";
  } catch (exc) {
    error.textContent = t("loadFailed", { msg: exc.message });
    error.hidden = false;
    document.body.dataset.ready = "error";
  }
}

// The row-based figures cost in proportion to the period's rows (bench/RESULTS.md): fetched
// on demand only, never on the minute's refresh, and for the last ROWS_WEEKS weeks unless a
// from date is chosen.
const ROWS_WEEKS = 13;
function rowFilters() {
  const f = filters();
  if (!f.from) {
    const from = new Date(Date.now() - ROWS_WEEKS * 7 * 86400000);
    f.from = from.toISOString().slice(0, 10);
  }
  return f;
}
function rowsNotLoaded() {
  state.rows = null;
  setText("rows-status", t("rowsNotLoaded"));
  document.body.dataset.rowsReady = "none";
  setText("cases-national", "");
  document.getElementById("chart-cases-region").replaceChildren();
  document.querySelector("#table-latency tbody").replaceChildren();
}
async function loadRows() {
  const status = byTestId("rows-status");
  document.body.dataset.rowsReady = "false";
  status.textContent = t("rowsLoading");
  try {
    const f = rowFilters();
    const [coverage, coverageByRegion, latency, latencyByType] = await Promise.all([
      api("coverage", f), api("coverage", { ...f, by: "region" }),
      api("latency", f), api("latency", { ...f, by: "attest_type" }),
    ]);
    state.rows = { coverage: coverage.rows, coverageByRegion: coverageByRegion.rows,
      latency: latency.rows, latencyByType: latencyByType.rows };
    state.rowsPeriod = { from: f.from, to: f.to };
    if (state.meta) drawRows();
    document.body.dataset.rowsReady = "true";
  } catch (exc) {
    status.textContent = t("rowsFailed", { msg: exc.message });
    document.body.dataset.rowsReady = "error";
  }
}

async function show() {
  rowsNotLoaded();
  await load();
}

function showLogin() {
  document.getElementById("login").hidden = false;
  document.getElementById("main").hidden = true;
}

function setLanguage(lang) {
  state.lang = WORDS[lang] ? lang : "da";
  sessionStorage.setItem(LANG_STORE, state.lang);
  render();
}

setLanguage(sessionStorage.getItem(LANG_STORE) || "da");
document.getElementById("lang-switch").addEventListener("click", () => setLanguage(t("switchLang")));
document.getElementById("rows-load").addEventListener("click", () => loadRows());
document.getElementById("filters").addEventListener("submit", (ev) => { ev.preventDefault(); show(); });
document.getElementById("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_STORE, document.getElementById("api-key").value.trim());
  show();
});
// CSV downloads: the API wants the key in a header, so fetch and hand the file over.
for (const [id, path, file, rowBased] of [
  ["csv-deadlines", "deadlines?by=municipality&series=true", "fristdata-kommuner.csv", false],
  ["csv-durations", "durations?by=region&series=true", "svartider-regioner.csv", false],
  ["csv-latency", "latency?by=attest_type", "svartider-aabne-attesttyper.csv", true],
]) {
  document.getElementById(id).addEventListener("click", async (ev) => {
    ev.preventDefault();
    const f = rowBased ? rowFilters() : filters();
    const qs = new URLSearchParams(Object.entries(f).filter(([, v]) => v));
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
if (apiKey()) show(); else showLogin();
// A living page: refresh the overview every minute while the tab is visible.
setInterval(() => { if (!document.hidden && state.meta && apiKey()) load(); }, 60000);
