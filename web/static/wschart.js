// Live candlestick chart: history from GET /api/ohlcvs (older bars load on scroll-back), live bars
// from WS /api/ohlcvs. The URL (?exchange=&base=&quote=&period=) keeps the view so it can be shared.
"use strict";

const PERIODS = {
  "1h": { interval: "1m", span: 3600e3 },
  "6h": { interval: "1m", span: 6 * 3600e3 },
  "1D": { interval: "5m", span: 86400e3 },
  "3D": { interval: "15m", span: 3 * 86400e3 },
  "7D": { interval: "30m", span: 7 * 86400e3 },
  "1M": { interval: "3h", span: 30 * 86400e3 },
  "3M": { interval: "12h", span: 91 * 86400e3 },
  "1Y": { interval: "1D", span: 365 * 86400e3 },
  "3Y": { interval: "7D", span: 3 * 365 * 86400e3 },
};
const PAGE = 500;
const MA_LENGTH = 20;
// The time scale places bars by index, so a gap between bars needs whitespace points to show:
// one per missing bar up to MAX_FILLED_BARS, else LONG_GAP_POINTS evenly spaced ones.
const MAX_FILLED_BARS = 300;
const LONG_GAP_POINTS = 30;
// Seconds per unit of an interval name; a calendar month counts as its longest, 31 days.
const UNIT_SECONDS = { m: 60, h: 3600, D: 86400, M: 31 * 86400 };

const state = {
  market: null, period: "1D", bars: [], points: [], loadingOlder: false, exhausted: false,
  socket: null, liveUpdates: 0, generation: 0, precision: 2, coverage: null,
};
const STRIP = { complete: "rgba(38,166,154,0.7)", missing: "#ef5350", repairing: "#f5a623", unknown: "#2a2e39" };
const COVERAGE_REFRESH_MS = 30000;
window.cfrChart = {
  state,
  scrollBack: () => chart.timeScale().setVisibleLogicalRange({ from: 0, to: 60 }),
  barCount: () => candles.data().length,  // series.data() leaves whitespace out
  lastBar: () => { const d = candles.data(); return d.length ? d[d.length - 1] : null; },
  coverage: () => state.coverage,
  visibleRange: () => chart.timeScale().getVisibleRange(),
  priceRange: () => chart.priceScale("right").getVisibleRange(),
  seriesData: () => state.points,
  averageData: () => average.data(),
};

const el = (id) => document.getElementById(id);
const setStatus = (text, isError) => { const s = el("status"); s.textContent = text; s.className = "status-line" + (isError ? " error" : ""); };

const chart = LightweightCharts.createChart(el("chart"), {
  autoSize: true,
  layout: { background: { color: "#131722" }, textColor: "#d1d4dc" },
  grid: { vertLines: { color: "#1f2430" }, horzLines: { color: "#1f2430" } },
  timeScale: { timeVisible: true, secondsVisible: false },
  rightPriceScale: { scaleMargins: { top: 0.05, bottom: 0.25 } },
});
const candles = chart.addSeries(LightweightCharts.CandlestickSeries, {
  upColor: "#26a69a", downColor: "#ef5350", borderVisible: false, wickUpColor: "#26a69a", wickDownColor: "#ef5350",
});
const volume = chart.addSeries(LightweightCharts.HistogramSeries, { priceFormat: { type: "volume" }, priceScaleId: "volume" });
volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
const average = chart.addSeries(LightweightCharts.LineSeries, { color: "#f5c542", lineWidth: 1, priceLineVisible: false, lastValueVisible: false });

function decimals(text) { const i = text.indexOf("."); return i < 0 ? 0 : text.replace(/0+$/, "").length - i - 1; }

