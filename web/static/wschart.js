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

const state = {
  market: null, period: "1D", bars: [], loadingOlder: false, exhausted: false,
  socket: null, liveUpdates: 0, generation: 0, precision: 2, coverage: null,
};
const STRIP = { complete: "rgba(38,166,154,0.7)", missing: "#ef5350", repairing: "#f5a623", unknown: "#2a2e39" };
const COVERAGE_REFRESH_MS = 30000;
window.cfrChart = {
  state,
  scrollBack: () => chart.timeScale().setVisibleLogicalRange({ from: 0, to: 60 }),
  barCount: () => candles.data().length,
  lastBar: () => { const d = candles.data(); return d.length ? d[d.length - 1] : null; },
  coverage: () => state.coverage,
  visibleRange: () => chart.timeScale().getVisibleRange(),
  priceRange: () => chart.priceScale("right").getVisibleRange(),
  seriesData: () => candles.data(),
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

function drawAll() {
  const points = state.bars;
  candles.setData(points);
  volume.setData(points.map(volumePoint));
  average.setData(averageSeries(points));
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
    if (state.bars.length) {
      const last = state.bars[state.bars.length - 1].time;
      const from = Math.max(state.bars[0].time, last - PERIODS[state.period].span / 1000);
      chart.timeScale().setVisibleRange({ from, to: last });
    }
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
      const range = chart.timeScale().getVisibleLogicalRange();
      drawAll();
      if (range) chart.timeScale().setVisibleLogicalRange({ from: range.from + bars.length, to: range.to + bars.length });
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
  const step = PERIODS[state.period].interval === "1m" ? 60 : (bars.length > 1 ? bars[1].time - bars[0].time : 60);
  const half = (bars.length > 1 ? (scale.timeToCoordinate(bars[1].time) - scale.timeToCoordinate(bars[0].time)) : 6) / 2;
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

function applyLive(bar) {
  const point = toPoint(bar);
  const bars = state.bars;
  const last = bars[bars.length - 1];
  if (last && point.time < last.time) return;
  if (last && point.time === last.time) bars[bars.length - 1] = point; else bars.push(point);
  candles.update(point);
  volume.update(volumePoint(point));
  const ma = averageSeries(bars.slice(-MA_LENGTH));
  if (ma.length) average.update(ma[ma.length - 1]);
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
