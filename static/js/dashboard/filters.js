// The filters: kept in the address bar (a shared link opens the same view) and mirrored by the filter form.

import { getJSON, toast } from "../common.js";
import { titleCase } from "./dom.js";

// Filters the API takes, in the order they appear in the address bar.
export const FILTERS = ["search", "reviewed", "positive", "correct", "region", "status", "diagnostic", "radiologist",
  "severity", "ai_severity", "confidence", "sort"];
const DEFAULTS = { sort: "newest" };
const NO_FILTER = new Set(["", "any", "all"]);
const INTERVAL = /^\s*(\d{1,3})?\s*(-)?\s*(\d{1,3})?\s*$/;

export const form = document.getElementById("filters");

// --- the address bar ------------------------------------------------------------------------------------------
/** Only the values that filter: empty, "any", "all" and defaults are left out. */
function cleanQuery(source) {
  const query = {};
  for (const name of FILTERS) {
    const raw = source[name];
    if (raw === undefined || raw === null) continue;
    const value = String(raw).trim();
    if (NO_FILTER.has(value.toLowerCase()) || value === DEFAULTS[name]) continue;
    query[name] = value;
  }
  return query;
}

/** {query, page} from the address bar. */
export function readUrl() {
  const params = new URLSearchParams(window.location.search);
  const source = {};
  for (const name of FILTERS) if (params.has(name)) source[name] = params.get(name);
  const page = Number.parseInt(params.get("page") || "1", 10);
  return { query: cleanQuery(source), page: page >= 1 ? page : 1 };
}

/** The query string (without "?") for the API and the address bar alike. */
export function searchFor(query, page) {
  const params = new URLSearchParams();
  for (const name of FILTERS) if (query[name] !== undefined) params.set(name, query[name]);
  if (page > 1) params.set("page", String(page));
  return params.toString();
}

export function locationFor(query, page) {
  const search = searchFor(query, page);
  return window.location.pathname + (search ? `?${search}` : "");
}

// --- the filter form ------------------------------------------------------------------------------------------
function control(name) {
  return form.elements.namedItem(name);
}

/** A shared link may carry a value the select does not list (e.g. status=done,error): keep it selectable. */
function ensureOption(select, value) {
  if (value === "" || Array.from(select.options).some((o) => o.value === value)) return;
  select.add(new Option(value, value));
}

export function setControls(query) {
  for (const name of FILTERS) {
    const input = control(name);
    if (!input) continue;
    const value = query[name] ?? DEFAULTS[name] ?? "";
    if (input.tagName === "SELECT") ensureOption(input, value);
    input.value = value;
    input.removeAttribute("aria-invalid");
  }
}

function validInterval(value, high) {
  const m = INTERVAL.exec(value);
  if (!m || (m[1] === undefined && m[3] === undefined)) return false;
  if (!m[2] && m[3] !== undefined) return false; // "5 6"
  const low = m[1] !== undefined ? Number(m[1]) : 0;
  const top = m[3] !== undefined ? Number(m[3]) : (m[2] ? high : low);
  return low <= high && top <= high && low <= top;
}

/** The controls as a query, or null (after a toast) when an interval is not valid; that field is marked. */
export function readControls() {
  const source = {};
  let valid = true;
  for (const name of FILTERS) {
    const input = control(name);
    if (!input) continue;
    const value = input.value.trim();
    if ((name === "severity" || name === "ai_severity" || name === "confidence") && value !== "") {
      if (!validInterval(value, name === "confidence" ? 100 : 10)) {
        input.setAttribute("aria-invalid", "true");
        valid = false;
        continue;
      }
    }
    input.removeAttribute("aria-invalid");
    source[name] = value;
  }
  if (valid) return cleanQuery(source);
  toast("Severities take 0-10 and confidence 0-100: one number or a range such as 3-6, -8 or 2-.", "error");
  return null;
}

/** A select's options from the server's list of values (label(value) shown); what is selected stays selected. */
async function loadChoices(name, url, what, values, label) {
  try {
    const answer = await getJSON(url);
    const select = control(name);
    const chosen = select.value;
    for (const value of values(answer)) {
      if (typeof value !== "string" || !value) continue;
      const existing = Array.from(select.options).find((o) => o.value === value);
      if (existing) existing.textContent = label(value);
      else select.add(new Option(label(value), value));
    }
    select.value = chosen;
  } catch (err) {
    toast(`Could not load the ${what}: ${err.message}`, "error");
  }
}

const listOf = (answer) => (Array.isArray(answer) ? answer : []);

/** The choices of the region, diagnostic and radiologist filters: what the store holds now. */
export function loadFilterChoices() {
  loadChoices("region", "/api/regions", "regions", listOf, titleCase);
  loadChoices("diagnostic", "/api/diagnostics", "diagnoses",
    (answer) => (answer && typeof answer === "object" && !Array.isArray(answer) ? Object.keys(answer) : []),
    (value) => value);
  loadChoices("radiologist", "/api/radiologists", "radiologists", listOf, (value) => value);
}
