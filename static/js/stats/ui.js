// Building blocks of the statistics pages: text-only DOM, rates with their intervals, tables with a CSV download and
// Chart.js charts with a PNG download. Nothing here parses HTML.

/** An element with text or child nodes; props set attributes (class, data-*, aria-*) as strings. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const isRate = (rate) => rate !== null && typeof rate === "object" && Number.isFinite(rate.value);
// The API gives rates to 4 decimals: round that half up to a tenth of a percent (0.9385 -> 93.9), which toFixed
// alone would not (0.9385 * 100 is 93.84999... in binary).
const pct1 = (x) => (Math.round(x * 1000 + 1e-6) / 10).toFixed(1);

/** A rate (a fraction) as "80.0% (67.0–88.8)", its 95% Wilson interval in brackets; "—" when undefined. */
export function rate(value) {
  if (!isRate(value)) return "—";
  const interval = Number.isFinite(value.low) && Number.isFinite(value.high)
    ? ` (${pct1(value.low)}–${pct1(value.high)})` : "";
  return `${pct1(value.value)}%${interval}`;
}

/** A plain number (F1, MCC, seconds) with `digits` decimals; "—" for null. */
export function fixed(value, digits = 2) {
  return Number.isFinite(value) ? value.toFixed(digits) : "—";
}

export function count(value) {
  return Number.isFinite(value) ? String(value) : "—";
}

/** Seconds as "45 s", "12 min", "3.5 h" or "2.1 d". */
export function duration(seconds) {
  if (!Number.isFinite(seconds)) return "—";
  if (seconds < 90) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

/** The summary cards: [label, value, sub?] each. */
export function cards(items) {
  return el("section", { class: "status-cards stats-cards", "aria-label": "Summary" },
    ...items.map(([label, value, sub, key]) => el("article", { class: "stat", "data-stat": key ?? label },
      el("small", {}, label), el("strong", {}, value), sub ? el("small", { class: "sub" }, sub) : null)));
}

// --- downloads ------------------------------------------------------------------------------------------------
function saveHref(href, filename) {
  const link = el("a", { href, download: filename, hidden: "" });
  document.body.append(link);
  link.click();
  link.remove();
}

/** One CSV field: quoted when it holds a quote, a separator or a line break (quotes doubled, RFC 4180). */
export function csvField(value) {
  let text = value === null || value === undefined ? "" : String(value);
  // A spreadsheet would run a cell that starts like a formula: such text gets a leading apostrophe.
  if (/^[=+\-@\t\r]/.test(text) && !/^-?\d/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) || text !== text.trim() ? `"${text.replaceAll('"', '""')}"` : text;
}

export function csvText(headers, rows) {
  return [headers, ...rows].map((row) => row.map(csvField).join(",")).join("\r\n") + "\r\n";
}

function downloadCSV(name, headers, rows) {
  const url = URL.createObjectURL(new Blob([csvText(headers, rows)], { type: "text/csv;charset=utf-8" }));
  saveHref(url, `${name}.csv`);
  window.setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** A titled table of text cells with a "CSV" button downloading exactly what it shows. */
export function table(title, name, headers, rows, caption) {
  const head = el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h))));
  const body = el("tbody", {}, ...rows.map((row) => el("tr", {},
    ...row.map((cell, i) => (i === 0 ? el("th", { scope: "row" }, cell) : el("td", {}, cell))))));
  if (rows.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "No data yet")));
  }
  const button = el("button", { type: "button", class: "outline secondary small-button", "data-csv": name }, "CSV");
  button.addEventListener("click", () => downloadCSV(name, headers, rows));
  return el("article", { class: "stats-table", "data-table": name },
    el("header", { class: "stats-block-head" }, el("strong", {}, title), button),
    caption ? el("p", { class: "muted" }, caption) : null,
    el("div", { class: "overflow-auto" }, el("table", { class: "striped" }, head, body)));
}

// --- charts ---------------------------------------------------------------------------------------------------
const charts = [];
const pending = []; // charts of blocks not yet in the document: Chart measures its parent, so it is made after

/** Draw the charts of the blocks just put in the document. */
export function drawCharts() {
  for (const draw of pending.splice(0)) draw();
}
const PALETTE = ["#4e9af1", "#f17c4e", "#5cc27a", "#c25cc2", "#e8c547", "#47c5e8", "#e84769", "#9a9a9a",
  "#8a6df1", "#6df1b8"];

export const color = (i) => PALETTE[i % PALETTE.length];

/** Drop every chart of the previous render (before the page's blocks are rebuilt). */
export function destroyCharts() {
  while (charts.length) charts.pop().destroy();
}

/** A titled Chart.js chart with a "PNG" button; config is Chart's (type, data, options). */
export function chart(title, name, config) {
  const canvas = el("canvas", { "data-chart": name, role: "img", "aria-label": title });
  const button = el("button", { type: "button", class: "outline secondary small-button", "data-png": name }, "PNG");
  const block = el("article", { class: "stats-chart", "data-chart-block": name },
    el("header", { class: "stats-block-head" }, el("strong", {}, title), button),
    el("div", { class: "chart-box" }, canvas));
  const text = getComputedStyle(document.documentElement).getPropertyValue("--pico-color").trim() || "#ccc";
  const options = {
    animation: false, responsive: true, maintainAspectRatio: false,
    plugins: { legend: { labels: { color: text } } },
    ...config.options,
  };
  pending.push(() => {
    if (!canvas.isConnected) return; // its render failed half-way and was never shown
    const instance = new window.Chart(canvas, { ...config, options });
    charts.push(instance);
    button.addEventListener("click", () => saveHref(instance.toBase64Image("image/png", 1), `${name}.png`));
  });
  return block;
}
