// The about page's configuration table, from /api/config, built as text.
import { getJSON, toast } from "./common.js";

const LABELS = {
  AE_TITLE: "DICOM AE title",
  AE_PORT: "DICOM port",
  MODEL_NAME: "Model",
  DASHBOARD_PORT: "Dashboard port",
  SEVERITY_THRESHOLD: "Positive from severity",
  PAGE_SIZE: "Exams per page",
  OPENAI_URL_PRIMARY: "AI endpoint (primary)",
  OPENAI_URL_SECONDARY: "AI endpoint (secondary)",
  NTFY_URL: "Notifications (ntfy)",
  REMOTE_AE_TITLE: "PACS AE title",
  REMOTE_AE_IP: "PACS address",
  REMOTE_AE_PORT: "PACS port",
};

function row(label, value, muted) {
  const tr = document.createElement("tr");
  const th = document.createElement("th");
  th.scope = "row";
  th.textContent = label;
  const td = document.createElement("td");
  td.textContent = value;
  if (muted) td.className = "muted";
  tr.append(th, td);
  return tr;
}

async function load() {
  const body = document.getElementById("config-rows");
  try {
    const config = await getJSON("/api/config");
    const rows = Object.entries(config || {}).map(([key, value]) => {
      if (value === null || value === undefined) return row(LABELS[key] || key, "hidden", true);
      if (value === "") return row(LABELS[key] || key, "not set", true);
      return row(LABELS[key] || key, String(value), false);
    });
    body.replaceChildren(...rows);
  } catch (err) {
    body.replaceChildren(row("Configuration", `not available: ${err.message}`, true));
    toast(`Could not load the configuration: ${err.message}`, "error");
  }
}

load();
