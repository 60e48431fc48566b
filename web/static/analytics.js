// Analytics: return tables with histograms and the top-20 quoted volume chart, drawn as plain SVG.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const el = (id) => document.getElementById(id);
const percent = (text) => (Number(text) * 100).toFixed(3) + " %";
const chartLink = (r) => `/view/wschart?exchange=${encodeURIComponent(r.exchange)}&base=${encodeURIComponent(r.base_id)}&quote=${encodeURIComponent(r.quote_id)}&period=1M`;

function svgNode(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function table(target, rows, column) {
  const t = el(target);
  t.innerHTML = "<tr><th>Exchange</th><th>Market</th><th class='num'>Return</th></tr>";
  rows.forEach((r) => {
    const tr = document.createElement("tr");
    const value = Number(r[column]);
    tr.innerHTML = `<td>${r.exchange}</td><td><a href="${chartLink(r)}">${r.base_id}/${r.quote_id}</a></td>` +
      `<td class="num ${value >= 0 ? "ok" : "down"}">${percent(r[column])}</td>`;
    t.appendChild(tr);
  });
}

function histogram(target, values, bins = 20) {
  const box = el(target);
  box.innerHTML = "";
  if (!values.length) { box.textContent = "no data yet"; return; }
  const lo = Math.min(...values), hi = Math.max(...values);
  const width = (hi - lo) / bins || 1;
  const counts = new Array(bins).fill(0);
  values.forEach((v) => { counts[Math.min(bins - 1, Math.floor((v - lo) / width))] += 1; });
  const W = 400, H = 140, top = Math.max(...counts);
  const svg = svgNode("svg", { viewBox: `0 0 ${W} ${H + 20}`, width: "100%" });
  counts.forEach((c, i) => {
    const h = (c / top) * H, x = (i * W) / bins;
    const mid = lo + (i + 0.5) * width;
    svg.appendChild(svgNode("rect", { x: x + 1, y: H - h, width: W / bins - 2, height: h, fill: mid >= 0 ? "#26a69a" : "#ef5350" }));
  });
  svg.appendChild(svgNode("text", { x: 0, y: H + 14 }, percent(lo)));
  svg.appendChild(svgNode("text", { x: W, y: H + 14, "text-anchor": "end" }, percent(hi)));
  box.appendChild(svg);
}

function bars(target, rows) {
  const box = el(target);
  box.innerHTML = "";
  if (!rows.length) { box.textContent = "no data yet"; return; }
  const W = 560, row = 22, labelWidth = 190, top = Math.max(...rows.map((r) => Number(r.quoted_vol)));
  const svg = svgNode("svg", { viewBox: `0 0 ${W} ${rows.length * row}`, width: "100%" });
  rows.forEach((r, i) => {
    const w = (Number(r.quoted_vol) / top) * (W - labelWidth - 90);
    svg.appendChild(svgNode("text", { x: 0, y: i * row + 15 }, `${r.exchange} ${r.base_id}/${r.quote_id}`));
    svg.appendChild(svgNode("rect", { x: labelWidth, y: i * row + 4, width: Math.max(1, w), height: row - 8, fill: "#2962ff" }));
    svg.appendChild(svgNode("text", { x: labelWidth + w + 6, y: i * row + 15 }, Number(r.quoted_vol).toExponential(3)));
  });
  box.appendChild(svg);
}

async function getJson(path) {
  const response = await fetch(path);
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

async function start() {
  try {
    const [geodr, wr, top] = await Promise.all([
      getJson("/api/analytics/geodr?limit=-1"), getJson("/api/analytics/wr?limit=-1"), getJson("/api/analytics/top20qvlm"),
    ]);
    table("geodr", geodr, "geo_daily_return");
    histogram("geodr-hist", geodr.map((r) => Number(r.geo_daily_return)));
    table("wr", wr, "weekly_return");
    histogram("wr-hist", wr.map((r) => Number(r.weekly_return)));
    bars("top20", top);
    window.cfrAnalytics = { geodr: geodr.length, wr: wr.length, top: top.length };
  } catch (error) {
    el("status").textContent = String(error.message || error);
    el("status").className = "status-line error";
  }
}

start();
