// The report check page: a quick grading (/api/check), a three-pass reading (/api/analyse) or an English
// translation (/api/translate) of pasted text. What the model says is shown as text (textContent), never as HTML.
import { postJSON, toast } from "./common.js";

const $ = (id) => document.getElementById(id);
const form = $("check-form");
const buttons = [$("check-quick"), $("check-detailed"), $("check-translate")];
const TOOLS = {
  check: { url: "/api/check", name: "Check", result: "check-result", show: (answer) => showQuick(answer) },
  analyse: { url: "/api/analyse", name: "Analysis", result: "analysis-result", show: (answer) => showAnalysis(answer) },
  translate: { url: "/api/translate", name: "Translation", result: "translation-result",
    show: (answer) => showTranslation(answer) },
};

function el(tag, content, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (content !== undefined) node.textContent = content;
  return node;
}

function list(items) {
  const ul = document.createElement("ul");
  for (const item of Array.isArray(items) ? items : []) ul.append(el("li", String(item)));
  if (!ul.childElementCount) ul.append(el("li", "none", "muted"));
  return ul;
}

function section(title, ...children) {
  const article = document.createElement("article");
  const header = document.createElement("header");
  header.append(el("strong", title));
  article.append(header, ...children);
  return article;
}

function pair(label, value) {
  const p = document.createElement("p");
  p.append(el("strong", `${label}: `), document.createTextNode(value === undefined || value === null ? "–" : String(value)));
  return p;
}

function showQuick(answer) {
  const pathologic = String(answer.pathologic || "").toLowerCase();
  const out = $("check-pathologic");
  out.textContent = pathologic || "–";
  out.className = pathologic === "yes" ? "bad" : pathologic === "no" ? "good" : "";
  const severity = Number(answer.severity);
  const sev = $("check-severity");
  sev.textContent = Number.isFinite(severity) ? `${severity}/10` : "–";
  sev.className = Number.isFinite(severity) ? `sev-text sev-${Math.max(0, Math.min(10, Math.round(severity)))}` : "";
  $("check-summary").textContent = answer.summary ? String(answer.summary) : "–";
  $("check-result").hidden = false;
}

function showAnalysis(answer) {
  const first = answer.first_pass || {};
  const second = answer.second_pass || {};
  const third = answer.third_pass || {};
  const body = $("analysis-body");
  body.replaceChildren(
    section("Overview and context", pair("Topic", first.topic), pair("Purpose", first.purpose),
      pair("Primary findings", first.primary_findings)),
    section("Content", el("h4", "Main points"), list(second.main_points), el("h4", "Supporting evidence"),
      list(second.supporting_evidence), pair("Conclusions valid", second.conclusions_valid ? "yes" : "no")),
    section("Critical evaluation", el("h4", "Assumptions"), list(third.assumptions), el("h4", "Missing information"),
      list(third.missing_info), pair("Critique", third.critique)),
    section("Overall assessment", el("p", answer.overall_assessment ? String(answer.overall_assessment) : "–")),
  );
  $("analysis-result").hidden = false;
  $("analysis-result").scrollIntoView({ block: "start", behavior: "smooth" });
}

function showTranslation(answer) {
  $("translation-text").textContent = answer.translation ? String(answer.translation) : "–";
  $("translation-result").hidden = false;
}

function showError(message) {
  const box = $("check-error");
  box.textContent = message;
  box.hidden = !message;
}

async function run(mode) {
  const tool = TOOLS[mode];
  const report = $("check-report").value.trim();
  if (!report) {
    showError("Paste a report first.");
    $("check-report").focus();
    return;
  }
  showError("");
  buttons.forEach((b) => { b.disabled = true; b.setAttribute("aria-busy", "true"); });
  try {
    tool.show((await postJSON(tool.url, { report })) || {});
  } catch (err) {
    // The server's own words ("no model available: ...", "report: longer than ..."), kept on the page and toasted.
    const message = `${tool.name} failed: ${err.message}${err.status ? ` (HTTP ${err.status})` : ""}`;
    showError(message);
    toast(message, "error");
    $(tool.result).hidden = true; // an earlier answer must not pass for this report's

  } finally {
    buttons.forEach((b) => { b.disabled = false; b.removeAttribute("aria-busy"); });
  }
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  run("check");
});
$("check-detailed").addEventListener("click", () => run("analyse"));
$("check-translate").addEventListener("click", () => run("translate"));
