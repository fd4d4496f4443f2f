// One exam as a card: a clone of the <template id="exam-card"> in dashboard.html, filled with textContent only.
// Pure rendering: which cards are on the page, and what they do when clicked, is worklist.js's.

import { el, field, isObject, num, text, titleCase } from "./dom.js";

const template = document.getElementById("exam-card");

// Actions that only make sense for an exam the AI reads; an exam that will never be analysed offers none of them.
export const REVIEW_ACTIONS = new Set(["normal", "abnormal", "requeue"]);

/** The contract's exam object, in the shape this page reads; anything else is ignored. */
export function isExam(v) {
  return isObject(v) && typeof v.uid === "string" && isObject(v.patient) && isObject(v.exam) &&
    isObject(v.report) && isObject(v.report.ai) && isObject(v.report.rad);
}

/** False for an exam that will never be analysed (status "ignore"): no review, no look again, no image to wait for. */
export function isAnalysed(exam) {
  return text(exam.exam.status) !== "ignore";
}

/** True only when the server says this patient's images disagree (a missing field means no conflict). */
export function hasIdentityConflict(patient) {
  return patient.identity_conflict === true;
}

export function patientLine(patient) {
  const parts = [text(patient.name).replace(/\^/g, " ").trim() || "Unnamed patient"];
  if (patient.sex && patient.sex !== "O") parts.push(text(patient.sex));
  const age = num(patient.age);
  if (age !== null && age >= 0) parts.push(`${age} y`);
  return parts.join(" · ");
}

/** "CNP 1234…" only when the server vouches for it (cnp_valid); any other patient number is just an "ID". */
function patientNumber(patient) {
  return `${patient.cnp_valid === true ? "CNP" : "ID"} ${text(patient.cnp)}`;
}

export function whenText(info) {
  const d = text(info.date);
  const t = text(info.time);
  if (d.length !== 8) return "";
  const day = `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 8)}`;
  return t.length >= 4 ? `${day} ${t.slice(0, 2)}:${t.slice(2, 4)}` : day;
}

export function aiHeadline(ai, status) {
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

export function radHeadline(rad) {
  const who = text(rad.radiologist) || "Radiologist";
  const severity = num(rad.severity);
  const summary = text(rad.summary) || "report";
  return `${who}: ${summary}${severity !== null && severity >= 0 ? ` (severity ${severity}/10)` : ""}`;
}

/** Where the radiologist's report stands when it is not graded yet: "" for none looked for, or graded. */
export function radStateLine(rad) {
  const tries = num(rad.attempts) ?? 0;
  const reason = text(rad.reason);
  switch (rad.state) {
    case "seeking": {
      const t = typeof rad.next_attempt === "string" ? Date.parse(rad.next_attempt) : Number.NaN;
      const next = Number.isNaN(t) ? "" : `; next try ${new Date(t).toLocaleString([], { dateStyle: "short", timeStyle: "short" })}`;
      return `Report not found yet (${tries} ${tries === 1 ? "try" : "tries"}${next})`;
    }
    case "missing":
      return `No report found after ${tries} ${tries === 1 ? "try" : "tries"}${reason ? ` (${reason})` : ""}`;
    case "check":
      return "Report fetched, waiting to be graded";
    case "failed":
      return `Report not graded: ${reason || "grading failed"}`;
    default:
      return "";
  }
}

/** Why an exam is not analysed, as the line shown on its card and in the viewer; "" for the others. */
export function ignoreReason(exam) {
  if (isAnalysed(exam)) return "";
  const reason = text(exam.exam.reason).trim();
  return `Not analysed: ${reason || "no reason given"}`;
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
    // An ignored exam's reason has its own line on the card; an error's fits the badge.
    const badge = el("span", `badge ${cls}`, reason && status === "error" ? `${label}: ${reason}` : label);
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

const hasImage = (info) => typeof info.image === "string" && info.image.startsWith("/images/");

/** A new card for `exam`; `previous` (the card it replaces, if any) lends it which reports were open. */
export function buildCard(exam, previous) {
  const card = template.content.firstElementChild.cloneNode(true);
  const { exam: info, report, patient } = exam;
  const ai = report.ai;
  const rad = report.rad;
  const analysed = isAnalysed(exam);
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
  if (hasImage(info)) {
    img.src = info.image;
    img.alt = `Radiograph, ${titleCase(info.region) || "region unknown"}`;
  } else if (analysed) {
    img.remove();
    field(card, "image-missing").hidden = false;
    card.querySelector(".thumb").disabled = true;
  } else {
    // Never analysed, never rendered: no image will come, so no placeholder promises one.
    card.querySelector(".thumb").remove();
    card.classList.add("no-thumb");
  }

  field(card, "patient").textContent = patientLine(patient);
  field(card, "identity").hidden = !hasIdentityConflict(patient);
  field(card, "badges").replaceChildren(...badges(exam));
  const region = [titleCase(info.region) || "Region unknown", text(info.projection)].filter(Boolean).join(" · ");
  field(card, "region").textContent = region;
  field(card, "protocol").textContent = text(info.protocol);
  const when = field(card, "when");
  when.textContent = whenText(info);
  if (info.created) when.dateTime = text(info.created);

  const ids = [];
  if (patient.cnp) ids.push(patientNumber(patient));
  if (patient.id) ids.push(`HIS ${text(patient.id)}`);
  if (info.id) ids.push(`Acc. ${text(info.id)}`);
  field(card, "ids").textContent = ids.join(" · ");

  const reason = ignoreReason(exam);
  field(card, "reason").textContent = reason;
  field(card, "reason").hidden = !reason;

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
  const radState = radStateLine(rad);
  field(card, "rad-state").textContent = radState;
  field(card, "rad-state").hidden = !radState;
  if (isObject(report.review)) {
    const line = field(card, "review");
    line.hidden = false;
    const reviewer = text(report.review.reviewer) || "someone";
    line.textContent = `Reviewed by ${reviewer}: ${report.review.normal ? "normal" : "abnormal"}`;
  }
  if (!analysed) {
    for (const button of card.querySelectorAll(".exam-actions [data-action]")) {
      if (REVIEW_ACTIONS.has(button.dataset.action)) button.remove();
    }
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
