// The chime on a new positive exam: off until the reader switches it on (remembered in this browser).

import { store } from "../common.js";
import { $ } from "./dom.js";

const toggle = $("chime-toggle");
const chime = { audio: null, playing: false };

export function playChime() {
  if (!toggle.checked || chime.playing) return;
  if (!chime.audio) {
    chime.audio = new Audio("/static/chime.wav");
    chime.audio.addEventListener("ended", () => { chime.playing = false; });
  }
  chime.playing = true;
  chime.audio.currentTime = 0;
  chime.audio.play().catch(() => { chime.playing = false; });
}

export function setupChime() {
  toggle.checked = store.get("xrv.chime") === "on";
  toggle.addEventListener("change", () => {
    store.set("xrv.chime", toggle.checked ? "on" : "off");
    if (toggle.checked) playChime(); // a preview, and the click lets the browser play sound later
  });
}
