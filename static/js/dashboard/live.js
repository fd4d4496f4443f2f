// The /ws live feed: every frame updates the header; its event (if any) updates the worklist. Reconnects with a
// backoff and asks for what it missed (?last_id=).

import { toast } from "../common.js";
import { isExam } from "./cards.js";
import { playChime } from "./chime.js";
import { $, isObject, num } from "./dom.js";
import { updateHeader } from "./status.js";
import { arrived, cardOf, load, refreshSoon, setCurrent, updateCard } from "./worklist.js";

const BACKOFF_FIRST = 1000;
const BACKOFF_MAX = 30000;

const live = { ws: null, attempt: 0, timer: null, lastEventId: null };

function setLiveState(name, label) {
  const out = $("live-state");
  out.dataset.state = name;
  out.textContent = label;
}

export function connect() {
  window.clearTimeout(live.timer);
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const suffix = live.lastEventId !== null ? `?last_id=${live.lastEventId}` : "";
  let ws;
  try {
    ws = new WebSocket(`${scheme}//${window.location.host}/ws${suffix}`);
  } catch {
    scheduleReconnect();
    return;
  }
  live.ws = ws;
  setLiveState("connecting", "connecting…");
  ws.addEventListener("message", (msg) => {
    if (live.ws === ws) handleMessage(msg.data);
  });
  ws.addEventListener("close", () => {
    if (live.ws !== ws) return;
    live.ws = null;
    scheduleReconnect();
  });
}

function scheduleReconnect() {
  const delay = Math.min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** live.attempt) * (0.85 + Math.random() * 0.3);
  live.attempt += 1;
  setLiveState("offline", `offline, retrying in ${Math.round(delay / 1000)} s`);
  live.timer = window.setTimeout(connect, delay);
}

function isFrame(frame) {
  return isObject(frame) && isObject(frame.dashboard) && isObject(frame.openai) &&
    (frame.event === undefined || (isObject(frame.event) && typeof frame.event.name === "string" &&
      isObject(frame.event.payload ?? {})));
}

/** One /ws message. Anything that is not a frame of the contract's shape is ignored. */
function handleMessage(data) {
  let frame;
  try {
    frame = JSON.parse(data);
  } catch {
    return;
  }
  if (!isFrame(frame)) return;
  live.attempt = 0; // a real frame: the connection is good, the next drop starts the backoff afresh
  setLiveState("live", "live");
  updateHeader(frame);
  if (frame.event) handleEvent(frame.event);
}

function handleEvent(event) {
  const payload = isObject(event.payload) ? event.payload : {};
  const id = Number.isInteger(event.id) ? event.id : null;
  if (event.name === "connected") {
    // The first connection starts counting from here; after a reconnect the replay follows this frame.
    if (live.lastEventId === null && id !== null) live.lastEventId = id;
    return;
  }
  if (id !== null && (live.lastEventId === null || id > live.lastEventId)) live.lastEventId = id;
  const uid = typeof payload.uid === "string" ? payload.uid : null;
  switch (event.name) {
    case "resync":
      load();
      break;
    case "stored":
      arrived(uid);
      break;
    case "new_exam": {
      arrived(uid);
      const positive = payload.positive === true || payload.positive === 1;
      const reviewed = payload.reviewed === true || payload.reviewed === 1;
      if (positive && !reviewed) {
        const severity = num(payload.severity);
        toast(`New positive exam${severity !== null && severity >= 0 ? `, severity ${severity}/10` : ""}`, "alert", {
          onClick: () => { if (uid && cardOf(uid)) setCurrent(uid, true); },
        });
        playChime();
      }
      break;
    }
    case "radreview":
      if (isExam(payload)) updateCard(payload);
      break;
    case "processing_start":
    case "error":
    case "ignore":
    case "requeue":
    case "radreport":
    case "radcheck":
      if (uid && cardOf(uid)) refreshSoon(uid);
      break;
    default:
      break;
  }
}