// The API sends exact decimal text; the chart only draws, so numbers are fine here.
function toPoint(bar) {
  return { time: bar.time / 1000, open: +bar.open, high: +bar.high, low: +bar.low, close: +bar.close, volume: +bar.volume, up: +bar.close >= +bar.open };
}
function volumePoint(p) { return { time: p.time, value: p.volume, color: p.up ? "rgba(38,166,154,0.5)" : "rgba(239,83,80,0.5)" }; }
function averageSeries(points) {
  const out = []; let sum = 0;
  points.forEach((p, i) => { sum += p.close; if (i >= MA_LENGTH) sum -= points[i - MA_LENGTH].close; if (i >= MA_LENGTH - 1) out.push({ time: p.time, value: sum / MA_LENGTH }); });
  return out;
}

function intervalSeconds(name) {
  const [, count, unit] = name.match(/^(\d+)([mhDM])$/);
  return Number(count) * UNIT_SECONDS[unit];
}
// Each period's bar width, worked out once (gap checks run for every bar of every redraw).
const BAR_SECONDS = Object.fromEntries(Object.entries(PERIODS).map(([name, p]) => [name, intervalSeconds(p.interval)]));
const barSeconds = () => BAR_SECONDS[state.period];
const isGap = (time, next) => next - time > barSeconds();

// Times of the whitespace points standing for the bars missing between `time` and `next`.
function gapTimes(time, next) {
  const width = barSeconds(), missing = Math.ceil((next - time) / width) - 1;
  if (missing <= MAX_FILLED_BARS) return Array.from({ length: missing }, (_, k) => time + (k + 1) * width);
  const spacing = (next - time) / (LONG_GAP_POINTS + 1);
  return Array.from({ length: LONG_GAP_POINTS }, (_, k) => Math.round(time + (k + 1) * spacing));
}

// The bars split where a gap falls between two of them.
function runs(bars) {
  const out = [];
  bars.forEach((bar, i) => {
    if (i === 0 || isGap(bars[i - 1].time, bar.time)) out.push([]);
    out[out.length - 1].push(bar);
  });
  return out;
}

// The candles' data: the bars, with whitespace across every gap.
function seriesPoints(bars) {
  const out = [];
  bars.forEach((bar, i) => {
    const previous = bars[i - 1];
    if (previous && isGap(previous.time, bar.time)) gapTimes(previous.time, bar.time).forEach((time) => out.push({ time }));
    out.push(bar);
  });
  return out;
}

// The moving average of each run on its own, so it restarts after a gap. A line series joins its
// points across whitespace, so each run's last point is transparent: the segment from it is too.
function averagePoints(bars) {
  return runs(bars).flatMap((run, i, all) => {
    const points = averageSeries(run);
    if (i < all.length - 1 && points.length) points[points.length - 1].color = "transparent";
    return points;
  });
}

// state.points: the candles' data as set, whitespace included (series.data() leaves it out).
// The volume and the average need no whitespace: the candles' points span the time scale.
function drawAll() {
  const bars = state.bars;
  state.points = seriesPoints(bars);
  candles.setData(state.points);
  volume.setData(bars.map(volumePoint));
  average.setData(averagePoints(bars));
}

