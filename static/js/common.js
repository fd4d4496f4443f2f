// Shared by every page (an ES module; the pages' own modules import it): the theme switch, toasts and JSON calls to
// our API. Text only: nothing here parses HTML.

export const store = {
  get(key) {
    try { return window.localStorage.getItem(key); } catch { return null; }
  },
  set(key, value) {
    try { window.localStorage.setItem(key, value); } catch { /* storage blocked: not remembered */ }
  },
};

// --- theme ----------------------------------------------------------------------------------------------------
function currentTheme() {
  return document.documentElement.getAttribute("data-theme") === "light" ? "light" : "dark";
}

function showTheme() {
  const button = document.getElementById("theme-toggle");
  if (!button) return;
  const other = currentTheme() === "dark" ? "light" : "dark";
  button.setAttribute("aria-label", `Switch to the ${other} theme`);
  button.title = `Switch to the ${other} theme`;
}

function toggleTheme() {
  const next = currentTheme() === "dark" ? "light" : "dark";
  document.documentElement.setAttribute("data-theme", next);
  store.set("xrv.theme", next);
  showTheme();
}

// --- toasts ---------------------------------------------------------------------------------------------------
const MAX_TOASTS = 5;

/** A short message in the corner. kind: info, success, error or alert; onClick makes it a button. */
export function toast(message, kind = "info", options = {}) {
  const box = document.getElementById("toasts");
  if (!box) return null;
  const el = document.createElement(options.onClick ? "button" : "div");
  if (options.onClick) el.type = "button";
  el.className = `toast toast-${kind}`;
  el.textContent = String(message);
  if (kind === "error" || kind === "alert") el.setAttribute("role", "alert");
  const remove = () => el.remove();
  el.addEventListener("click", () => {
    if (options.onClick) options.onClick();
    remove();
  });
  box.append(el);
  while (box.childElementCount > MAX_TOASTS) box.firstElementChild.remove();
  const ms = options.ms ?? (kind === "error" || kind === "alert" ? 7000 : 3500);
  window.setTimeout(remove, ms);
  return el;
}

// --- API ------------------------------------------------------------------------------------------------------
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

/** fetch() a JSON API route; an answer outside 2xx throws ApiError carrying the server's {"error": "..."}. */
async function request(method, url, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new ApiError("the server cannot be reached", 0);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : `HTTP ${response.status}`;
    throw new ApiError(message, response.status);
  }
  return data;
}

export const getJSON = (url) => request("GET", url);
export const postJSON = (url, body) => request("POST", url, body);

// A module runs once, after the document is parsed, however many pages' modules import it.
showTheme();
document.getElementById("theme-toggle")?.addEventListener("click", toggleTheme);
