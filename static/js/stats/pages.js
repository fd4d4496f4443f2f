// What each statistics page shows, from its JSON routes (docs/statistics.md defines every figure).

import { getJSON } from "../common.js";
import { cards, chart, color, count, duration, el, fixed, rate, table } from "./ui.js";

const RATE_HEADS = ["Sensitivity", "Specificity", "PPV", "NPV", "Accuracy", "F1", "MCC"];
const rates = (c) => (c ? [rate(c.sensitivity), rate(c.specificity), rate(c.ppv), rate(c.npv), rate(c.accuracy),
  fixed(c.f1, 3), fixed(c.mcc, 3)] : RATE_HEADS.map(() => "—"));
const entries = (obj) => Object.entries(obj && typeof obj === "object" ? obj : {});
const safeName = (text) => String(text).toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "") || "x";

function grid(...blocks) {
  return el("div", { class: "stats-grid" }, ...blocks);
}

function confusionMatrix(region, c) {
  return table(`Confusion matrix: ${region}`, `confusion-${safeName(region)}`,
    ["AI \\ Radiologist", "Abnormal", "Normal"],
    [["Positive", count(c.tp), count(c.fp)], ["Negative", count(c.fn), count(c.tn)]]);
}

/** {region: [{date|month, total, positive}]} as one line per region of its totals. */
function trendChart(title, name, trends, key, type) {
  const series = entries(trends);
  const labels = series.length ? series[0][1].map((row) => row[key]) : [];
  return chart(title, name, {
    type,
    data: {
      labels,
      datasets: series.flatMap(([region, rows], i) => [
        { label: `${region}: exams`, data: rows.map((r) => r.total), borderColor: color(i), backgroundColor: color(i) },
        { label: `${region}: AI positive`, data: rows.map((r) => r.positive), borderColor: color(i),
          backgroundColor: `${color(i)}80`, borderDash: [4, 3] },
      ]),
    },
    options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
  });
}

/** Monthly counts {month: {name: n}} (or {name: {month: n}}) as one line per name. */
function monthlyChart(title, name, data) {
  const outer = entries(data);
  const monthsOuter = outer.length === 0 || /^\d{4}-\d{2}/.test(outer[0][0]);
  const cells = new Map();
  const months = new Set();
  for (const [a, inner] of outer) {
    for (const [b, n] of entries(inner)) {
      const [month, who] = monthsOuter ? [a, b] : [b, a];
      months.add(month);
      if (!cells.has(who)) cells.set(who, new Map());
      cells.get(who).set(month, n);
    }
    if (monthsOuter) months.add(a);
  }
  const labels = [...months].sort();
  return chart(title, name, {
    type: "line",
    data: {
      labels,
      datasets: [...cells.entries()].map(([who, byMonth], i) => ({
        label: who, data: labels.map((m) => byMonth.get(m) ?? 0), borderColor: color(i), backgroundColor: color(i),
      })),
    },
    options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
  });
}

function barChart(title, name, labels, datasets) {
  return chart(title, name, {
    type: "bar",
    data: { labels, datasets: datasets.map((d, i) => ({ backgroundColor: color(i), ...d })) },
    options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
  });
}

async function overview() {
  const s = await getJSON("/api/stats");
  const c = s.confusion ?? {};
  const time = s.processing_time ?? {};
  const regions = entries(s.region);
  return [
    cards([
      ["Exams answered", count(s.total), null, "total"], ["Reviewed", count(s.reviewed), null, "reviewed"],
      ["AI positive", count(s.positive), null, "positive"],
      ["Agreed / disagreed", `${count(s.correct)} / ${count(s.wrong)}`, null, "agreement"],
      ["Sensitivity", rate(c.sensitivity), null, "sensitivity"], ["Specificity", rate(c.specificity), null, "specificity"],
      ["Throughput", `${fixed(s.throughput, 1)} / h`, "last 24 h", "throughput"],
      ["Model time", duration(time.median), `p90 ${duration(time.p90)} · ${count(time.count)} exams`, "model-time"],
    ]),
    table("Overall agreement", "overall", ["Scope", "TP", "TN", "FP", "FN", ...RATE_HEADS],
      [["All regions", count(c.tp), count(c.tn), count(c.fp), count(c.fn), ...rates(c)]]),
    table("By region", "regions", ["Region", "Exams", "Reviewed", "AI positive", "TP", "TN", "FP", "FN", ...RATE_HEADS],
      regions.map(([name, r]) => [name, count(r.total), count(r.reviewed), count(r.positive), count(r.tp), count(r.tn),
        count(r.fp), count(r.fn), ...rates(r)])),
    el("h2", {}, "Confusion matrices"),
    grid(confusionMatrix("all regions", c), ...regions.map(([name, r]) => confusionMatrix(name, r))),
    grid(trendChart("Daily exams per region (30 days)", "daily-trends", s.trends, "date", "line"),
      trendChart("Monthly exams per region (12 months)", "monthly-trends", s.monthly_trends, "month", "bar")),
    table("Errors by reason", "errors", ["Reason", "Exams"], entries(s.error_stats).map(([k, n]) => [k, count(n)])),
  ];
}

