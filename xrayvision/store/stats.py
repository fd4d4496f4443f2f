"""The overall statistics (`/api/stats`): the AI against the radiologists' verdicts, per region, trends by the
site's local day and month, throughput, model time and errors. Reads only; the verdicts are verdict.py's and the
figures clinical.statistics' (see docs/statistics.md).

Local days and months are exact across DST changes: each bucket's UTC bounds are computed in Python from the zone,
and SQLite counts the exams between them (`created` is UTC text, so plain comparison orders it)."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import statistics as pystats
from collections.abc import Iterator

from .. import timeutil
from ..clinical.statistics import Confusion, Rate
from . import schema
from .database import Store
from .verdict import AI_POSITIVE_SQL, REVIEWED_SQL, TRUTH_SQL

DAYS = 30
MONTHS = 12
UNKNOWN = "unknown"  # the key of exams without a region (and of errors without a reason)

ANSWERED_SQL = "(e.ai_severity >= 0)"
# Both verdicts known: the exam is in one cell of the table.
_BOTH = f"({ANSWERED_SQL} AND {REVIEWED_SQL})"


def _cell(ai: str, truth: int) -> str:
    return f"SUM(CASE WHEN {_BOTH} AND {AI_POSITIVE_SQL} = {ai} AND {TRUTH_SQL} = {truth} THEN 1 ELSE 0 END)"


# '' (no region) and a region literally called 'unknown' are one bucket, named :unknown.
_REGION_SQL = "(CASE WHEN e.region = '' THEN :unknown ELSE e.region END)"

_REGIONS_SQL = f"""
SELECT {_REGION_SQL} AS region,
       SUM(CASE WHEN {ANSWERED_SQL} THEN 1 ELSE 0 END) AS total,
       SUM(CASE WHEN {REVIEWED_SQL} THEN 1 ELSE 0 END) AS reviewed,
       SUM(CASE WHEN {ANSWERED_SQL} AND {AI_POSITIVE_SQL} THEN 1 ELSE 0 END) AS positive,
       {_cell("1", 1)} AS tp, {_cell("0", 0)} AS tn, {_cell("1", 0)} AS fp, {_cell("0", 1)} AS fn
FROM exams e
GROUP BY 1
"""

# Answered exams per region and bucket; :bounds is a JSON list of [label, start, stop] (UTC store text, stop
# excluded), so one parameter carries every bucket.
_TRENDS_SQL = f"""
WITH b AS (SELECT json_extract(value, '$[0]') AS label, json_extract(value, '$[1]') AS start,
                  json_extract(value, '$[2]') AS stop
           FROM json_each(:bounds))
SELECT {_REGION_SQL} AS region, b.label AS label, COUNT(*) AS total,
       SUM(CASE WHEN {AI_POSITIVE_SQL} THEN 1 ELSE 0 END) AS positive
FROM b JOIN exams e ON e.created >= b.start AND e.created < b.stop
WHERE {ANSWERED_SQL}
GROUP BY 1, 2
"""

# Exams whose analysis finished in the window: their latest answer is in it (a re-analysis counts once).
_FINISHED_SQL = """
SELECT a.latency AS latency
FROM ai_reports a
WHERE a.created >= :since AND a.created <= :now
  AND a.seq = (SELECT MAX(seq) FROM ai_reports WHERE uid = a.uid)
