// The worklist: filters kept in the address bar, exam cards, the image viewer, keyboard shortcuts and the /ws feed.
//
// Safety: everything shown comes from DICOM headers, the FHIR server or a model, so it is text. Cards are clones of
// the <template> in dashboard.html filled with textContent; nothing here assigns HTML.
(() => {
  "use strict";

  const { toast, getJSON, postJSON, store } = window.XRV;
  const $ = (id) => document.getElementById(id);

  // Filters the API takes, in the order they appear in the address bar.
  const FILTERS = ["search", "reviewed", "positive", "correct", "region", "status", "diagnostic", "radiologist",
    "severity", "confidence", "sort"];
  const DEFAULTS = { sort: "newest" };
  const NO_FILTER = new Set(["", "any", "all"]);
  const INTERVAL = /^\s*(\d{1,3})?\s*(-)?\s*(\d{1,3})?\s*$/;
  const RELOAD_DELAY = 400; // ms: a burst of arrivals costs one refetch
  const BACKOFF_FIRST = 1000;
  const BACKOFF_MAX = 30000;

  const form = $("filters");
  const list = $("exams");
  const template = $("exam-card");
  const helpDialog = $("help");

  const state = {
    query: {}, // the filters in force (only those that filter), page apart
    page: 1,
    pages: 1,
    total: 0,
    exams: new Map(), // uid -> exam object, this page's
    cards: new Map(), // uid -> {key, el}: a card is rebuilt only when its exam changed
    current: null, // uid of the card the keyboard acts on
    lastEventId: null, // the last /ws event seen, for ?last_id= on reconnect
    nextQuery: null,
    arrivals: new Set(), // uids that arrived while another page was shown
  };

  // --- small helpers ------------------------------------------------------------------------------------------
  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  const text = (v) => (v === null || v === undefined ? "" : String(v));
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

  function el(tag, className, content) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (content !== undefined) node.textContent = content;
    return node;
  }

  function titleCase(value) {
    return text(value).replace(/_/g, " ").replace(/\b\p{L}/gu, (c) => c.toUpperCase());
  }

  function field(root, name) {
    return root.querySelector(`[data-field="${name}"]`);
  }

  // --- the address bar ----------------------------------------------------------------------------------------
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

  function readUrl() {
    const params = new URLSearchParams(window.location.search);
    const source = {};
    for (const name of FILTERS) if (params.has(name)) source[name] = params.get(name);
    const page = Number.parseInt(params.get("page") || "1", 10);
    return { query: cleanQuery(source), page: page >= 1 ? page : 1 };
  }

  function searchFor(query, page) {
    const params = new URLSearchParams();
    for (const name of FILTERS) if (query[name] !== undefined) params.set(name, query[name]);
    if (page > 1) params.set("page", String(page));
    return params.toString();
  }

  function locationFor(query, page) {
    const search = searchFor(query, page);
    return window.location.pathname + (search ? `?${search}` : "");
  }

  // --- filter controls ----------------------------------------------------------------------------------------
  function control(name) {
    return form.elements.namedItem(name);
  }

  /** A shared link may carry a value the select does not list (e.g. status=done,error): keep it selectable. */
  function ensureOption(select, value) {
    if (value === "" || Array.from(select.options).some((o) => o.value === value)) return;
    select.add(new Option(value, value));
  }

  function setControls(query) {
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

  /** The controls as a query, or null when an interval is not valid (that field is marked). */
  function readControls() {
    const source = {};
    let valid = true;
    for (const name of FILTERS) {
      const input = control(name);
      if (!input) continue;
      const value = input.value.trim();
      if ((name === "severity" || name === "confidence") && value !== "") {
        if (!validInterval(value, name === "severity" ? 10 : 100)) {
          input.setAttribute("aria-invalid", "true");
          valid = false;
          continue;
        }
      }
      input.removeAttribute("aria-invalid");
      source[name] = value;
    }
    return valid ? cleanQuery(source) : null;
  }

  function applyFilters() {
    const query = readControls();
    if (!query) {
      toast("Severity takes 0-10 and confidence 0-100: one number or a range such as 3-6, -8 or 2-.", "error");
      return;
    }
    navigate(query, 1);
  }

  function navigate(query, page) {
    const target = locationFor(query, page);
    const here = window.location.pathname + window.location.search;
    state.query = query;
    state.page = page;
    if (target !== here) window.history.pushState({ xrv: true }, "", target);
    load();
  }

  async function loadRegions() {
    try {
      const regions = await getJSON("/api/regions");
      if (!Array.isArray(regions)) return;
      const select = control("region");
      const chosen = state.query.region ?? "";
      for (const region of regions) {
        if (typeof region !== "string" || !region) continue;
        const existing = Array.from(select.options).find((o) => o.value === region);
        if (existing) existing.textContent = titleCase(region);
        else select.add(new Option(titleCase(region), region));
      }
      select.value = chosen;
    } catch (err) {
      toast(`Could not load the regions: ${err.message}`, "error");
    }
  }

  // --- loading a page of exams --------------------------------------------------------------------------------
  let loadSeq = 0;

  async function load() {
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
  function reloadSoon() {
    window.clearTimeout(reloadTimer);
    reloadTimer = window.setTimeout(load, RELOAD_DELAY);
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

  function showArrivals(clear = false) {
    if (clear) state.arrivals.clear();
    const count = state.arrivals.size;
    const button = $("new-arrivals");
    button.hidden = count === 0;
    button.textContent = count ? `${count} new exam${count === 1 ? "" : "s"} · show` : "";
  }

  // --- cards --------------------------------------------------------------------------------------------------
  function cardOf(uid) {
    const entry = state.cards.get(uid);
    return entry && entry.el.isConnected ? entry.el : null;
  }

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
  function updateCard(exam) {
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
    if (viewer.uid === exam.uid) fillViewer(exam);
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
  function refreshSoon(uid) {
    window.clearTimeout(pendingRefresh.get(uid));
    pendingRefresh.set(uid, window.setTimeout(() => {
      pendingRefresh.delete(uid);
      refreshExam(uid).catch(() => { /* the next event or reload catches up */ });
    }, 150));
  }

  function isExam(v) {
    return isObject(v) && typeof v.uid === "string" && isObject(v.patient) && isObject(v.exam) &&
      isObject(v.report) && isObject(v.report.ai) && isObject(v.report.rad);
  }

  function patientLine(patient) {
    const parts = [text(patient.name).replace(/\^/g, " ").trim() || "Unnamed patient"];
    if (patient.sex && patient.sex !== "O") parts.push(text(patient.sex));
    const age = num(patient.age);
    if (age !== null && age >= 0) parts.push(`${age} y`);
    return parts.join(" · ");
  }

  function whenText(exam) {
    const d = text(exam.date);
    const t = text(exam.time);
    if (d.length !== 8) return "";
    const day = `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 8)}`;
    return t.length >= 4 ? `${day} ${t.slice(0, 2)}:${t.slice(2, 4)}` : day;
  }

  function aiHeadline(ai, status) {
    const severity = num(ai.severity);
    if (severity === null || severity < 0) {
      if (status === "processing") return "AI: reading now…";
      if (status === "queued" || status === "requeue") return "AI: waiting in the queue";
      if (status === "error") return "AI: no answer (error)";
      if (status === "ignore") return "AI: not analysed";
      return "AI: no report";
    }
    const verdict = text(ai.summary) || (ai.positive === 1 ? "Positive" : "Negative");
    const confidence = num(ai.confidence);
    return `AI: ${verdict} (severity ${severity}/10${confidence !== null && confidence >= 0 ? `, confidence ${confidence}%` : ""})`;
  }

  function radHeadline(rad) {
    const who = text(rad.radiologist) || "Radiologist";
    const severity = num(rad.severity);
    const summary = text(rad.summary) || "report";
    return `${who}: ${summary}${severity !== null && severity >= 0 ? ` (severity ${severity}/10)` : ""}`;
  }

  const STATUS_BADGES = {
    queued: ["queued", "badge-wait"],
    requeue: ["queued again", "badge-wait"],
    processing: ["processing", "badge-busy"],
    error: ["error", "badge-error"],
    ignore: ["ignored", "badge-muted"],
    check: ["check", "badge-wait"],
    none: ["not queued", "badge-muted"],
  };

  function badges(exam) {
    const out = [];
    const status = text(exam.exam.status);
    if (STATUS_BADGES[status]) {
      const [label, cls] = STATUS_BADGES[status];
      const reason = text(exam.exam.reason);
      const badge = el("span", `badge ${cls}`, reason && (status === "error" || status === "ignore") ? `${label}: ${reason}` : label);
      if (reason) badge.title = reason;
      out.push(badge);
    }
    const report = exam.report;
    if (report.ai.positive === 1) out.push(el("span", "badge badge-positive", "positive"));
    if (report.reviewed === 1) {
      const review = isObject(report.review) ? report.review : null;
      const label = review ? `reviewed: ${review.normal ? "normal" : "abnormal"}` : "reviewed";
      out.push(el("span", "badge badge-reviewed", label));
    }
    if (report.correct === 0) out.push(el("span", "badge badge-incorrect", "incorrect"));
    return out;
  }

  function buildCard(exam, previous) {
    const card = template.content.firstElementChild.cloneNode(true);
    const { exam: info, report, patient } = exam;
    const ai = report.ai;
    const rad = report.rad;
    card.dataset.uid = exam.uid;
    const status = text(info.status);
    card.classList.add(`status-${status.replace(/[^a-z]/g, "") || "none"}`);
    if (ai.positive === 1) card.classList.add("positive");
    if (ai.positive === 0) card.classList.add("negative");
    if (report.reviewed === 1) card.classList.add("reviewed");
    if (report.correct === 0) card.classList.add("incorrect");
    const severity = num(ai.severity);
    if (severity !== null && severity >= 0) card.classList.add(`sev-${Math.min(10, Math.round(severity))}`);

    const img = field(card, "image");
    if (typeof info.image === "string" && info.image.startsWith("/images/")) {
      img.src = info.image;
      img.alt = `Radiograph, ${titleCase(info.region) || "region unknown"}`;
    } else {
      img.remove();
      field(card, "image-missing").hidden = false;
      card.querySelector(".thumb").disabled = true;
    }

    field(card, "patient").textContent = patientLine(patient);
    field(card, "badges").replaceChildren(...badges(exam));
    const region = [titleCase(info.region) || "Region unknown", text(info.projection)].filter(Boolean).join(" · ");
    field(card, "region").textContent = region;
    field(card, "protocol").textContent = text(info.protocol);
    const when = field(card, "when");
    when.textContent = whenText(info);
    if (info.created) when.dateTime = text(info.created);

    const ids = [];
    if (patient.cnp) ids.push(`CNP ${text(patient.cnp)}`);
    if (patient.id) ids.push(`HIS ${text(patient.id)}`);
    if (info.id) ids.push(`Acc. ${text(info.id)}`);
    field(card, "ids").textContent = ids.join(" · ");

    field(card, "ai-summary").textContent = aiHeadline(ai, status);
    const aiText = field(card, "ai-text");
    aiText.textContent = text(ai.text);
    aiText.hidden = !ai.text;
    aiText.closest("details").classList.toggle("no-text", !ai.text);

    if (text(rad.text) || text(rad.summary)) {
      const block = field(card, "rad");
      block.hidden = false;
      const radSeverity = num(rad.severity);
      if (radSeverity !== null && radSeverity >= 0) block.classList.add(`sev-${Math.min(10, Math.round(radSeverity))}`);
      field(card, "rad-summary").textContent = radHeadline(rad);
      field(card, "rad-text").textContent = text(rad.text);
      if (rad.justification) {
        const why = field(card, "rad-justification");
        why.hidden = false;
        why.textContent = `Request: ${text(rad.justification)}`;
      }
    }
    if (text(rad.text_en)) {
      field(card, "translation").hidden = false;
      field(card, "rad-text-en").textContent = text(rad.text_en);
    }
    if (isObject(report.review)) {
      const line = field(card, "review");
      line.hidden = false;
      const reviewer = text(report.review.reviewer) || "someone";
      line.textContent = `Reviewed by ${reviewer}: ${report.review.normal ? "normal" : "abnormal"}`;
    }
    // Keep what the reader opened or closed.
    if (previous) {
      for (const cls of ["ai-report", "rad-report", "rad-translation"]) {
        const before = previous.querySelector(`details.${cls}`);
        const after = card.querySelector(`details.${cls}`);
        if (before && after) after.open = before.open;
      }
    }
    return card;
  }

  // --- actions ------------------------------------------------------------------------------------------------
  const ACTIONS = {
    normal: { url: "/api/radreview", body: (uid) => ({ uid, normal: true }), label: "Review", done: "Marked normal" },
    abnormal: { url: "/api/radreview", body: (uid) => ({ uid, normal: false }), label: "Review", done: "Marked abnormal" },
    requeue: { url: "/api/requeue", body: (uid) => ({ uid }), label: "Look again", done: "Queued for another look" },
    getrad: { url: "/api/getrad", body: (uid) => ({ uid }), label: "Fetch report", done: "Report requested" },
  };

  async function act(action, uid) {
    const spec = ACTIONS[action];
    if (!spec || !uid) return;
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

  list.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-action]");
    const card = ev.target.closest(".exam");
    if (!card) return;
    setCurrent(card.dataset.uid);
    if (!button) return;
    if (button.dataset.action === "view") openViewer(card.dataset.uid);
    else act(button.dataset.action, card.dataset.uid);
  });

  // --- keyboard focus -----------------------------------------------------------------------------------------
  function markCurrent() {
    for (const card of list.querySelectorAll(".exam.current")) {
      if (card.dataset.uid !== state.current) card.classList.remove("current");
    }
    const card = state.current && cardOf(state.current);
    if (card) card.classList.add("current");
  }

  function setCurrent(uid, focus = false) {
    state.current = uid;
    markCurrent();
    const card = uid && cardOf(uid);
    if (card && focus) {
      card.focus({ preventScroll: true });
      card.scrollIntoView({ block: "nearest" });
    }
  }

  function move(delta) {
    const cards = orderedCards();
    if (!cards.length) return null;
    const index = cards.findIndex((c) => c.dataset.uid === state.current);
    let next;
    if (index < 0) next = delta > 0 ? 0 : cards.length - 1;
    else next = Math.min(cards.length - 1, Math.max(0, index + delta));
    setCurrent(cards[next].dataset.uid, true);
    return cards[next].dataset.uid;
  }

  // --- viewer -------------------------------------------------------------------------------------------------
  const viewer = {
    dialog: $("viewer"),
    img: $("viewer-image"),
    stage: $("viewer-stage"),
    uid: null,
    scale: 1,
    x: 0,
    y: 0,
    invert: false,
    drag: null,
  };
  const ZOOM_MIN = 0.25;
  const ZOOM_MAX = 12;

  function viewerField(name) {
    return viewer.dialog.querySelector(`[data-viewer="${name}"]`);
  }

  function fillViewer(exam) {
    const { exam: info, report, patient } = exam;
    if (typeof info.image === "string" && info.image.startsWith("/images/")) {
      if (viewer.img.getAttribute("src") !== info.image) viewer.img.src = info.image;
    } else {
      viewer.img.removeAttribute("src");
    }
    viewerField("patient").textContent = patientLine(patient);
    viewerField("meta").textContent = [titleCase(info.region), text(info.projection), text(info.protocol), whenText(info)]
      .filter(Boolean).join(" · ");
    viewerField("ai-summary").textContent = aiHeadline(report.ai, text(info.status));
    viewerField("ai-text").textContent = text(report.ai.text);
    const rad = report.rad;
    const hasRad = Boolean(text(rad.text) || text(rad.summary));
    viewerField("rad-summary").hidden = !hasRad;
    viewerField("rad-text").hidden = !hasRad;
    viewerField("rad-summary").textContent = hasRad ? radHeadline(rad) : "";
    viewerField("rad-text").textContent = hasRad ? text(rad.text_en) || text(rad.text) : "";
    viewer.dialog.classList.toggle("positive", report.ai.positive === 1);
    viewer.dialog.classList.toggle("incorrect", report.correct === 0);
  }

  function applyView() {
    const brightness = Number($("viewer-brightness").value);
    const contrast = Number($("viewer-contrast").value);
    viewer.img.style.transform = `translate(${viewer.x}px, ${viewer.y}px) scale(${viewer.scale})`;
    viewer.img.style.filter = `brightness(${brightness}%) contrast(${contrast}%)${viewer.invert ? " invert(1)" : ""}`;
    $("viewer-zoom").textContent = `${Math.round(viewer.scale * 100)}%`;
    $("viewer-brightness-value").textContent = `${brightness}%`;
    $("viewer-contrast-value").textContent = `${contrast}%`;
    const invert = viewer.dialog.querySelector('[data-viewer-action="invert"]');
    invert.setAttribute("aria-pressed", String(viewer.invert));
  }

  function resetView() {
    viewer.scale = 1;
    viewer.x = 0;
    viewer.y = 0;
    viewer.invert = false;
    $("viewer-brightness").value = "100";
    $("viewer-contrast").value = "100";
    applyView();
  }

  /** Zoom by `factor` keeping the point (px, py), relative to the stage's centre, where it is. */
  function zoomAt(factor, px = 0, py = 0) {
    const scale = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, viewer.scale * factor));
    const ratio = scale / viewer.scale;
    viewer.x = px - (px - viewer.x) * ratio;
    viewer.y = py - (py - viewer.y) * ratio;
    viewer.scale = scale;
    applyView();
  }

  function openViewer(uid) {
    const exam = state.exams.get(uid);
    if (!exam) return;
    setCurrent(uid);
    const same = viewer.uid === uid;
    viewer.uid = uid;
    fillViewer(exam);
    if (!same) resetView();
    if (!viewer.dialog.open) viewer.dialog.showModal();
  }

  function closeViewer() {
    if (viewer.dialog.open) viewer.dialog.close();
  }

  viewer.dialog.addEventListener("close", () => {
    const uid = viewer.uid;
    viewer.uid = null;
    if (uid) setCurrent(uid, true);
  });
  // A click on the backdrop (outside the dialog's box) closes it.
  viewer.dialog.addEventListener("click", (ev) => {
    if (ev.target === viewer.dialog) closeViewer();
  });

  viewer.dialog.addEventListener("click", (ev) => {
    const button = ev.target.closest("[data-viewer-action]");
    if (!button) return;
    switch (button.dataset.viewerAction) {
      case "close": closeViewer(); break;
      case "zoom-in": zoomAt(1.25); break;
      case "zoom-out": zoomAt(0.8); break;
      case "reset": resetView(); break;
      case "invert": viewer.invert = !viewer.invert; applyView(); break;
      case "normal": case "abnormal": case "requeue": act(button.dataset.viewerAction, viewer.uid); break;
      default: break;
    }
  });

  function stagePoint(ev) {
    const box = viewer.stage.getBoundingClientRect();
    return [ev.clientX - (box.left + box.width / 2), ev.clientY - (box.top + box.height / 2)];
  }

  viewer.stage.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const [px, py] = stagePoint(ev);
    zoomAt(Math.exp(-ev.deltaY * 0.0015), px, py);
  }, { passive: false });

  // One pointer drags (mouse, pen or finger); two fingers pinch to zoom around their midpoint.
  const pointers = new Map();
  let pinch = null;

  function pinchState() {
    const [a, b] = Array.from(pointers.values());
    const box = viewer.stage.getBoundingClientRect();
    return {
      distance: Math.hypot(a.x - b.x, a.y - b.y) || 1,
      px: (a.x + b.x) / 2 - (box.left + box.width / 2),
      py: (a.y + b.y) / 2 - (box.top + box.height / 2),
    };
  }

  viewer.stage.addEventListener("pointerdown", (ev) => {
    if (ev.pointerType === "mouse" && ev.button !== 0) return;
    viewer.stage.setPointerCapture(ev.pointerId);
    pointers.set(ev.pointerId, { x: ev.clientX, y: ev.clientY });
    if (pointers.size === 2) {
      viewer.drag = null;
      pinch = pinchState();
    } else if (pointers.size === 1) {
      viewer.drag = { id: ev.pointerId, x: ev.clientX - viewer.x, y: ev.clientY - viewer.y };
      viewer.stage.classList.add("dragging");
    }
  });
  viewer.stage.addEventListener("pointermove", (ev) => {
    if (!pointers.has(ev.pointerId)) return;
    pointers.set(ev.pointerId, { x: ev.clientX, y: ev.clientY });
    if (pinch && pointers.size === 2) {
      const now = pinchState();
      zoomAt(now.distance / pinch.distance, now.px, now.py);
      pinch = now;
      return;
    }
    if (!viewer.drag || viewer.drag.id !== ev.pointerId) return;
    viewer.x = ev.clientX - viewer.drag.x;
    viewer.y = ev.clientY - viewer.drag.y;
    applyView();
  });
  const endDrag = (ev) => {
    pointers.delete(ev.pointerId);
    if (pointers.size < 2) pinch = null;
    if (viewer.drag && viewer.drag.id !== ev.pointerId) return;
    viewer.drag = null;
    viewer.stage.classList.remove("dragging");
  };
  viewer.stage.addEventListener("pointerup", endDrag);
  viewer.stage.addEventListener("pointercancel", endDrag);
  viewer.stage.addEventListener("dblclick", resetView);
  $("viewer-brightness").addEventListener("input", applyView);
  $("viewer-contrast").addEventListener("input", applyView);

  // --- help ---------------------------------------------------------------------------------------------------
  function toggleHelp() {
    if (helpDialog.open) helpDialog.close();
    else helpDialog.showModal();
  }
  $("help-open").addEventListener("click", toggleHelp);
  helpDialog.querySelector("[data-help-close]").addEventListener("click", () => helpDialog.close());
  helpDialog.addEventListener("click", (ev) => {
    if (ev.target === helpDialog) helpDialog.close();
  });

  // --- keyboard -----------------------------------------------------------------------------------------------
  const NOT_TYPING = new Set(["button", "checkbox", "radio", "range", "submit", "reset", "color", "file"]);

  function isTyping(target) {
    if (!(target instanceof Element)) return false;
    if (target.isContentEditable || target.closest("textarea, select")) return true;
    const input = target.closest("input");
    return Boolean(input && !NOT_TYPING.has(input.type));
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.defaultPrevented || ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing) return;
    if (isTyping(ev.target)) return;
    const key = ev.key;
    if (helpDialog.open) {
      if (key === "?") { ev.preventDefault(); helpDialog.close(); }
      return; // Esc closes a dialog by itself
    }
    if (viewer.dialog.open) {
      const handled = {
        "+": () => zoomAt(1.25),
        "=": () => zoomAt(1.25),
        "-": () => zoomAt(0.8),
        "0": resetView,
        i: () => { viewer.invert = !viewer.invert; applyView(); },
        j: () => { const uid = move(1); if (uid) openViewer(uid); },
        k: () => { const uid = move(-1); if (uid) openViewer(uid); },
        n: () => act("normal", viewer.uid),
        a: () => act("abnormal", viewer.uid),
        l: () => act("requeue", viewer.uid),
        "?": toggleHelp,
      }[key];
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
  });

  // --- header: queue, services, countdown ---------------------------------------------------------------------
  function setCount(id, value) {
    const n = num(value);
    $(id).textContent = n === null ? "–" : String(n);
    return n;
  }

  const ENDPOINT_NAMES = { pri: "primary", sec: "secondary" };

  function updateHeader(frame) {
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

    const health = isObject(frame.openai.health) ? frame.openai.health : {};
    const badgesEl = Object.entries(health).map(([name, ok]) => {
      const badge = el("span", `health ${ok === true ? "ok" : "down"}`, ENDPOINT_NAMES[name] || name);
      badge.title = ok === true ? "answering" : "not answering";
      return badge;
    });
    const box = $("ai-health");
    if (badgesEl.length) box.replaceChildren(...badgesEl);
    else box.replaceChildren(el("span", "health off", "not configured"));
    if (typeof frame.openai.url === "string" && frame.openai.url) box.title = `Active: ${frame.openai.url}`;
    else box.removeAttribute("title");

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
    if (when === null) { out.textContent = value; return; }
    const s = Math.round((when - Date.now()) / 1000);
    if (s <= 0) out.textContent = "happening now";
    else if (s < 60) out.textContent = `in ${s} s`;
    else if (s < 3600) out.textContent = `in ${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    else out.textContent = `in ${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }
  window.setInterval(renderCountdown, 1000);

  const queryForm = $("query-form");
  if (queryForm) {
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

  // --- chime --------------------------------------------------------------------------------------------------
  const chimeToggle = $("chime-toggle");
  const chime = { audio: null, playing: false };
  chimeToggle.checked = store.get("xrv.chime") === "on";

  function playChime() {
    if (!chimeToggle.checked || chime.playing) return;
    if (!chime.audio) {
      chime.audio = new Audio("/static/chime.wav");
      chime.audio.addEventListener("ended", () => { chime.playing = false; });
    }
    chime.playing = true;
    chime.audio.currentTime = 0;
    chime.audio.play().catch(() => { chime.playing = false; });
  }

  chimeToggle.addEventListener("change", () => {
    store.set("xrv.chime", chimeToggle.checked ? "on" : "off");
    if (chimeToggle.checked) playChime(); // a preview, and the click lets the browser play sound later
  });

  // --- live feed ----------------------------------------------------------------------------------------------
  const live = { ws: null, attempt: 0, timer: null };

  function setLiveState(name, label) {
    const out = $("live-state");
    out.dataset.state = name;
    out.textContent = label;
  }

  function connect() {
    window.clearTimeout(live.timer);
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const suffix = state.lastEventId !== null ? `?last_id=${state.lastEventId}` : "";
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

  function arrived(uid) {
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

  function handleEvent(event) {
    const payload = isObject(event.payload) ? event.payload : {};
    const id = Number.isInteger(event.id) ? event.id : null;
    if (event.name === "connected") {
      // The first connection starts counting from here; after a reconnect the replay follows this frame.
      if (state.lastEventId === null && id !== null) state.lastEventId = id;
      return;
    }
    if (id !== null && (state.lastEventId === null || id > state.lastEventId)) state.lastEventId = id;
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

  // --- wiring -------------------------------------------------------------------------------------------------
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
  for (const pager of document.querySelectorAll("[data-pager]")) {
    pager.addEventListener("click", (ev) => {
      const button = ev.target.closest("[data-go]");
      if (!button || button.disabled) return;
      const go = button.dataset.go;
      const page = { first: 1, prev: state.page - 1, next: state.page + 1, last: state.pages }[go];
      navigate(state.query, Math.min(state.pages, Math.max(1, page)));
      if (pager !== document.querySelector("[data-pager]")) form.scrollIntoView({ block: "start" });
    });
  }
  $("new-arrivals").addEventListener("click", () => navigate(state.query, 1));
  window.addEventListener("popstate", () => {
    const { query, page } = readUrl();
    state.query = query;
    state.page = page;
    setControls(query);
    load();
  });

  const initial = readUrl();
  state.query = initial.query;
  state.page = initial.page;
  setControls(initial.query);
  load();  // the worklist first: it is what the radiologist waits for
  loadRegions();
  connect();
})();
