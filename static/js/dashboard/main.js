// The worklist page, wired: filters in the address bar (filters.js), the cards (worklist.js, cards.js), the image
// viewer (viewer.js), keyboard shortcuts (keyboard.js), the header (status.js, chime.js) and the live feed (live.js).
//
// Safety: everything shown comes from DICOM headers, the FHIR server or a model, so it is text. Cards are clones of
// the <template> in dashboard.html filled with textContent; no module here assigns HTML.

import { setupChime } from "./chime.js";
import { $ } from "./dom.js";
import { form, loadFilterChoices, readControls, readUrl, setControls } from "./filters.js";
import { setupKeyboard } from "./keyboard.js";
import { connect } from "./live.js";
import { setupStatus } from "./status.js";
import { openViewer } from "./viewer.js";
import { navigate, onCardClick, pageFor, show, state } from "./worklist.js";

function applyFilters() {
  const query = readControls();
  if (query) navigate(query, 1);
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  applyFilters();
});
form.addEventListener("change", (ev) => {
  if (ev.target.matches("select, input")) applyFilters();
});
$("f-clear").addEventListener("click", () => {
  setControls({});
  navigate({}, 1);
});
const topPager = document.querySelector("[data-pager]");
for (const pager of document.querySelectorAll("[data-pager]")) {
  pager.addEventListener("click", (ev) => {
    const button = ev.target.closest("[data-go]");
    if (!button || button.disabled) return;
    navigate(state.query, pageFor(button.dataset.go));
    if (pager !== topPager) form.scrollIntoView({ block: "start" });
  });
}
$("new-arrivals").addEventListener("click", () => navigate(state.query, 1));
window.addEventListener("popstate", () => {
  const { query, page } = readUrl();
  setControls(query);
  show(query, page);
});

onCardClick(openViewer);
setupKeyboard();
setupStatus();
setupChime();

const initial = readUrl();
setControls(initial.query);
show(initial.query, initial.page); // the worklist first: it is what the radiologist waits for
loadFilterChoices();
connect();