"""

# By the reason's kind, the words before its first colon ("model unavailable after 4 tries: cannot connect" is
# "model unavailable after 4 tries"): the details after it (a server's message, an exception) would make the keys
# endless, and they are the log's to tell.
_ERRORS_SQL = ("SELECT CASE WHEN reason = '' THEN :unknown WHEN instr(reason, ':') > 0 "
               "THEN trim(substr(reason, 1, instr(reason, ':') - 1)) ELSE reason END AS reason, COUNT(*) AS n "
               "FROM exams WHERE status = :error GROUP BY 1")
_IGNORED_SQL = "SELECT COUNT(*) FROM exams WHERE status = :ignore"


async def overall(store: Store, threshold: int, zone: dt.tzinfo | None, now: dt.datetime | None = None) -> dict:
    """The `/api/stats` object. `threshold` is [processing] SEVERITY_THRESHOLD, `zone` the site's time zone
    (None: this machine's), `now` an aware datetime (default: the current time).

    total: exams the AI has answered; reviewed: exams with a radiologist's verdict; positive: the AI's positives;
    correct/wrong: exams with both verdicts on which they agree/differ; confusion: the table and its figures."""
    now = timeutil.utc_now() if now is None else now.astimezone(dt.UTC)
    region, confusion = await _regions(store, threshold)
    total = sum(r["total"] for r in region.values())
    finished = await _finished(store, now)
    return {
        "total": total,
        "reviewed": sum(r["reviewed"] for r in region.values()),
        "positive": sum(r["positive"] for r in region.values()),
        "correct": confusion.tp + confusion.tn,
        "wrong": confusion.fp + confusion.fn,
        "confusion": confusion.to_json(),
        "region": region,
        "trends": await _trends(store, threshold, list(_days(now, zone)), "date"),
        "monthly_trends": await _trends(store, threshold, list(_months(now, zone)), "month"),
        **finished,
        "error_stats": await _errors(store),
    }


async def _regions(store: Store, threshold: int) -> tuple[dict[str, dict], Confusion]:
    """Per region (regions with an answered or a reviewed exam), and the table over all of them."""
    region: dict[str, dict] = {}
    overall_table = Confusion()
    for row in await store.fetch_all(_REGIONS_SQL, {"t": threshold, "unknown": UNKNOWN}):
        if not row["total"] and not row["reviewed"]:
            continue  # only ignored or waiting exams: nothing the AI or a radiologist said about this region
        table = Confusion(row["tp"], row["tn"], row["fp"], row["fn"])
        overall_table += table
        # The table's own "total" is left out: the region's total is its answered exams, and the table's
        # (the exams with both verdicts) is correct + wrong.
        figures = {key: value for key, value in table.to_json().items() if key != "total"}
        region[row["region"]] = {"total": row["total"], "reviewed": row["reviewed"], "positive": row["positive"],
                                 "correct": table.tp + table.tn, "wrong": table.fp + table.fn, **figures}
    return dict(sorted(region.items())), overall_table


def _local_start(day: dt.date, zone: dt.tzinfo | None) -> str:
    """The UTC store text of the local midnight that starts `day`."""
    return timeutil.to_store(timeutil.local_to_utc(day, None, zone))


def _days(now: dt.datetime, zone: dt.tzinfo | None) -> Iterator[tuple[str, str, str]]:
    """(YYYY-MM-DD, start, stop) of the last DAYS local days, today last."""
    today = timeutil.utc_to_local(now, zone).date()
    for back in range(DAYS - 1, -1, -1):
        day = today - dt.timedelta(days=back)
        yield day.isoformat(), _local_start(day, zone), _local_start(day + dt.timedelta(days=1), zone)


def _months(now: dt.datetime, zone: dt.tzinfo | None) -> Iterator[tuple[str, str, str]]:
    """(YYYY-MM, start, stop) of the last MONTHS local months, this one last."""
    local = timeutil.utc_to_local(now, zone).date()
    index = local.year * 12 + local.month - 1  # months since year 0, so stepping back needs no carry logic
    for n in range(index - MONTHS + 1, index + 1):
        first = dt.date(n // 12, n % 12 + 1, 1)
        following = dt.date((n + 1) // 12, (n + 1) % 12 + 1, 1)
        yield first.strftime("%Y-%m"), _local_start(first, zone), _local_start(following, zone)


async def _trends(store: Store, threshold: int, bounds: list[tuple[str, str, str]], key: str) -> dict[str, list]:
    """{region: [{key: label, total, positive}, ...every bucket in order, zeros included]} for regions with an
    answered exam in the window."""
    rows = await store.fetch_all(_TRENDS_SQL, {"bounds": json.dumps(bounds), "t": threshold, "unknown": UNKNOWN})
    found: dict[str, dict[str, tuple[int, int]]] = {}
    for row in rows:
        found.setdefault(row["region"], {})[row["label"]] = (row["total"], row["positive"])
    return {
        name: [{key: label, "total": buckets.get(label, (0, 0))[0], "positive": buckets.get(label, (0, 0))[1]}
               for label, _, _ in bounds]
        for name, buckets in sorted(found.items())
    }


def _p90(values: list[float]) -> float:
    """The nearest-rank 90th percentile: the smallest value with at least 90% of the values at or below it."""
    ordered = sorted(values)
    return ordered[math.ceil(0.9 * len(ordered)) - 1]


async def _finished(store: Store, now: dt.datetime) -> dict:
    """throughput: exams whose analysis finished in the last 24 h, per hour; avg_processing_time and
    processing_time: the model's time (seconds) for those answers, None when there is none."""
    since = timeutil.to_store(now - dt.timedelta(hours=24))
    rows = await store.fetch_all(_FINISHED_SQL, {"since": since, "now": timeutil.to_store(now)})
    seconds = [row["latency"] / 1000 for row in rows if row["latency"] >= 0]  # -1: latency not known
    return {
        "throughput": round(len(rows) / 24, 4),
        "avg_processing_time": round(pystats.fmean(seconds), 3) if seconds else None,
        "processing_time": _seconds(seconds),
    }


async def _errors(store: Store) -> dict[str, int]:
    """{reason: exams in 'error' for it} plus 'ignore': the exams ignored."""
    rows = await store.fetch_all(_ERRORS_SQL, {"error": schema.ERROR, "unknown": UNKNOWN})
    errors = {row["reason"]: row["n"] for row in rows}
    errors["ignore"] = int(await store.fetch_value(_IGNORED_SQL, {"ignore": schema.IGNORE}) or 0)
    return errors


# Graded reports grouped by who wrote them or what they found: counts, the AI against the radiologist's verdict (the
# same verdict as everywhere: a manual review outranks the report) and each group's severities.
def _grouped_sql(key: str) -> str:
    return f"""
SELECT {key} AS key, COUNT(*) AS reports, SUM(CASE WHEN {TRUTH_SQL} = 1 THEN 1 ELSE 0 END) AS positives,
       {_cell("1", 1)} AS tp, {_cell("0", 0)} AS tn, {_cell("1", 0)} AS fp, {_cell("0", 1)} AS fn,
       MIN(e.created) AS first_seen, MAX(e.created) AS last_seen
FROM exams e WHERE e.rad_severity >= 0 AND {key} != '' GROUP BY {key} COLLATE NOCASE
"""


def _severities_sql(key: str) -> str:
    return (f"SELECT {key} AS key, e.rad_severity AS severity, COUNT(*) AS n FROM exams e "
            f"WHERE e.rad_severity >= 0 AND {key} != '' GROUP BY {key} COLLATE NOCASE, 2")


async def _grouped(store: Store, threshold: int, key: str) -> dict[str, dict]:
    groups: dict[str, dict] = {}
    for row in await store.fetch_all(_grouped_sql(key), {"t": threshold}):
        table = Confusion(row["tp"], row["tn"], row["fp"], row["fn"])
        groups[row["key"]] = {"report_count": row["reports"], "positives": row["positives"],
                              "ai_compared": table.total, "agreement": table.to_json(),
                              "first_seen": timeutil.iso_utc(row["first_seen"]),
                              "last_seen": timeutil.iso_utc(row["last_seen"]),
                              "severity_distribution": {str(level): 0 for level in range(11)}}
    for row in await store.fetch_all(_severities_sql(key), {}):
        # Another read, another snapshot: a report graded in between is in this one only, and waits for the next.
        if row["key"] in groups:
            groups[row["key"]]["severity_distribution"][str(row["severity"])] = row["n"]
    return groups


async def by_radiologist(store: Store, threshold: int) -> dict[str, dict]:
    """`/api/stats/radiologists`, by the full name (the web layer makes initials for users): reports graded,
    their positives, the AI against the verdict on those exams (agreement both ways: sensitivity is the share of
    the radiologist's positives the AI found, specificity of the negatives it left), severities, and the median
    seconds from exam to the report's issue (None when no report says when it was issued)."""
    groups = await _grouped(store, threshold, "e.radiologist")
    delays: dict[str, list[float]] = {}
    for row in await store.fetch_all(
            "SELECT e.radiologist AS key, (julianday(r.issued) - julianday(e.created)) * 86400 AS seconds "
            "FROM exams e JOIN rad_reports r ON r.uid = e.uid "
            "WHERE e.rad_severity >= 0 AND e.radiologist != '' AND r.issued IS NOT NULL AND r.issued >= e.created"):
        delays.setdefault(row["key"].casefold(), []).append(row["seconds"])
    for name, group in groups.items():
        seconds = delays.get(name.casefold())
        group["median_report_seconds"] = round(pystats.median(seconds)) if seconds else None
    return dict(sorted(groups.items(), key=lambda item: item[0].casefold()))


async def by_diagnostic(store: Store, threshold: int) -> dict[str, dict]:
    """`/api/stats/diagnostics`, by the graded report's diagnosis: the same figures, and its top five regions."""
    groups = await _grouped(store, threshold, "e.diagnostic")
    for row in await store.fetch_all(
            f"SELECT e.diagnostic AS key, {_REGION_SQL} AS region, COUNT(*) AS n FROM exams e "
            "WHERE e.rad_severity >= 0 AND e.diagnostic != '' GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2",
            {"unknown": UNKNOWN}):
        if row["key"] not in groups:
            continue  # graded after the first read (see _grouped)
        top = groups[row["key"]].setdefault("top_regions", {})
        if len(top) < 5:
            top[row["region"]] = row["n"]
    return dict(sorted(groups.items(), key=lambda item: (-item[1]["report_count"], item[0])))


# Graded reports per local month and key (radiologist or diagnosis), as _TRENDS_SQL buckets them.
def _monthly_sql(key: str) -> str:
    return f"""
WITH b AS (SELECT json_extract(value, '$[0]') AS label, json_extract(value, '$[1]') AS start,
                  json_extract(value, '$[2]') AS stop
           FROM json_each(:bounds))
SELECT b.label AS label, MIN({key}) AS key, COUNT(*) AS n
FROM b JOIN exams e ON e.created >= b.start AND e.created < b.stop
WHERE e.rad_severity >= 0 AND {key} != ''
GROUP BY 1, {key} COLLATE NOCASE
"""


async def monthly(store: Store, key: str, zone: dt.tzinfo | None, now: dt.datetime | None = None,
                  top: int | None = None) -> dict[str, dict[str, int]]:
    """{YYYY-MM: {name: graded reports}} for the last MONTHS local months (each month present, oldest first), by
    `key`: 'radiologist' or 'diagnostic'. `top`: only the keys with the most reports over the whole window."""
    column = {"radiologist": "e.radiologist", "diagnostic": "e.diagnostic"}[key]  # a fixed allow-list
    now = timeutil.utc_now() if now is None else now.astimezone(dt.UTC)
    bounds = list(_months(now, zone))
    rows = await store.fetch_all(_monthly_sql(column), {"bounds": json.dumps(bounds)})
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["key"]] = totals.get(row["key"], 0) + row["n"]
    kept = set(sorted(totals, key=lambda k: (-totals[k], k))[:top]) if top else set(totals)
    months: dict[str, dict[str, int]] = {label: {} for label, _, _ in bounds}
    for row in rows:
        if row["key"] in kept:
            months[row["label"]][row["key"]] = row["n"]
    return months


