// The worklist: one page of exams as cards, kept in step with the server, the pager, the card the keyboard acts on
// and the actions (review, look again, fetch the report).

import { getJSON, postJSON, toast } from "../common.js";
import { REVIEW_ACTIONS, buildCard, ignoreReason, isAnalysed, isExam } from "./cards.js";
import { $, isObject, num } from "./dom.js";
import { locationFor, searchFor } from "./filters.js";

const RELOAD_DELAY = 400; // ms: a burst of arrivals costs one refetch
const REFRESH_DELAY = 150; // ms: the events of one exam's change cost one fetch

const list = $("exams");

export const state = {
  query: {}, // the filters in force (only those that filter), page apart
  page: 1,
  pages: 1,
  total: 0,
  exams: new Map(), // uid -> exam object, this page's
  cards: new Map(), // uid -> {key, el}: a card is rebuilt only when its exam changed
  current: null, // uid of the card the keyboard acts on
  arrivals: new Set(), // uids that arrived while another page was shown
};

/** Fires "exam" (detail: the exam object) whenever an exam on this page changed; the viewer follows it. */
export const changes = new EventTarget();

export function examOf(uid) {
  return state.exams.get(uid) ?? null;
}

export function cardOf(uid) {
  const entry = state.cards.get(uid);
  return entry && entry.el.isConnected ? entry.el : null;
}

// --- loading a page of exams ----------------------------------------------------------------------------------
let loadSeq = 0;

export async function load() {
  const seq = ++loadSeq;
  // Pico's aria-busy spinner blocks pointer events: only an empty list (the first load) shows it.
  if (!list.childElementCount) list.setAttribute("aria-busy", "true");
  list.classList.add("loading");
  const search = searchFor(state.query, state.page);
  try {
    const data = await getJSON(`/api/exams${search ? `?${search}` : ""}`);
    if (seq !== loadSeq) return; // a newer load is on its way
    if (!isObject(data) || !Array.isArray(data.exams)) throw new Error("unexpected answer");
    state.total = num(data.total) ?? data.exams.length;
    state.pages = Math.max(1, num(data.pages) ?? 1);
    if (state.page > state.pages) {
      // Past the end (the list shrank, or a stale link): show the last page instead.
      state.page = state.pages;
      window.history.replaceState({ xrv: true }, "", locationFor(state.query, state.page));
      load();
      return;
    }
    render(data.exams);
    if (state.page === 1) showArrivals(true);
  } catch (err) {
    if (seq === loadSeq) toast(`Could not load the worklist: ${err.message}`, "error");
  } finally {
    if (seq === loadSeq) {
      list.removeAttribute("aria-busy");
      list.classList.remove("loading");
    }
  }
}

let reloadTimer = null;
export function reloadSoon() {
  window.clearTimeout(reloadTimer);
  reloadTimer = window.setTimeout(load, RELOAD_DELAY);
}

/** Show `query` at `page`: into the address bar (a new history entry when it differs) and loaded. */
export function navigate(query, page) {
  const target = locationFor(query, page);
  const here = window.location.pathname + window.location.search;
  state.query = query;
  state.page = page;
  if (target !== here) window.history.pushState({ xrv: true }, "", target);
  load();
}

/** The view the address bar names, without a new history entry (the first load, back and forward). */
export function show(query, page) {
  state.query = query;
  state.page = page;
  load();
}

function renderPager() {
  const label = `Page ${state.page} of ${state.pages} · ${state.total} exam${state.total === 1 ? "" : "s"}`;
  for (const pager of document.querySelectorAll("[data-pager]")) {
    pager.querySelector("[data-pager-label]").textContent = label;
    for (const button of pager.querySelectorAll("[data-go]")) {
      const go = button.dataset.go;
      button.disabled = (go === "first" || go === "prev") ? state.page <= 1 : state.page >= state.pages;
    }
  }
}

/** The page a pager button leads to. */
export function pageFor(go) {
  const page = { first: 1, prev: state.page - 1, next: state.page + 1, last: state.pages }[go];
  return Math.min(state.pages, Math.max(1, page));
}

function showArrivals(clear = false) {
  if (clear) state.arrivals.clear();
  const count = state.arrivals.size;
  const button = $("new-arrivals");
  button.hidden = count === 0;
  button.textContent = count ? `${count} new exam${count === 1 ? "" : "s"} · show` : "";
}

// --- cards ----------------------------------------------------------------------------------------------------
function orderedCards() {
  return Array.from(list.querySelectorAll(":scope > .exam"));
}

function render(exams) {
  const active = document.activeElement;
  const focusedUid = active && list.contains(active) ? active.closest(".exam")?.dataset.uid : null;
  const cards = new Map();
  const nodes = [];
  state.exams = new Map();
  for (const exam of exams) {
    if (!isExam(exam) || state.exams.has(exam.uid)) continue;
    const key = JSON.stringify(exam);
    const cached = state.cards.get(exam.uid);
    const node = cached && cached.key === key ? cached.el : buildCard(exam, cached && cached.el);
    cards.set(exam.uid, { key, el: node });
    state.exams.set(exam.uid, exam);
    nodes.push(node);
  }
  state.cards = cards;
  placeChildren(list, nodes);
  $("exams-empty").hidden = nodes.length > 0;
  if (state.current && !cards.has(state.current)) state.current = null;
  markCurrent();
  if (focusedUid && cards.has(focusedUid) && !list.contains(document.activeElement)) {
    cards.get(focusedUid).el.focus({ preventScroll: true });
  }
  renderPager();
}

