// The image viewer (a modal <dialog>): zoom with the wheel, the buttons or two fingers, pan by dragging, brightness,
// contrast and invert, and the exam's reports beside the image.

import { aiHeadline, hasIdentityConflict, ignoreReason, isAnalysed, patientLine, radHeadline, whenText } from "./cards.js";
import { $, text, titleCase } from "./dom.js";
import { act, changes, examOf, setCurrent, state } from "./worklist.js";

const ZOOM_MIN = 0.25;
const ZOOM_MAX = 12;

const view = {
  dialog: $("viewer"),
  img: $("viewer-image"),
  stage: $("viewer-stage"),
  brightness: $("viewer-brightness"),
  contrast: $("viewer-contrast"),
  uid: null, // the exam shown
  scale: 1,
  x: 0,
  y: 0,
  invert: false,
  drag: null,
};

function part(name) {
  return view.dialog.querySelector(`[data-viewer="${name}"]`);
}

export const isOpen = () => view.dialog.open;
export const shownUid = () => view.uid;

function fill(exam) {
  const { exam: info, report, patient } = exam;
  if (typeof info.image === "string" && info.image.startsWith("/images/")) {
    if (view.img.getAttribute("src") !== info.image) view.img.src = info.image;
  } else {
    view.img.removeAttribute("src");
  }
  part("patient").textContent = patientLine(patient);
  part("identity").hidden = !hasIdentityConflict(patient);
  part("meta").textContent = [titleCase(info.region), text(info.projection), text(info.protocol), whenText(info)]
    .filter(Boolean).join(" · ");
  const reason = ignoreReason(exam);
  part("reason").textContent = reason;
  part("reason").hidden = !reason;
  part("ai-summary").textContent = aiHeadline(report.ai, text(info.status));
  part("ai-text").textContent = text(report.ai.text);
  const rad = report.rad;
  const hasRad = Boolean(text(rad.text) || text(rad.summary));
  part("rad-summary").hidden = !hasRad;
  part("rad-text").hidden = !hasRad;
  part("rad-summary").textContent = hasRad ? radHeadline(rad) : "";
  part("rad-text").textContent = hasRad ? text(rad.text_en) || text(rad.text) : "";
  part("actions").hidden = !isAnalysed(exam);
  view.dialog.classList.toggle("positive", report.ai.positive === 1);
  view.dialog.classList.toggle("incorrect", report.correct === 0);
}

function applyView() {
  const brightness = Number(view.brightness.value);
  const contrast = Number(view.contrast.value);
  view.img.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
  view.img.style.filter = `brightness(${brightness}%) contrast(${contrast}%)${view.invert ? " invert(1)" : ""}`;
  $("viewer-zoom").textContent = `${Math.round(view.scale * 100)}%`;
  $("viewer-brightness-value").textContent = `${brightness}%`;
  $("viewer-contrast-value").textContent = `${contrast}%`;
  view.dialog.querySelector('[data-viewer-action="invert"]').setAttribute("aria-pressed", String(view.invert));
}

export function resetView() {
  view.scale = 1;
  view.x = 0;
  view.y = 0;
  view.invert = false;
  view.brightness.value = "100";
  view.contrast.value = "100";
  applyView();
}

export function toggleInvert() {
  view.invert = !view.invert;
  applyView();
}

/** Zoom by `factor` keeping the point (px, py), relative to the stage's centre, where it is. */
export function zoomAt(factor, px = 0, py = 0) {
  const scale = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, view.scale * factor));
  const ratio = scale / view.scale;
  view.x = px - (px - view.x) * ratio;
  view.y = py - (py - view.y) * ratio;
  view.scale = scale;
  applyView();
}

/** Show the exam `uid` of this page; the view is reset when it is another exam than the one shown. */
export function openViewer(uid) {
  const exam = examOf(uid);
  if (!exam) return;
  setCurrent(uid);
  const same = view.uid === uid;
  view.uid = uid;
  fill(exam);
  if (!same) resetView();
  if (!view.dialog.open) view.dialog.showModal();
}