async function fetchBars(params) {
  const m = state.market;
  const query = new URLSearchParams({ exchange: m.exchange, base_id: m.base_id, quote_id: m.quote_id, interval: PERIODS[state.period].interval, limit: PAGE, ...params });
  const response = await fetch("/api/ohlcvs?" + query);
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function setPrecision(bars) {
  const digits = Math.min(10, Math.max(2, ...bars.slice(-50).map((b) => decimals(b.close))));
  if (digits !== state.precision) {
    state.precision = digits;
    candles.applyOptions({ priceFormat: { type: "price", precision: digits, minMove: Math.pow(10, -digits) } });
  }
}

// The initial view: the period up to the newest bar. Set by index (the time scale's own unit), so
// older bars on the first page stay out of view and out of the price autoscale.
function showPeriod() {
  const points = state.points;
  if (!points.length) return;
  const last = points.length - 1;
  const start = points[last].time - PERIODS[state.period].span / 1000;
  chart.timeScale().setVisibleLogicalRange({ from: points.findIndex((p) => p.time >= start), to: last });
}

async function loadHistory() {
  const generation = ++state.generation;
  state.bars = []; state.exhausted = false; drawAll();
  setStatus("loading history…");
  try {
    const bars = await fetchBars({});
    if (generation !== state.generation) return;
    setPrecision(bars);
    state.bars = bars.map(toPoint);
    state.exhausted = bars.length < PAGE;
    drawAll();
    showPeriod();
    setStatus(`${state.bars.length} bars · ${PERIODS[state.period].interval} · live`);
    state.coverage = null;
    loadCoverage();
  } catch (error) {
    setStatus(String(error.message || error), true);
  }
  subscribeLive();
}

async function loadOlder() {
  if (state.loadingOlder || state.exhausted || !state.bars.length) return;
  state.loadingOlder = true;
  const generation = state.generation;
  try {
    const oldest = state.bars[0].time * 1000;
    const bars = await fetchBars({ end: oldest - 1 });
    if (generation !== state.generation) return;
    state.exhausted = bars.length < PAGE;
    if (bars.length) {
      state.bars = bars.map(toPoint).concat(state.bars);
      const range = chart.timeScale().getVisibleLogicalRange(), before = state.points.length;
      drawAll();
      const added = state.points.length - before;  // the bars and any whitespace before the old first bar
      if (range) chart.timeScale().setVisibleLogicalRange({ from: range.from + added, to: range.to + added });
      loadCoverage();
    }
  } catch (error) {
    setStatus(String(error.message || error), true);
  } finally {
    state.loadingOlder = false;
  }
}

chart.timeScale().subscribeVisibleLogicalRangeChange((range) => { if (range && range.from < 10) loadOlder(); drawCoverage(); });

// The strip under the candles: for the span from each bar to the next, whether the history there is
// complete, missing or being repaired (GET /api/coverage; ranges are ms, half-open).
const overlaps = (ranges, a, b) => ranges.some(([s, e]) => s < b && e > a);
const inside = (ranges, a, b) => ranges.some(([s, e]) => s <= a && e >= b);

function spanState(cov, a, b) {
  if (overlaps(cov.repairing, a, b)) return "repairing";
  if (overlaps(cov.missing, a, b)) return "missing";
  return inside(cov.covered, a, b) ? "complete" : "unknown";
}

function drawCoverage() {
  const canvas = el("coverage");
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const cov = state.coverage, bars = state.bars, scale = chart.timeScale();
  if (!cov || !bars.length) return;
  const plot = scale.width();  // the candles' area, without the price scale
  const step = barSeconds();
  const half = (scale.logicalToCoordinate(1) - scale.logicalToCoordinate(0)) / 2;  // by index: whitespace may lie between bars
  for (let i = 0; i < bars.length; i += 1) {
    const x = scale.timeToCoordinate(bars[i].time);
    if (x === null || x < -half || x > plot + half) continue;
    const next = i + 1 < bars.length ? bars[i + 1].time : bars[i].time + step;
    const nextX = i + 1 < bars.length ? scale.timeToCoordinate(next) : x + 2 * half;
    const left = Math.max(0, x - half), right = Math.min(plot, (nextX ?? x + 2 * half) - half);
    if (right <= left) continue;
    ctx.fillStyle = STRIP[spanState(cov, bars[i].time * 1000, next * 1000)];
    ctx.fillRect(left, 0, Math.max(1, right - left), height);
  }
}

async function loadCoverage() {
  const m = state.market;
  if (!m || !state.bars.length) return;
  const generation = state.generation;
  const query = new URLSearchParams({ exchange: m.exchange, base_id: m.base_id, quote_id: m.quote_id, start: state.bars[0].time * 1000 });
  try {
    const response = await fetch("/api/coverage?" + query);
    if (!response.ok || generation !== state.generation) return;
    state.coverage = await response.json();
    drawCoverage();
  } catch (error) { /* the strip is a hint; the chart goes on without it */ }
}
setInterval(loadCoverage, COVERAGE_REFRESH_MS);
window.addEventListener("resize", drawCoverage);

// A live bar after a gap needs whitespace before it and ends a run of the average: draw it all
// again, following the newest bar if it was in view, as update() does.
function redrawAfterGap() {
  const scale = chart.timeScale(), range = scale.getVisibleLogicalRange(), before = state.points.length;
  drawAll();
  const added = state.points.length - before;
  if (range && range.to >= before - 1) scale.setVisibleLogicalRange({ from: range.from + added, to: range.to + added });
  else if (range) scale.setVisibleLogicalRange(range);
}

function applyLive(bar) {
  const point = toPoint(bar);
  const bars = state.bars;
  const last = bars[bars.length - 1];
  if (last && point.time < last.time) return;
  const same = last && point.time === last.time;
  if (same) bars[bars.length - 1] = point; else bars.push(point);
  if (last && isGap(last.time, point.time)) redrawAfterGap();
  else {
    if (same) state.points[state.points.length - 1] = point; else state.points.push(point);
    candles.update(point);
    volume.update(volumePoint(point));
    const tail = runs(bars.slice(-MA_LENGTH)).pop();
    if (tail.length === MA_LENGTH) average.update(averageSeries(tail)[0]);
  }
  state.liveUpdates += 1;
}

function subscription() {
  const m = state.market;
  return { data_type: "ohlcv", exchange: m.exchange, base_id: m.base_id, quote_id: m.quote_id, interval: PERIODS[state.period].interval, mls: true };
}

function subscribeLive() {
  if (state.socket) { state.socket.onclose = null; state.socket.close(); }
  const wanted = subscription();
  const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/api/ohlcvs");
  state.socket = socket;
  socket.onopen = () => socket.send(JSON.stringify({ event_type: "subscribe", ...wanted }));
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.detail) { setStatus(message.detail, true); return; }
    if (message.event_type) return;  // acknowledgements and heartbeats
    if (message.exchange === wanted.exchange && message.base_id === wanted.base_id && message.quote_id === wanted.quote_id && message.interval === wanted.interval) applyLive(message);
  };
  socket.onclose = () => { if (state.socket === socket) setTimeout(() => { if (state.socket === socket) subscribeLive(); }, 2000); };
}