/** Make `nodes` the children of `parent`, in order, without detaching those already in place: a card under the
 * reader's pointer or focus stays put while the page around it is refreshed. */
function placeChildren(parent, nodes) {
  nodes.forEach((node, index) => {
    const here = parent.children[index];
    if (here !== node) parent.insertBefore(node, here || null);
  });
  while (parent.children.length > nodes.length) parent.lastElementChild.remove();
}

/** Replace one card with the exam's new state; false when it is not on this page. */
export function updateCard(exam) {
  if (!isExam(exam)) return false;
  const old = cardOf(exam.uid);
  if (!old) return false;
  const key = JSON.stringify(exam);
  state.exams.set(exam.uid, exam);
  if (state.cards.get(exam.uid).key !== key) {
    const fresh = buildCard(exam, old);
    const hadFocus = old.contains(document.activeElement);
    old.replaceWith(fresh);
    state.cards.set(exam.uid, { key, el: fresh });
    markCurrent();
    if (hadFocus) fresh.focus({ preventScroll: true });
  }
  changes.dispatchEvent(new CustomEvent("exam", { detail: exam }));
  return true;
}

async function refreshExam(uid) {
  try {
    const exam = await getJSON(`/api/exams/${encodeURIComponent(uid)}`);
    updateCard(exam);
    return exam;
  } catch (err) {
    if (err.status === 404) return null;
    throw err;
  }
}

const pendingRefresh = new Map();
/** Fetch one exam again, shortly: the events of one change (several per exam) cost one request. */
export function refreshSoon(uid) {
  window.clearTimeout(pendingRefresh.get(uid));
  pendingRefresh.set(uid, window.setTimeout(() => {
    pendingRefresh.delete(uid);
    refreshExam(uid).catch(() => { /* the next event or reload catches up */ });
  }, REFRESH_DELAY));
}

/** An exam was stored or analysed: its card refreshed, or the list, or an announcement on another page. */
export function arrived(uid) {
  if (uid && cardOf(uid)) refreshSoon(uid);
  else if (state.page === 1) {
    // Whether a new exam belongs on this view (filters, order) is the server's to say: page 1 is fetched again,
    // once per burst. Cards whose exam did not change are kept as they are, so nothing flickers.
    reloadSoon();
  } else if (uid) {
    state.arrivals.add(uid); // "stored" then "new_exam" for one exam counts once
    showArrivals();
  }
}

// --- actions --------------------------------------------------------------------------------------------------
const ACTIONS = {
  normal: { url: "/api/radreview", body: (uid) => ({ uid, normal: true }), label: "Review", done: "Marked normal" },
  abnormal: { url: "/api/radreview", body: (uid) => ({ uid, normal: false }), label: "Review", done: "Marked abnormal" },
  requeue: { url: "/api/requeue", body: (uid) => ({ uid }), label: "Look again", done: "Queued for another look" },
  getrad: { url: "/api/getrad", body: (uid) => ({ uid }), label: "Fetch report", done: "Report requested" },
};

/** Run `action` on the exam `uid` through the API, then show its new state. */
export async function act(action, uid) {
  const spec = ACTIONS[action];
  if (!spec || !uid) return;
  const exam = examOf(uid);
  if (exam && REVIEW_ACTIONS.has(action) && !isAnalysed(exam)) {
    // The buttons are not there; the keyboard says why instead of asking the server for the impossible.
    toast(ignoreReason(exam), "info");
    return;
  }
  const card = cardOf(uid);
  const buttons = card ? Array.from(card.querySelectorAll(".exam-actions button")) : [];
  buttons.forEach((b) => { b.disabled = true; });
  card?.classList.add("busy");
  try {
    const answer = await postJSON(spec.url, spec.body(uid));
    toast(isObject(answer) && typeof answer.message === "string" && answer.message ? answer.message : spec.done,
      "success");
    await refreshExam(uid);
  } catch (err) {
    toast(`${spec.label} failed: ${err.message}`, "error");
  } finally {
    const now = cardOf(uid);
    if (now) {
      now.classList.remove("busy");
      now.querySelectorAll(".exam-actions button").forEach((b) => { b.disabled = false; });
    }
  }
}

// --- the current card -----------------------------------------------------------------------------------------
function markCurrent() {
  for (const card of list.querySelectorAll(".exam.current")) {
    if (card.dataset.uid !== state.current) card.classList.remove("current");
  }
  const card = state.current && cardOf(state.current);
  if (card) card.classList.add("current");
}

export function setCurrent(uid, focus = false) {
  state.current = uid;
  markCurrent();
  const card = uid && cardOf(uid);
  if (card && focus) {
    card.focus({ preventScroll: true });
    card.scrollIntoView({ block: "nearest" });
  }
}

/** The card `delta` places from the current one becomes current; its uid, or null on an empty page. */
export function move(delta) {
  const cards = orderedCards();
  if (!cards.length) return null;
  const index = cards.findIndex((c) => c.dataset.uid === state.current);
  let next;
  if (index < 0) next = delta > 0 ? 0 : cards.length - 1;
  else next = Math.min(cards.length - 1, Math.max(0, index + delta));
  setCurrent(cards[next].dataset.uid, true);
  return cards[next].dataset.uid;
}

/** Clicks on cards: the thumbnail opens `view(uid)`, the buttons act; any click makes that card current. */
export function onCardClick(view) {
  list.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-action]");
    const card = ev.target.closest(".exam");
    if (!card) return;
    setCurrent(card.dataset.uid);
    if (!button) return;
    if (button.dataset.action === "view") view(card.dataset.uid);
    else act(button.dataset.action, card.dataset.uid);
  });
}