function closeViewer() {
  if (view.dialog.open) view.dialog.close();
}

// --- events ---------------------------------------------------------------------------------------------------
changes.addEventListener("exam", (ev) => {
  if (view.uid === ev.detail.uid) fill(ev.detail);
});

view.dialog.addEventListener("close", () => {
  // The close event comes a task after Escape: a key pressed in between (j, k) may have made another card current,
  // and that choice stands; otherwise the card just viewed keeps the focus.
  const uid = view.uid;
  view.uid = null;
  if (uid && state.current === uid) setCurrent(uid, true);
});

view.dialog.addEventListener("click", (ev) => {
  if (ev.target === view.dialog) { closeViewer(); return; } // a click on the backdrop, outside the dialog's box
  const button = ev.target.closest("[data-viewer-action]");
  if (!button) return;
  switch (button.dataset.viewerAction) {
    case "close": closeViewer(); break;
    case "zoom-in": zoomAt(1.25); break;
    case "zoom-out": zoomAt(0.8); break;
    case "reset": resetView(); break;
    case "invert": toggleInvert(); break;
    case "normal": case "abnormal": case "requeue": act(button.dataset.viewerAction, view.uid); break;
    default: break;
  }
});

function stagePoint(ev) {
  const box = view.stage.getBoundingClientRect();
  return [ev.clientX - (box.left + box.width / 2), ev.clientY - (box.top + box.height / 2)];
}

view.stage.addEventListener("wheel", (ev) => {
  ev.preventDefault();
  const [px, py] = stagePoint(ev);
  zoomAt(Math.exp(-ev.deltaY * 0.0015), px, py);
}, { passive: false });

// One pointer drags (mouse, pen or finger); two fingers pinch to zoom around their midpoint.
const pointers = new Map();
let pinch = null;

function pinchState() {
  const [a, b] = Array.from(pointers.values());
  const box = view.stage.getBoundingClientRect();
  return {
    distance: Math.hypot(a.x - b.x, a.y - b.y) || 1,
    px: (a.x + b.x) / 2 - (box.left + box.width / 2),
    py: (a.y + b.y) / 2 - (box.top + box.height / 2),
  };
}

view.stage.addEventListener("pointerdown", (ev) => {
  if (ev.pointerType === "mouse" && ev.button !== 0) return;
  view.stage.setPointerCapture(ev.pointerId);
  pointers.set(ev.pointerId, { x: ev.clientX, y: ev.clientY });
  if (pointers.size === 2) {
    view.drag = null;
    pinch = pinchState();
  } else if (pointers.size === 1) {
    view.drag = { id: ev.pointerId, x: ev.clientX - view.x, y: ev.clientY - view.y };
    view.stage.classList.add("dragging");
  }
});
view.stage.addEventListener("pointermove", (ev) => {
  if (!pointers.has(ev.pointerId)) return;
  pointers.set(ev.pointerId, { x: ev.clientX, y: ev.clientY });
  if (pinch && pointers.size === 2) {
    const now = pinchState();
    zoomAt(now.distance / pinch.distance, now.px, now.py);
    pinch = now;
    return;
  }
  if (!view.drag || view.drag.id !== ev.pointerId) return;
  view.x = ev.clientX - view.drag.x;
  view.y = ev.clientY - view.drag.y;
  applyView();
});
const endDrag = (ev) => {
  pointers.delete(ev.pointerId);
  if (pointers.size < 2) pinch = null;
  if (view.drag && view.drag.id !== ev.pointerId) return;
  view.drag = null;
  view.stage.classList.remove("dragging");
};
view.stage.addEventListener("pointerup", endDrag);
view.stage.addEventListener("pointercancel", endDrag);
view.stage.addEventListener("dblclick", resetView);
view.brightness.addEventListener("input", applyView);
view.contrast.addEventListener("input", applyView);