def age_labels(bounds: tuple[int, ...]) -> list[str]:
    """'0-1', '2-5', ..., '65+' for lower bounds (0, 2, ..., 65)."""
    return [f"{low}-{high - 1}" if high - 1 > low else str(low) for low, high in zip(bounds, bounds[1:])] + \
        [f"{bounds[-1]}+"]


def _seconds(values: list[float]) -> dict:
    return {"count": len(values), "median": round(pystats.median(values), 3) if values else None,
            "p90": round(_p90(values), 3) if values else None}


async def insights(store: Store, threshold: int, zone: dt.tzinfo | None, age_groups: tuple[int, ...]) -> dict:
    """`/api/stats/insights` (docs/statistics.md): positives by age group, model time by region, both severity
    distributions and their difference, the hourly pattern in the site's zone, what a second look changed,
    radiologists' workload and report times."""
    params = {"t": threshold, "unknown": UNKNOWN}
    labels = age_labels(age_groups)
    # The group of each exam in SQL (the bounds as parameters), so that only the groups' counts come back.
    group_of = "CASE " + " ".join(f"WHEN e.age >= :age{i} THEN {i}" for i in reversed(range(len(age_groups)))) + \
        " END"
    age_rows = await store.fetch_all(
        f"SELECT {group_of} AS grp, COUNT(*) AS n, SUM({TRUTH_SQL}) AS positive FROM exams e "
        f"WHERE e.age IS NOT NULL AND e.age >= 0 AND {REVIEWED_SQL} GROUP BY 1",
        {**params, **{f"age{i}": low for i, low in enumerate(age_groups)}})
    counts = {label: [0, 0] for label in labels}  # exams with a verdict, of which positive
    for row in age_rows:
        counts[labels[row["grp"]]] = [row["n"], int(row["positive"] or 0)]
    age_distribution = {label: {"total_exams": n, "positive_findings": pos,
                                "positive_rate": (Rate.of(pos, n).to_json() if n else None)}
                        for label, (n, pos) in counts.items()}

    times: dict[str, list[float]] = {}
    for row in await store.fetch_all(
            f"SELECT {_REGION_SQL} AS region, a.latency AS latency FROM exams e "
            "JOIN ai_reports a ON a.seq = (SELECT MAX(seq) FROM ai_reports WHERE uid = e.uid) WHERE a.latency >= 0",
            params):
        times.setdefault(row["region"], []).append(row["latency"] / 1000)
    ai_dist = {str(n): 0 for n in range(11)}
    rad_dist = {str(n): 0 for n in range(11)}
    differences: dict[str, int] = {}
    for row in await store.fetch_all("SELECT ai_severity AS ai, rad_severity AS rad, COUNT(*) AS n FROM exams "
                                     "WHERE ai_severity >= 0 OR rad_severity >= 0 GROUP BY 1, 2"):
        if row["ai"] >= 0:
            ai_dist[str(row["ai"])] += row["n"]
        if row["rad"] >= 0:
            rad_dist[str(row["rad"])] += row["n"]
        if row["ai"] >= 0 and row["rad"] >= 0:
            key = str(row["ai"] - row["rad"])
            differences[key] = differences.get(key, 0) + row["n"]
    # Per UTC quarter hour in SQL (every zone's offset is a whole number of quarter hours), then each quarter's
    # local hour in a thread: exact across DST changes, and no loop over every exam on the event loop.
    quarters = await store.fetch_all(
        "SELECT substr(e.created, 1, 14) || (CAST(substr(e.created, 15, 2) AS INTEGER) / 15 * 15) AS quarter, "
        f"COUNT(*) AS n FROM exams e WHERE {ANSWERED_SQL} GROUP BY 1")
    hourly = await asyncio.to_thread(_local_hours, [(row[0], row[1]) for row in quarters], zone)
    return {
        "age_distribution": age_distribution,
        "processing_times": {region: _seconds(values) for region, values in sorted(times.items())},
        "ai_severity_distribution": ai_dist,
        "rad_severity_distribution": rad_dist,
        "severity_differences": dict(sorted(differences.items(), key=lambda item: int(item[0]))),
        "hourly_patterns": hourly,
        "requeue_analysis": await _second_looks(store, threshold),
        "radiologist_metrics": {name: {"reports_count": g["report_count"],
                                       "median_report_seconds": g["median_report_seconds"]}
                                for name, g in (await by_radiologist(store, threshold)).items()},
        "report_times": _seconds(await _report_delays(store)),
    }


