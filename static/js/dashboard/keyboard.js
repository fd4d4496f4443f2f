// Keyboard shortcuts (listed in the help dialog, which ? opens): off while the reader types in a field.

import { $ } from "./dom.js";
import { isOpen as viewerOpen, openViewer, resetView, shownUid, toggleInvert, zoomAt } from "./viewer.js";
import { act, cardOf, move, state } from "./worklist.js";

const helpDialog = $("help");
const NOT_TYPING = new Set(["button", "checkbox", "radio", "range", "submit", "reset", "color", "file"]);

function isTyping(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable || target.closest("textarea, select")) return true;
  const input = target.closest("input");
  return Boolean(input && !NOT_TYPING.has(input.type));
}

function toggleHelp() {
  if (helpDialog.open) helpDialog.close();
  else helpDialog.showModal();
}

const VIEWER_KEYS = {
  "+": () => zoomAt(1.25),
  "=": () => zoomAt(1.25),
  "-": () => zoomAt(0.8),
  "0": resetView,
  i: toggleInvert,
  j: () => { const uid = move(1); if (uid) openViewer(uid); },
  k: () => { const uid = move(-1); if (uid) openViewer(uid); },
  n: () => act("normal", shownUid()),
  a: () => act("abnormal", shownUid()),
  l: () => act("requeue", shownUid()),
  "?": toggleHelp,
};

function onKey(ev) {
  if (ev.defaultPrevented || ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing) return;
  if (isTyping(ev.target)) return;
  const key = ev.key;
  if (helpDialog.open) {
    if (key === "?") { ev.preventDefault(); helpDialog.close(); }
    return; // Esc closes a dialog by itself
  }
  if (viewerOpen()) {
    const handled = VIEWER_KEYS[key];
    if (handled) { ev.preventDefault(); handled(); }
    return;
  }
  const card = state.current && cardOf(state.current);
  switch (key) {
    case "j": ev.preventDefault(); move(1); break;
    case "k": ev.preventDefault(); move(-1); break;
    case "n": if (card) { ev.preventDefault(); act("normal", state.current); } break;
    case "a": if (card) { ev.preventDefault(); act("abnormal", state.current); } break;
    case "l": if (card) { ev.preventDefault(); act("requeue", state.current); } break;
    case "Enter": {
      // Enter on a focused button activates that button; on the card (or nowhere) it opens the viewer.
      const active = document.activeElement;
      if (card && (active === card || active === document.body || active === null)) {
        ev.preventDefault();
        openViewer(state.current);
      }
      break;
    }
    case "?": ev.preventDefault(); toggleHelp(); break;
    default: break;
  }
}

export function setupKeyboard() {
  $("help-open").addEventListener("click", toggleHelp);
  helpDialog.querySelector("[data-help-close]").addEventListener("click", () => helpDialog.close());
  helpDialog.addEventListener("click", (ev) => {
    if (ev.target === helpDialog) helpDialog.close();
  });
  document.addEventListener("keydown", onKey);
}
