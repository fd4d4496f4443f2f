// The header of the worklist: queue and processing counts, the model endpoints' badge, the next PACS query and the
// manual query form. Fed by every /ws frame.

import { postJSON, toast } from "../common.js";
import { $, el, isObject, num, text } from "./dom.js";

const state = { nextQuery: null };

function setCount(id, value) {
  const n = num(value);
  $(id).textContent = n === null ? "–" : String(n);
  return n;
}

/** A URL as shown on screen: without a password (the server sends none; a reading room has onlookers). */
function shownUrl(value) {
  try {
    const url = new URL(value);
    if (!url.password) return value;
    url.password = "";
    return url.href;
  } catch {
    return value;
  }
}

function clock(iso) {
  const t = typeof iso === "string" ? Date.parse(iso) : Number.NaN;
  return Number.isNaN(t) ? "" : new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** The endpoints of an `openai` block: its `endpoints` list when it has one, else its `health` map. Each is shown
 * by its `label`, the server's word for it in the log too; users' frames carry no URL or error, so none is shown. */
function endpointsOf(openai) {
  if (Array.isArray(openai.endpoints)) {
    return openai.endpoints.filter((e) => isObject(e) && typeof e.name === "string" && e.name).map((e) => ({
      name: e.name,
      label: typeof e.label === "string" && e.label ? e.label : e.name,
      healthy: e.healthy === true,
      url: typeof e.url === "string" ? e.url : "",
      error: typeof e.error === "string" ? e.error.trim() : "",
      since: typeof e.since === "string" ? e.since : "",
    }));
  }
  const health = isObject(openai.health) ? openai.health : {};
  return Object.entries(health).map(([name, ok]) => ({
    name, label: name, healthy: ok === true, url: "", error: "", since: "",
  }));
}

function renderModel(openai) {
  const box = $("ai-health");
  const nodes = [];
  for (const endpoint of endpointsOf(openai)) {
    const badge = el("span", `health ${endpoint.healthy ? "ok" : "down"}`, endpoint.label);
    badge.dataset.endpoint = endpoint.name;
    const since = clock(endpoint.since);
    const why = [endpoint.healthy ? "answering" : "not answering", since && `since ${since}`].filter(Boolean);
    badge.title = [why.join(" "), endpoint.error, endpoint.url && shownUrl(endpoint.url)].filter(Boolean).join(" · ");
    nodes.push(badge);
    if (!endpoint.healthy && endpoint.error) {
      // The last failure's reason, visible: an exam waiting in the queue says why through it.
      const error = el("small", "health-error", since ? `${endpoint.error} (since ${since})` : endpoint.error);
      error.dataset.endpoint = endpoint.name;
      nodes.push(error);
    }
  }
  if (nodes.length) box.replaceChildren(...nodes);
  else box.replaceChildren(el("span", "health off", "not configured"));

  const active = typeof openai.url === "string" ? openai.url : "";
  const url = $("ai-url");
  url.textContent = active ? shownUrl(active) : "";
  url.hidden = !active;
  if (active) url.title = "The endpoint the AI asks now";
}

/** The FHIR link: reachable or not (with the last error), when it last answered, and whether reports are fetched
 * by themselves. Users' frames carry no URL. */
function renderFhir(fhir) {
  const badge = $("fhir-health");
  const error = $("fhir-error");
  if (!isObject(fhir) || fhir.configured !== true) {
    badge.className = "health off";
    badge.textContent = "not configured";
    badge.title = "[fhir] FHIR_URL is empty: no radiologists' reports are fetched";
    error.hidden = true;
    return;
  }
  const reachable = fhir.reachable === true ? "ok" : fhir.reachable === false ? "down" : "unknown";
  badge.className = `health ${reachable}`;
  badge.textContent = { ok: "reachable", down: "unreachable", unknown: "no answer yet" }[reachable]
    + (fhir.enabled === true ? "" : " (on request only)");
  const last = clock(fhir.last_success);
  const next = clock(fhir.next_fetch);
  badge.title = [last && `last answer ${last}`, next && `next round ${next}`,
    typeof fhir.url === "string" && fhir.url && shownUrl(fhir.url)].filter(Boolean).join(" · ");
  const why = reachable === "down" && typeof fhir.last_error === "string" ? fhir.last_error.trim() : "";
  error.textContent = why;
  error.hidden = !why;
}

export function updateHeader(frame) {
  const d = frame.dashboard;
  const queue = setCount("stat-queue", d.queue_size);
  const checks = setCount("stat-checks", d.check_queue_size);
  setCount("stat-processed", d.success_count);
  const errors = setCount("stat-errors", d.error_count);
  $("stat-processing").textContent = typeof d.processing === "string" && d.processing ? d.processing : "Idle";
  const ignored = num(d.ignore_count);
  $("stat-ignored").textContent = ignored ? `${ignored} ignored` : "";
  document.querySelector('[data-stat="errors"]').classList.toggle("alarm", (errors ?? 0) > 0);
  document.querySelector('[data-stat="queue"]').classList.toggle("busy", (queue ?? 0) > 0);
  document.title = `XRayVision (Q:${queue ?? "?"}${checks ? `/C:${checks}` : ""})`;

  renderModel(frame.openai);
  renderFhir(frame.fhir);

  const avg = isObject(frame.timings) ? num(frame.timings.avg_latency) : null;
  $("ai-latency").textContent = avg ? `avg ${avg.toFixed(1)} s` : "";
  state.nextQuery = frame.next_query;
  renderCountdown();
}

function parseWhen(value) {
  const m = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2}))?$/.exec(value);
  if (m) return new Date(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0)).getTime();
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : t;
}

function renderCountdown() {
  const out = $("next-query");
  const value = state.nextQuery;
  if (value === "Disabled") { out.textContent = "Disabled"; return; }
  if (typeof value !== "string" || !value) { out.textContent = "not scheduled"; return; }
  const when = parseWhen(value);
  if (when === null) { out.textContent = text(value); return; }
  const s = Math.round((when - Date.now()) / 1000);
  if (s <= 0) out.textContent = "happening now";
  else if (s < 60) out.textContent = `in ${s} s`;
  else if (s < 3600) out.textContent = `in ${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  else out.textContent = `in ${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function setupStatus() {
  window.setInterval(renderCountdown, 1000);
  const queryForm = $("query-form");
  if (!queryForm) return; // admins only
  queryForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = queryForm.querySelector("button");
    const hours = Number($("query-hours").value);
    button.disabled = true;
    try {
      const answer = await postJSON("/api/dicomquery", { hours });
      toast(isObject(answer) && answer.message ? answer.message : `Querying the last ${hours} h`, "success");
    } catch (err) {
      toast(`Query failed: ${err.message}`, "error");
    } finally {
      button.disabled = false;
    }
  });
}