function agreementRows(stats, extra) {
  return entries(stats).map(([name, r]) => {
    const a = r.agreement ?? {};
    return [name, count(r.report_count), count(r.positives), count(r.ai_compared), ...rates(a), ...extra(r)];
  });
}

const severityChart = (title, name, stats) => barChart(title, name, [...Array(11).keys()].map(String),
  entries(stats).slice(0, 10).map(([who, r]) => ({
    label: who, data: [...Array(11).keys()].map((k) => r.severity_distribution?.[k] ?? 0),
  })));

async function radiologists() {
  const [stats, monthly] = await Promise.all([getJSON("/api/stats/radiologists"),
    getJSON("/api/stats/radiologists/monthly_trends")]);
  const all = entries(stats);
  return [
    cards([
      ["Radiologists", count(all.length), null, "radiologists"],
      ["Graded reports", count(all.reduce((n, [, r]) => n + (r.report_count ?? 0), 0)), null, "reports"],
      ["Abnormal", count(all.reduce((n, [, r]) => n + (r.positives ?? 0), 0)), null, "positives"],
    ]),
    table("Radiologists", "radiologists",
      ["Radiologist", "Reports", "Abnormal", "Compared with AI", ...RATE_HEADS, "Median exam→report", "First", "Last"],
      agreementRows(stats, (r) => [duration(r.median_report_seconds), r.first_seen ?? "—", r.last_seen ?? "—"])),
    grid(monthlyChart("Monthly reports per radiologist", "radiologists-monthly", monthly),
      severityChart("Severity per radiologist", "radiologists-severity", stats)),
  ];
}

async function diagnostics() {
  const [stats, monthly] = await Promise.all([getJSON("/api/stats/diagnostics"),
    getJSON("/api/diagnostics/monthly_trends")]);
  const all = entries(stats);
  return [
    cards([
      ["Diagnoses", count(all.length), null, "diagnoses"],
      ["Graded reports", count(all.reduce((n, [, r]) => n + (r.report_count ?? 0), 0)), null, "reports"],
    ]),
    table("Diagnoses", "diagnostics",
      ["Diagnosis", "Reports", "Abnormal", "Compared with AI", ...RATE_HEADS, "Top regions"],
      agreementRows(stats, (r) => [entries(r.top_regions).map(([k, n]) => `${k} ${n}`).join("; ")])),
    grid(monthlyChart("Monthly reports of the top diagnoses", "diagnostics-monthly", monthly),
      severityChart("Severity per diagnosis", "diagnostics-severity", stats)),
  ];
}

async function insights() {
  const s = await getJSON("/api/stats/insights");
  const q = s.requeue_analysis ?? {};
  const times = s.report_times ?? {};
  const severities = [...Array(11).keys()].map(String);
  const ages = entries(s.age_distribution);
  const differences = entries(s.severity_differences).sort((a, b) => Number(a[0]) - Number(b[0]));
  const hours = [...Array(24).keys()].map(String);
  return [
    cards([
      ["Re-queued", count(q.total_requeued), `${count(q.changed)} changed their answer`, "requeued"],
      ["Second look right", `${count(q.right_after)} / ${count(q.judged)}`, `first look ${count(q.right_before)}`,
        "requeue-right"],
      ["Exam to report", duration(times.median), `p90 ${duration(times.p90)} · ${count(times.count)} reports`,
        "report-time"],
    ]),
    table("Age groups", "age-groups", ["Age group", "Exams reviewed", "Abnormal", "Abnormal rate"],
      ages.map(([g, r]) => [g, count(r.total_exams), count(r.positive_findings), rate(r.positive_rate)])),
    table("Model time by region", "model-time", ["Region", "Exams", "Median", "p90"],
      entries(s.processing_times).map(([k, t]) => [k, count(t.count), duration(t.median), duration(t.p90)])),
    table("Radiologist workload", "workload", ["Radiologist", "Reports", "Median exam→report"],
      entries(s.radiologist_metrics).map(([k, m]) => [k, count(m.reports_count), duration(m.median_report_seconds)])),
    grid(
      barChart("Severity: AI and radiologists", "severity-distributions", severities, [
        { label: "AI", data: severities.map((k) => s.ai_severity_distribution?.[k] ?? 0) },
        { label: "Radiologists", data: severities.map((k) => s.rad_severity_distribution?.[k] ?? 0) },
      ]),
      barChart("Severity difference (AI − radiologist)", "severity-differences", differences.map(([k]) => k),
        [{ label: "Exams", data: differences.map(([, n]) => n) }]),
      barChart("Exams by hour of day", "hourly", hours,
        [{ label: "Exams", data: hours.map((h) => s.hourly_patterns?.[h] ?? 0) }]),
      barChart("Age groups", "ages", ages.map(([g]) => g), [
        { label: "Reviewed", data: ages.map(([, r]) => r.total_exams) },
        { label: "Abnormal", data: ages.map(([, r]) => r.positive_findings) },
      ]),
    ),
  ];
}

export const PAGES = {
  stats: overview, stats_radiologists: radiologists, stats_diagnostics: diagnostics, stats_insights: insights,
};