function writeUrl() {
  const m = state.market;
  const query = new URLSearchParams({ exchange: m.exchange, base: m.base_id, quote: m.quote_id, period: state.period });
  history.replaceState(null, "", "?" + query);
  el("market-name").textContent = `${m.exchange} ${m.base_id}/${m.quote_id}`;
  document.querySelectorAll("#periods button").forEach((b) => b.classList.toggle("active", b.dataset.period === state.period));
}

function show(market, period) {
  state.market = market; state.period = period;
  writeUrl();
  loadHistory();
}

async function start() {
  const periods = el("periods");
  Object.keys(PERIODS).forEach((name) => {
    const button = document.createElement("button");
    button.textContent = name; button.dataset.period = name;
    button.onclick = () => show(state.market, name);
    periods.appendChild(button);
  });
  const response = await fetch("/api/symbol-exchange");
  const markets = response.ok ? await response.json() : [];
  const label = (m) => `${m.exchange} ${m.base_id}/${m.quote_id}`;
  const byLabel = new Map(markets.map((m) => [label(m), m]));
  const list = el("markets");
  markets.forEach((m) => { const o = document.createElement("option"); o.value = label(m); o.label = m.symbol; list.appendChild(o); });
  el("search").addEventListener("change", (event) => { const m = byLabel.get(event.target.value.trim()); if (m) { show(m, state.period); event.target.value = ""; } });
  const params = new URLSearchParams(location.search);
  const period = PERIODS[params.get("period")] ? params.get("period") : "1D";
  let market = markets.find((m) => m.exchange === params.get("exchange") && m.base_id === params.get("base") && m.quote_id === params.get("quote"));
  if (!market && params.get("exchange")) market = { exchange: params.get("exchange"), base_id: params.get("base"), quote_id: params.get("quote") };
  market = market || markets.find((m) => m.is_trading) || markets[0];
  if (!market) { setStatus(response.ok ? "no markets yet: fill symbol_exchange first" : "cannot list markets", true); return; }
  show(market, period);
}

start();
