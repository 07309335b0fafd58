// tickvault dashboard: polls /api/dashboard once a second and draws canvas line charts.
// No external libraries or fonts: this page must work on machines without internet.
"use strict";

const POLL_MS = 1000;
const KEEP = 120; // points per series (two minutes at one poll a second)
const COLORS = ["#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#a855f7", "#14b8a6", "#eab308"];

// window.tickvault is read by the browser test: polls done and points per chart.
const state = (window.tickvault = { polls: 0, errors: 0, charts: {}, last: null });

function series(chart, name) {
  const c = (state.charts[chart] = state.charts[chart] || { series: {}, points: 0 });
  return (c.series[name] = c.series[name] || []);
}

function push(chart, name, t, v) {
  const s = series(chart, name);
  s.push([t, v]);
  if (s.length > KEEP) s.shift();
  state.charts[chart].points += 1;
}

function fmt(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (n / 1e3).toFixed(1) + "k";
  if (a >= 100 || Number.isInteger(n)) return n.toFixed(0);
  return n.toFixed(a >= 10 ? 1 : 2);
}

function draw(chartId) {
  const canvas = document.getElementById("chart-" + chartId);
  const chart = state.charts[chartId];
  if (!canvas || !chart) return;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const names = Object.keys(chart.series);
  let tMin = Infinity, tMax = -Infinity, vMax = 0;
  for (const n of names) for (const [t, v] of chart.series[n]) {
    tMin = Math.min(tMin, t); tMax = Math.max(tMax, t); vMax = Math.max(vMax, v);
  }
  const left = 48, right = 8, top = 8, bottom = 18;
  const pw = w - left - right, ph = h - top - bottom;
  vMax = vMax > 0 ? vMax * 1.1 : 1;
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#8b98a5";
  g.strokeStyle = "#2a333d";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + ph - (ph * i) / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(left + pw, y); g.stroke();
    g.fillText(fmt((vMax * i) / 4), 4, y + 4);
  }
  if (tMax > tMin) g.fillText(`last ${Math.round(tMax - tMin)} s`, left, h - 4);
  const span = Math.max(tMax - tMin, 1);
  names.forEach((n, i) => {
    const pts = chart.series[n];
    g.strokeStyle = COLORS[i % COLORS.length];
    g.lineWidth = 2;
    g.beginPath();
    pts.forEach(([t, v], j) => {
      const x = left + ((t - tMin) / span) * pw, y = top + ph - (v / vMax) * ph;
      if (j === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  });
  canvas.dataset.points = String(chart.points);
  const legend = document.getElementById("legend-" + chartId);
  if (legend) {
    legend.replaceChildren(...names.map((n, i) => {
      const span = document.createElement("span");
      const sw = document.createElement("i");
      sw.style.background = COLORS[i % COLORS.length];
      const last = chart.series[n][chart.series[n].length - 1];
      span.append(sw, `${n}: ${fmt(last ? last[1] : null)}`);
      return span;
    }));
  }
}

function badge(text, cls) {
  const b = document.createElement("span");
  b.className = "badge " + cls;
  b.textContent = text;
  return b;
}

function item(label, stateName) {
  const d = document.createElement("span");
  d.className = "item";
  d.append(label, badge(stateName, String(stateName).replace(/[^a-z_]/gi, "")));
  return d;
}

function renderStates(d) {
  const breakers = document.getElementById("breakers");
  breakers.replaceChildren(
    ...(d.breakers || []).map((b) => item("breaker " + b.name, b.state)),
    item("store", d.store_up ? "ok" : "bad"),
  );
  const guardian = document.getElementById("guardian");
  const checks = (d.guardian && d.guardian.checks) || [];
  const entries = Array.isArray(checks)
    ? checks.map((c) => [c.name, c.state])
    : Object.entries(checks).map(([k, v]) => [k, v && v.state ? v.state : v]);
  guardian.replaceChildren(
    ...(entries.length ? entries.map(([k, v]) => item("guardian " + k, v))
      : [item("guardian", d.guardian ? "idle" : "not running")]),
  );
  const sp = d.spool;
  document.getElementById("spool").textContent = sp
    ? `spool: ${fmt(sp.backlog)} frames waiting, ${fmt(sp.size_bytes)} bytes · dead letters ${fmt(d.dead_letters)}`
    : `dead letters ${fmt(d.dead_letters)}`;
}

function renderTables(d) {
  const tables = d.tables || {};
  const max = Math.max(1, ...Object.values(tables));
  document.getElementById("tables").replaceChildren(...Object.entries(tables).map(([k, n]) => {
    const row = document.createElement("div");
    row.className = "row";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = ((100 * n) / max).toFixed(1) + "%";
    const num = document.createElement("span");
    num.className = "n";
    num.textContent = n.toLocaleString();
    row.append(k, bar, num);
    return row;
  }));
  document.getElementById("totals").textContent =
    `published ${d.published.toLocaleString()} · stored this run ` +
    Object.entries(d.stored || {}).map(([k, n]) => `${k} ${n.toLocaleString()}`).join(", ");
}

function renderEvents(d) {
  const events = (d.events || []).slice().reverse();
  const journal = (d.guardian && d.guardian.journal) || [];
  const all = events.concat(journal).sort((a, b) => (b.at || 0) - (a.at || 0)).slice(0, 50);
  const list = document.getElementById("events");
  if (!all.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "no events yet (breakers, spool, failover and guardian report here)";
    list.replaceChildren(li);
    return;
  }
  list.replaceChildren(...all.map((e) => {
    const li = document.createElement("li");
    const when = new Date((e.at || 0) * 1000).toLocaleTimeString();
    li.append(when, badge(e.level || "info", e.level || "info"), e.source || "", e.message || "");
    return li;
  }));
}

let previous = null;

function update(d) {
  const t = d.at;
  if (previous) {
    const dt = Math.max(t - previous.at, 1e-3);
    const before = Object.fromEntries(previous.sources.map((s) => [s.name, s.messages]));
    for (const s of d.sources) {
      if (s.name in before) push("ingest", s.name, t, Math.max(0, (s.messages - before[s.name]) / dt));
    }
  }
  const backlog = Object.entries(d.backlog || {});
  for (const [k, g] of backlog) push("backlog", k, t, g.lag + g.pending);
  if (!backlog.length) push("backlog", "bus", t, 0);
  if (d.latency && d.latency.p99_ms !== null) {
    push("latency", "p50", t, d.latency.p50_ms);
    push("latency", "p99", t, d.latency.p99_ms);
  }
  previous = d;
  ["ingest", "backlog", "latency"].forEach(draw);
  renderTables(d);
  renderStates(d);
  renderEvents(d);
  document.getElementById("uptime").textContent = `up ${Math.round(d.uptime_s)} s`;
  document.getElementById("last-update").textContent =
    "updated " + new Date(t * 1000).toLocaleTimeString();
}

async function poll() {
  const conn = document.getElementById("conn");
  try {
    const r = await fetch("/api/dashboard", { credentials: "same-origin", cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const d = await r.json();
    state.last = d;
    state.polls += 1;
    update(d);
    conn.className = "badge ok";
    conn.textContent = "live";
  } catch (err) {
    state.errors += 1;
    conn.className = "badge bad";
    conn.textContent = "disconnected: " + err.message;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

window.addEventListener("resize", () => ["ingest", "backlog", "latency"].forEach(draw));
poll();
