// A statistics page: draws its blocks from the API, and again (at most every 2 s) when /ws says a figure changed.

// Chart.js's UMD build, run as a module, defines window.Chart (a module's `this` is undefined, so it picks
// globalThis): the page keeps every script a module, as the CSP and the other pages do.
import "../../vendor/chartjs/chart.umd.min.js";
import { toast } from "../common.js";
import { PAGES } from "./pages.js";
import { destroyCharts, drawCharts } from "./ui.js";

const EVENTS = new Set(["new_exam", "radreview", "radcheck", "requeue", "resync"]);
const MIN_GAP_MS = 2000;
const root = document.getElementById("stats-root");
const build = PAGES[document.body.dataset.page];
const state = { loading: false, again: false, last: 0, timer: null, attempt: 0 };

async function load() {
  if (state.loading) {
    state.again = true;
    return;
  }
  state.loading = true;
  state.last = Date.now();
  try {
    const blocks = await build();
    destroyCharts();
    root.replaceChildren(...blocks);
    drawCharts();
    root.dataset.loaded = String(Number(root.dataset.loaded ?? 0) + 1);
  } catch (error) {
    toast(`Statistics could not be loaded: ${error.message}`, "error");
  } finally {
    state.loading = false;
    if (state.again) {
      state.again = false;
      soon();
    }
  }
}

/** Reload once, no sooner than MIN_GAP_MS after the last load; events in between are folded into it. */
function soon() {
  if (state.timer !== null) return;
  const wait = Math.max(0, state.last + MIN_GAP_MS - Date.now());
  state.timer = window.setTimeout(() => {
    state.timer = null;
    load();
  }, wait);
}

function setLive(name, label) {
  const out = document.getElementById("live-state");
  if (!out) return;
  out.dataset.state = name;
  out.textContent = label;
}

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  let ws;
  try {
    ws = new WebSocket(`${scheme}//${window.location.host}/ws`);
  } catch {
    reconnect();
    return;
  }
  ws.addEventListener("message", (msg) => {
    let frame;
    try { frame = JSON.parse(msg.data); } catch { return; }
    if (frame === null || typeof frame !== "object") return;
    state.attempt = 0;
    setLive("live", "live");
    const name = frame.event && typeof frame.event.name === "string" ? frame.event.name : null;
    if (name && EVENTS.has(name)) soon();
  });
  ws.addEventListener("close", reconnect);
}

function reconnect() {
  const delay = Math.min(30000, 1000 * 2 ** state.attempt);
  state.attempt += 1;
  setLive("offline", "offline, retrying");
  // What changed while offline is read afresh on the way back.
  window.setTimeout(() => { connect(); soon(); }, delay);
}

if (root && build) {
  load();
  connect();
}
