// Status: /api/health (fetchers, updater, stores), /api/status/backfills and, per exchange, the minutes
// before first bars, missing and being repaired (/api/coverage/summary, every 30 s: it looks at every
// market), refreshed every 5 s.
"use strict";

const el = (id) => document.getElementById(id);
const cell = (text, cls) => `<td${cls ? ` class="${cls}"` : ""}>${text ?? "–"}</td>`;
const age = (seconds) => (seconds === undefined ? "–" : seconds < 120 ? `${seconds.toFixed(1)} s` : `${(seconds / 60).toFixed(1)} min`);
const when = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "–");

let coverage = null;
let coverageFetched = 0;

const count = (n) => Number(n ?? 0).toLocaleString("en-US");
const markets = (n) => `<div class="legend">${count(n)} market${n === 1 ? "" : "s"}</div>`;

// Three distinct counts per exchange (see the legend under the table): before the markets' first bars,
// missing and awaiting a repair run, and being repaired; `missing_minutes` is the last two together.
function renderCoverage() {
  if (!coverage) return;
  el("coverage").innerHTML = "<tr><th>Exchange</th><th class='num'>Before first bar</th><th class='num'>Missing</th>" +
    "<th class='num'>Being repaired</th><th>Repair</th></tr>" +
    coverage.map((c) => `<tr><td>${c.exchange}<div class="legend">${count(c.markets_known)} market${c.markets_known === 1 ? "" : "s"}` +
      `${c.history_start ? `, bars since ${when(c.history_start).slice(0, 16)}` : ""}</div></td>` +
      `<td class="num absent">${count(c.before_first_bar_minutes)} min${markets(c.markets_before_first_bar)}</td>` +
      `<td class="num ${c.awaiting_repair_minutes ? "down" : "ok"}">${count(c.awaiting_repair_minutes)} min${markets(c.markets_awaiting_repair)}</td>` +
      `<td class="num ${c.repairing_minutes ? "repairing" : ""}">${count(c.repairing_minutes)} min${markets(c.markets_repairing)}</td>` +
      `${cell(c.repair_job ? `${c.repair_job}: ${c.repair_left} request(s) left` : "idle")}</tr>`).join("");
}

function render(health, jobs) {
  el("stores").innerHTML = "<tr><th>Store</th><th>State</th><th>Detail</th></tr>" +
    ["database", "redis"].map((k) => `<tr>${cell(k)}${cell(health[k].state, health[k].state)}${cell(health[k].error || "")}</tr>`).join("") +
    `<tr>${cell("websocket subscriptions")}${cell(health.web ? health.web.websocket_subscriptions : "–")}${cell(health.web && health.web.live_listener ? "listening" : "not listening")}</tr>`;
  const fetchers = health.fetchers || {};
  el("fetchers").innerHTML = "<tr><th>Exchange</th><th>State</th><th>Last message</th><th class='num'>Connections</th><th class='num'>Msg/s</th><th class='num'>Reconnects</th></tr>" +
    Object.entries(fetchers).map(([name, f]) => `<tr>${cell(name)}${cell(f.state, f.state)}${cell(age(f.last_message_age_s))}` +
      `<td class="num">${f.connections_up ?? "–"} / ${f.connections_total ?? "–"}</td><td class="num">${f.messages_per_s ?? "–"}</td><td class="num">${f.reconnects ?? "–"}</td></tr>`).join("");
  const u = health.updater || {};
  el("updater").innerHTML = "<tr><th>State</th><th>Last flush</th><th class='num'>Backlog</th><th class='num'>Rows flushed</th></tr>" +
    `<tr>${cell(u.state, u.state)}${cell(age(u.last_flush_age_s))}<td class="num">${u.backlog ?? "–"}</td><td class="num">${u.rows_flushed_total ?? "–"}</td></tr>`;
  el("jobs").innerHTML = "<tr><th>Job</th><th>Exchange</th><th>Range</th><th>Markets</th><th>Progress</th><th class='num'>Failed</th><th class='num'>Candles</th><th>Created</th><th>State</th></tr>" +
    jobs.map((j) => `<tr>${cell(j.id)}${cell(j.exchange)}${cell(when(j.start_ms) + " → " + when(j.end_ms))}${cell(j.symbols.length)}` +
      `<td><progress max="${j.total}" value="${j.done + j.failed}"></progress> ${j.done + j.failed}/${j.total}</td>` +
      `<td class="num">${j.failed}</td><td class="num">${j.candles}</td>${cell(when(j.created_ms))}` +
      `${cell(j.complete ? "done" : j.finished ? "refreshing" : j.in_flight ? "running" : "waiting", j.complete ? "ok" : "")}</tr>`).join("");
  el("status").textContent = `platform ${health.status} · updated ${new Date().toLocaleTimeString()}`;
  el("status").className = "status-line" + (health.status === "ok" ? "" : " error");
  renderCoverage();
  window.cfrStatus = { health, jobs, coverage };
}

async function refresh() {
  try {
    const health = await (await fetch("/api/health")).json();  // 503 still carries the report
    const response = await fetch("/api/status/backfills");
    const jobs = response.ok ? await response.json() : [];
    if (Date.now() - coverageFetched > 30000) {
      const answer = await fetch("/api/coverage/summary");
      if (answer.ok) { coverage = await answer.json(); coverageFetched = Date.now(); }
    }
    render(health, jobs);
  } catch (error) {
    el("status").textContent = String(error.message || error);
    el("status").className = "status-line error";
  }
}

refresh();
setInterval(refresh, 5000);