def _local_hours(quarters: list[tuple[str, int]], zone: dt.tzinfo | None) -> dict[str, int]:
    """{"0".."23": exams} from (UTC 'YYYY-MM-DD HH:M', count) quarter-hour buckets."""
    hourly = {str(h): 0 for h in range(24)}
    for quarter, n in quarters:
        day, clock = quarter.split(" ")
        hour, minute = clock.split(":")
        start = dt.datetime.fromisoformat(f"{day}T{hour}:{int(minute):02d}:00+00:00")
        hourly[str(timeutil.utc_to_local(start, zone).hour)] += n
    return hourly


async def _report_delays(store: Store) -> list[float]:
    rows = await store.fetch_all(
        "SELECT (julianday(r.issued) - julianday(e.created)) * 86400 FROM exams e JOIN rad_reports r ON r.uid = e.uid "
        "WHERE e.rad_severity >= 0 AND r.issued IS NOT NULL AND r.issued >= e.created")
    return [row[0] for row in rows]


async def _second_looks(store: Store, threshold: int) -> dict:
    """Exams the AI answered more than once: how many, on how many the latest answer's verdict differs from the
    first's, and of those with a radiologist's verdict, how often the first and the latest were right."""
    rows = await store.fetch_all(
        f"""SELECT (SELECT severity FROM ai_reports WHERE uid = e.uid ORDER BY seq LIMIT 1) AS first,
                   e.ai_severity AS latest, {TRUTH_SQL} AS truth
            FROM exams e WHERE (SELECT COUNT(*) FROM ai_reports WHERE uid = e.uid) > 1 AND e.ai_severity >= 0""",
        {"t": threshold})
    changed = [r for r in rows if r["first"] is not None and r["first"] >= 0 and
               (r["first"] >= threshold) != (r["latest"] >= threshold)]
    judged = [r for r in changed if r["truth"] is not None]
    return {"total_requeued": len(rows), "changed": len(changed), "judged": len(judged),
            "right_before": sum(1 for r in judged if (r["first"] >= threshold) == bool(r["truth"])),
            "right_after": sum(1 for r in judged if (r["latest"] >= threshold) == bool(r["truth"]))}
