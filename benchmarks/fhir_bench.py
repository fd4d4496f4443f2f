"""Radiologists' reports fetched from a real FHIR server and graded by a 0 ms model, and the API's latency meanwhile.

Run: SEKMET_VENV=/path/to/venv python benchmarks/fhir_bench.py [--exams 1000] [--batch 100]
         [--concurrency 4] [--timeout 600] [--background 20000] [--idle-seconds 10] [--py-spy FILE] [--keep DIR]

1. Starts sekmet-fhir (the tests' real FHIR R4 server, `tests/sekmet.py`, from its own virtualenv) and loads it with
   one Patient (the CNP as identifier), one imaging ServiceRequest (authored 10 minutes before the exam) and one
   final DiagnosticReport (basedOn that request, base64 plain-text presentedForm in Romanian, resultsInterpreter)
   per exam, in transaction Bundles of 100 exams.
2. Seeds a database through the product's Store (real migrations): optionally --background exams with api_bench's
   seeding (the recent ones moved back out of LOOKBACK_DAYS, the waiting ones marked 'error', so the fetch loop and
   the analysis worker see only this benchmark's exams), then --exams 'done' chest exams of as many patients, made
   within the last three days, each with an AI answer.
3. Starts `tests/llm_server.py --latency 0` in its own process: it grades and translates reports.
4. Idle: the real server (api_bench.Server: `python -m xrayvision`, its own process) with [processing] ENABLE_HIS off
   and no FHIR server; one client times /api/exams (no filter, reviewed=no, a name search) for --idle-seconds.
5. Loop: the server again, with ENABLE_HIS on, FETCH_INTERVAL 1 s, FETCH_BATCH --batch, the model endpoint at
   --concurrency. The same client times the same cases continuously while this script polls the database (read
   only) until every exam's report is graded (or --timeout). Prints reports fetched and graded per minute, the
   FHIR requests per exam (counted in sekmet's access log), and the API's median and p95 during the loop against
   idle, with their ratio.
6. Checks every exam has one rad_reports row, graded as the model grades its text, translated (text_en), with two
   model calls stored; prints a WARNING line otherwise.

It asserts nothing. It stops everything it started and removes its temporary folder, also on Ctrl-C or an error.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE))
from _process import stop_process  # noqa: E402
from api_bench import (  # noqa: E402
    INSERTS,
    Server,
    connect_ro,
    free_port,
    get,
    make_patients,
    percentile,
    seed,
    session,
    store_time,
    tail,
    wait_ready,
)
from ingest_bench import py_spy  # noqa: E402
from sekmet import USER, Sekmet, start_sekmet  # noqa: E402

from xrayvision.analysis import grading  # noqa: E402
from xrayvision.clinical.cnp import age_on  # noqa: E402
from xrayvision.store import Store, schema  # noqa: E402

SYSTEM = "urn:oid:2.16.642.99.6.1"  # the CNP's identifier system, on both sides
ROOT = "1.2.826.0.1.3680043.10.543.9"  # this benchmark's exam UIDs (api_bench's background exams use another root)
LOOKBACK_DAYS = 4  # the exams are made within the last 3 days
BUNDLE_EXAMS = 100  # exams (3 resources each) per transaction Bundle
MODEL = "medgemma-test"  # what llm_server.py serves, and the server asks for
RATIO_TARGET = 1.2  # "no change beyond noise": the median during the loop within 20 % of idle, or within idle's p95
RADIOLOGISTS = ["Dr. Maria Vasilescu", "Dr. Andrei Pop", "Dr. Ioana Neagu", "Dr. Radu Toma"]
# tests/llm_server.py grades a text with "fără modificări" no/0/normal, any other yes/6/opacity; both are Romanian,
# so each report is translated first.
NORMAL = "Fără modificări pleuro-pulmonare evidente. Sinusurile costo-diafragmatice libere, cord în limite normale."
ABNORMAL = ("Opacitate în lobul inferior drept, cu bronhogramă aerică. Concluzie: pneumonie. Control radiologic "
            "la două săptămâni.")


@dataclass
class Exam:
    uid: str
    cnp: str
    family: str
    given: str
    birth: dt.date
    sex: str
    created: dt.datetime  # naive UTC
    normal: bool


def make_exams(count: int, taken: set[str], seed_value: int) -> list[Exam]:
    """api_bench's patients (valid CNPs; those with only a hospital id left out), none already in the database, one
    done chest exam each within the last 3 days (at least 3 hours old, so each report's `issued`, 2 hours after, is
    in the past)."""
    rng = random.Random(seed_value)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    exams: list[Exam] = []
    while len(exams) < count:
        for p in make_patients(rng, 2 * (count - len(exams)), now):
            if p.birthdate is None or p.cnp in taken or len(exams) == count:
                continue
            taken.add(p.cnp)
            family, given = p.name.split(" ", 1)
            created = now - dt.timedelta(hours=3) - dt.timedelta(seconds=rng.randrange(3 * 86400 - 4 * 3600))
            exams.append(Exam(f"{ROOT}.{len(exams) + 1}", p.cnp, family, given, p.birthdate, p.sex, created,
                              rng.random() < 0.5))
    return exams


def fhir_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def resources(n: int, exam: Exam) -> list[dict]:
    pid, rid, did = f"bp{n}", f"bsr{n}", f"bdr{n}"
    text = NORMAL if exam.normal else ABNORMAL
    return [
        {"resourceType": "Patient", "id": pid, "identifier": [{"system": SYSTEM, "value": exam.cnp}],
         "name": [{"family": exam.family, "given": [exam.given]}], "birthDate": exam.birth.isoformat(),
         "gender": "male" if exam.sex == "M" else "female"},
        {"resourceType": "ServiceRequest", "id": rid, "status": "completed", "intent": "order",
         "subject": {"reference": f"Patient/{pid}"}, "authoredOn": fhir_time(exam.created - dt.timedelta(minutes=10)),
         "code": {"text": "XR chest"}, "reasonCode": [{"text": "tuse persistentă"}]},
        {"resourceType": "DiagnosticReport", "id": did, "status": "final", "code": {"text": "XR chest"},
         "subject": {"reference": f"Patient/{pid}"}, "basedOn": [{"reference": f"ServiceRequest/{rid}"}],
         "effectiveDateTime": fhir_time(exam.created + dt.timedelta(minutes=5)),
         "issued": fhir_time(exam.created + dt.timedelta(hours=2)),
         "resultsInterpreter": [{"display": RADIOLOGISTS[n % len(RADIOLOGISTS)]}],
         "presentedForm": [{"contentType": "text/plain; charset=utf-8",
                            "data": base64.b64encode(f"Radiografie toracică: {text}".encode()).decode()}]},
    ]


def load_fhir(server: Sekmet, exams: list[Exam]) -> None:
    for start in range(0, len(exams), BUNDLE_EXAMS):
        entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                   for n in range(start, min(start + BUNDLE_EXAMS, len(exams))) for r in resources(n, exams[n])]
        answer = server.request("POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
        bad = [e["response"]["status"] for e in answer.get("entry", [])
               if not e.get("response", {}).get("status", "").startswith("20")]
        if bad or len(answer.get("entry", [])) != len(entries):
            raise RuntimeError(f"sekmet's transaction answered {len(answer.get('entry', []))} of {len(entries)} "
                               f"entries, not all 2xx: {Counter(bad)}")


def exam_rows(exams: list[Exam]) -> tuple[list[tuple], list[tuple], list[tuple]]:
    now = store_time(dt.datetime.now(dt.UTC).replace(tzinfo=None))
    patients, rows, answers = [], [], []
    for n, e in enumerate(exams):
        patients.append((e.cnp, "", e.cnp, f"{e.family.upper()}^{e.given.upper()}", e.birth.isoformat(), e.sex, 33,
                         now))
        received = e.created + dt.timedelta(seconds=40)
        rows.append((e.uid, e.cnp, f"FB{n + 1:07d}", store_time(e.created), store_time(received),
                     store_time(received + dt.timedelta(minutes=1)), "Torace PA", "chest", "frontal", "CR",
                     "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1", age_on(e.birth, e.created.date()),
                     schema.DONE, "", f"{e.uid}.1", f"{e.uid}.2", None, f"{e.uid}.png", 1, None))
        answered = store_time(received + dt.timedelta(seconds=30))
        severity = 1 if e.normal else 7
        answers.append((e.uid, answered, answered, "No acute findings." if e.normal else "Right lower zone opacity.",
                        int(severity >= 5), 85, severity, "normal" if e.normal else "pneumonia", "medgemma-4b-it",
                        "pri", "3", 900, 700, 120))
    return patients, rows, answers


async def seed_db(db: Path, exams_n: int, background: int, seed_value: int) -> tuple[list[Exam], float]:
    began = time.perf_counter()
    if background:
        await seed(db, max(1, background * 3 // 10), background, seed_value)
        # Out of the fetch loop's and the worker's way: only this benchmark's exams are looked for and worked on.
        since = store_time(dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=LOOKBACK_DAYS + 1))
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            conn.execute("UPDATE exams SET created = strftime('%Y-%m-%d %H:%M:%S', created, '-5 days') "
                         "WHERE created >= ?", (since,))
            conn.execute("UPDATE exams SET status = ?, reason = 'benchmark: not analysed' WHERE status IN (?, ?)",
                         (schema.ERROR, schema.QUEUED, schema.REQUEUE))
        finally:
            conn.close()
    taken: set[str] = set()
    if db.exists():
        conn = connect_ro(db)
        try:
            taken = {r[0] for r in conn.execute("SELECT cnp FROM patients")}
        finally:
            conn.close()
    exams = make_exams(exams_n, taken, seed_value)
    patients, rows, answers = exam_rows(exams)
    store = await Store(db).open()  # the real migrations
    try:
        async with store.transaction() as conn:
            await conn.executemany(INSERTS["patients"], patients)
            await conn.executemany(INSERTS["exams"], rows)
            await conn.executemany(INSERTS["ai_reports"], answers)
    finally:
        await store.close()
    return exams, time.perf_counter() - began


# ------------------------------------------------------------------------------------------------ the model


class Model:
    """tests/llm_server.py in its own process."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port(set())
        self.log = workdir / "llm_server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "llm_server.py"), "--port",
                                          str(self.port), "--latency", "0", "--model", MODEL],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llm_server.py exited with {self.proc.returncode}:\n{tail(self.log)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llm_server.py did not answer within {timeout:.0f} s") from None
                time.sleep(0.2)  # polling a starting process, with the deadline above

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)  # SIGTERM: it prints its chat count and problems to its log
        self.proc = None

    def summary(self) -> tuple[str, list[str]]:
        """Its closing line (chat requests, problems), and each kind of malformed request it saw."""
        lines = self.log.read_text(errors="replace").splitlines()
        kinds = Counter(re.sub(r"^problem: request \d+: ", "", line) for line in lines if line.startswith("problem: "))
        return (lines[-1] if lines else "no log"), [f"the model server saw {n} request(s) with: {what[:300]}"
                                                    for what, n in kinds.most_common(5)]


# ------------------------------------------------------------------------------------------------ measuring


@dataclass
class Case:
    label: str
    path: str
    idle: list[float] = field(default_factory=list)
    during: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def make_cases(exams: list[Exam]) -> list[Case]:
    surname = Counter(e.family for e in exams).most_common(1)[0][0]
    return [Case("/api/exams", "/api/exams"), Case("/api/exams?reviewed=no", "/api/exams?reviewed=no"),
            Case(f"/api/exams?search={surname}", "/api/exams?" + urlencode({"search": surname}))]


async def sample(server: Server, cases: list[Case], phase: str, stop: asyncio.Event) -> None:
    """One client on one keep-alive connection, the cases in turn, until `stop`."""
    async with session(server) as client:
        for case in cases:  # a warm-up each
            await get(client, server.base + case.path)
        i = 0
        while not stop.is_set():
            case = cases[i % len(cases)]
            i += 1
            try:
                ms, status, body = await get(client, server.base + case.path)
            except aiohttp.ClientError as exc:  # counted; the server's exit, if that is it, ends the phase
                case.failures.append(f"no answer ({type(exc).__name__})")
                await asyncio.sleep(0.1)
                continue
            if status == 200:
                getattr(case, phase).append(ms)
            else:
                case.failures.append(f"{status} {body[:120]!r}")


@dataclass
class Progress:
    launched: float  # perf_counter when the server was started
    fetched_at: float | None = None  # seconds after launch when the last report was stored
    graded_at: float | None = None
    fetched: int = 0
    graded: int = 0
    missing: int = 0
    grade_failed: int = 0
    cpu: float | None = None  # the server's CPU seconds over the phase (psutil), None without it
    series: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, fetched, graded)


def counts(db: Path) -> tuple[int, int, int, int]:
    conn = connect_ro(db)
    try:
        like = ROOT + ".%"
        fetched, graded, failed = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(severity >= 0), 0), COALESCE(SUM(grade_error != ''), 0) FROM rad_reports "
            "WHERE uid LIKE ?", (like,)).fetchone()
        missing = conn.execute("SELECT COUNT(*) FROM report_fetches WHERE state = 'missing' AND uid LIKE ?",
                               (like,)).fetchone()[0]
        return fetched, graded, failed, missing
    except sqlite3.OperationalError:  # locked for a moment by a writer: next poll
        return -1, -1, -1, -1
    finally:
        conn.close()


async def watch(db: Path, total: int, progress: Progress, timeout: float) -> None:
    while True:
        fetched, graded, failed, missing = await asyncio.to_thread(counts, db)
        now = time.perf_counter() - progress.launched
        if fetched >= 0:
            progress.fetched, progress.graded = fetched, graded
            progress.grade_failed, progress.missing = failed, missing
            progress.series.append((now, fetched, graded))
            if progress.fetched_at is None and fetched + missing >= total:
                progress.fetched_at = now
            if graded + failed + missing >= total:
                progress.graded_at = now
                return
        if now > timeout:
            return
        await asyncio.sleep(0.25)  # polling the database, with the timeout above


async def run_phase(server: Server, cases: list[Case], phase: str, *, seconds: float | None = None,
                    db: Path | None = None, total: int = 0, timeout: float = 0, spy: Path | None = None) -> Progress:
    progress = Progress(time.perf_counter())
    server.start()
    try:
        await wait_ready(server)
        assert server.proc is not None
        stop = asyncio.Event()
        with py_spy(server.proc.pid, spy):  # nothing without --py-spy
            sampler = asyncio.create_task(sample(server, cases, phase, stop))
            try:
                if seconds is not None:
                    await asyncio.sleep(seconds)  # the idle phase: a fixed measuring window, not a wait for anything
                else:
                    assert db is not None
                    await watch(db, total, progress, timeout)
            finally:
                stop.set()
                await sampler
        progress.cpu = server.cpu_seconds()
    finally:
        server.stop()
    return progress


# ------------------------------------------------------------------------------------------------ checks and report


def count_fhir_requests(log: Path) -> Counter[str]:
    """GETs in sekmet's (uvicorn's) access log by resource type; the loading was POSTs."""
    found: Counter[str] = Counter()
    for match in re.finditer(r'"GET /fhir/([A-Za-z]+)[^"]*" (\d{3})', log.read_text(errors="replace")):
        found[match.group(1) if match.group(2).startswith("2") else f"{match.group(1)} ({match.group(2)})"] += 1
    return found


def check(db: Path, exams: list[Exam]) -> list[str]:
    problems = []
    conn = connect_ro(db)
    try:
        rows = {r["uid"]: r for r in conn.execute(
            "SELECT r.uid, r.severity, r.positive, r.summary, r.text_en, r.radiologist, r.grade_error, e.status, "
            "(SELECT COUNT(*) FROM report_calls c WHERE c.uid = r.uid AND c.error IS NULL) AS calls "
            "FROM rad_reports r JOIN exams e ON e.uid = r.uid WHERE r.uid LIKE ?", (ROOT + ".%",))}
        wrong: Counter[str] = Counter()
        example = ""  # the model calls of the first exam without exactly 2
        for n, e in enumerate(exams):
            row = rows.get(e.uid)
            if row is None:
                wrong["no rad_reports row"] += 1
                continue
            expected = (0, 0, "normal") if e.normal else (1, 6, "opacity")
            if row["severity"] < 0:
                wrong[f"not graded ({row['grade_error'] or 'no error'})"] += 1
            elif (row["positive"], row["severity"], row["summary"]) != expected:
                wrong["graded otherwise than the model grades its text"] += 1
            if not row["text_en"]:
                wrong["no text_en (translation)"] += 1
            if row["radiologist"] != RADIOLOGISTS[n % len(RADIOLOGISTS)]:
                wrong["another radiologist"] += 1
            if row["calls"] != 2:
                if not example:
                    example = ", ".join(f"{c['kind']}: {c['error'] or 'ok'}" for c in conn.execute(
                        "SELECT kind, error FROM report_calls WHERE uid = ? ORDER BY seq", (e.uid,)))
                wrong["not exactly 2 usable model calls (translate, grade)"] += 1
            if row["status"] != schema.DONE:
                wrong[f"exam status {row['status']!r}, not done"] += 1
        problems += [f"{k} of {len(exams)} exams: {what}" + (f", e.g. [{example[:300]}]" if "calls" in what else "")
                     for what, k in wrong.items()]
        others = conn.execute("SELECT COUNT(*) FROM report_fetches WHERE uid NOT LIKE ?", (ROOT + ".%",)).fetchone()[0]
        if others:
            problems.append(f"{others} background exams were looked for too (the per-exam figures include them)")
    finally:
        conn.close()
    return problems


def stats(values: list[float]) -> tuple[float, float]:
    return (statistics.median(values), percentile(values, 95)) if values else (float("nan"), float("nan"))


def rate(count: int, seconds: float | None) -> str:
    return f"{count / seconds * 60:7.0f}/min" if seconds else "    n/a"


def steady(series: list[tuple[float, int, int]], index: int, total: int) -> str:
    """Per minute between 10 % and 90 % of the exams: the loop's pace without its start and its tail."""
    low = next((t for t, *c in series if c[index - 1] >= total * 0.1), None)
    high = next((t for t, *c in series if c[index - 1] >= total * 0.9), None)
    if low is None or high is None or high <= low:
        return "n/a"
    return f"{total * 0.8 / (high - low) * 60:.0f}/min"


def print_results(args: argparse.Namespace, cases: list[Case], progress: Progress, requests: Counter[str],
                  problems: list[str], model_summary: str) -> None:
    n = args.exams
    print()
    print(f"Reports ({n} exams; FETCH_BATCH {args.batch}, FETCH_INTERVAL 1 s, model CONCURRENCY {args.concurrency}, "
          "0 ms model); times from the server's launch:")
    print(f"  fetched {progress.fetched} (+{progress.missing} given up) in "
          f"{progress.fetched_at or float('nan'):.1f} s: {rate(progress.fetched, progress.fetched_at)} "
          f"(10-90 %: {steady(progress.series, 1, n)})")
    print(f"  graded  {progress.graded} (+{progress.grade_failed} failed) in "
          f"{progress.graded_at or float('nan'):.1f} s: {rate(progress.graded, progress.graded_at)} "
          f"(10-90 %: {steady(progress.series, 2, n)})")
    searches = {k: v for k, v in requests.items() if k != "metadata"}
    total = sum(searches.values())
    print(f"  FHIR requests: {total} searches/reads = {total / max(1, n):.2f} per exam "
          f"({', '.join(f'{k} {v}' for k, v in sorted(searches.items()))}); metadata probes {requests['metadata']}")
    print(f"  model server: {model_summary}")
    if progress.cpu is not None:
        print(f"  server CPU over the loop phase (its start and the API client's requests included): "
              f"{progress.cpu:.1f} s = {progress.cpu / n * 1000:.1f} ms per exam")
    print()
    print("/api/exams while idle (ENABLE_HIS off) and while the loop runs (one client, sequential; ms):")
    header = f"{'case':<32} {'idle n':>6} {'median':>7} {'p95':>7} {'loop n':>6} {'median':>7} {'p95':>7} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    met = True
    for c in cases:
        (im, ip), (dm, dp) = stats(c.idle), stats(c.during)
        ratio = dm / im if c.idle and c.during else float("nan")
        ok = bool(c.idle and c.during) and (ratio <= RATIO_TARGET or dm <= ip)
        met &= ok
        print(f"{c.label[:32]:<32} {len(c.idle):>6} {im:>7.1f} {ip:>7.1f} {len(c.during):>6} {dm:>7.1f} {dp:>7.1f} "
              f"{ratio:>6.2f}{'' if ok else '  over'}")
    print()
    print(f"Target: the API's median while the loop runs within noise of idle (ratio <= {RATIO_TARGET} or within "
          f"the idle p95, every case): {'met' if met else 'NOT met'}")
    for c in cases:
        for failure in sorted(set(c.failures)):
            print(f"WARNING: {c.label}: {c.failures.count(failure)} request(s) answered {failure}")
    for problem in problems:
        print(f"WARNING: {problem}")


async def measure(args: argparse.Namespace, workdir: Path, db: Path, sekmet: Sekmet, model: Model,
                  cases: list[Case]) -> Progress:
    idle = Server(workdir, db, {"processing": {"ENABLE_HIS": "false"}})
    print(f"Idle: the server with ENABLE_HIS off, {args.idle_seconds:.0f} s of /api/exams ...", flush=True)
    await run_phase(idle, cases, "idle", seconds=args.idle_seconds)
    loop = Server(workdir, db, {
        "processing": {"ENABLE_HIS": "true"},
        "openai": {"OPENAI_URL_PRIMARY": model.url, "MODEL_NAME": MODEL, "CONCURRENCY": str(args.concurrency)},
        "fhir": {"FHIR_URL": sekmet.base_url, "FHIR_USERNAME": USER[0], "FHIR_PASSWORD": USER[1],
                 "IDENTIFIER_SYSTEM": SYSTEM, "FETCH_INTERVAL": "1", "FETCH_BATCH": str(args.batch),
                 "LOOKBACK_DAYS": str(LOOKBACK_DAYS), "TIMEOUT": "30"},
    })
    print(f"Loop: the server with ENABLE_HIS on, until all {args.exams} reports are graded (at most "
          f"{args.timeout:.0f} s) ...", flush=True)
    progress = await run_phase(loop, cases, "during", db=db, total=args.exams, timeout=args.timeout,
                               spy=args.py_spy)
    log = loop.log.read_text(errors="replace")
    warnings = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line or "Traceback" in line]
    if warnings:
        print(f"  the server logged {len(warnings)} warning/error line(s), e.g.: {warnings[0][:200]}")
    return progress


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reports fetched from sekmet-fhir and graded; API latency meanwhile")
    parser.add_argument("--exams", type=int, default=1000, help="done exams with a report on sekmet (default 1000)")
    parser.add_argument("--batch", type=int, default=100, help="[fhir] FETCH_BATCH (default 100)")
    parser.add_argument("--concurrency", type=int, default=4, help="the model endpoint's CONCURRENCY (default 4)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the loop may take (default 600)")
    parser.add_argument("--background", type=int, default=20_000,
                        help="other exams in the database, api_bench's seeding (default 20000; 0: none)")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="seconds of the idle phase (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the data (default 1)")
    parser.add_argument("--py-spy", metavar="FILE", type=Path,
                        help="record the server of the loop phase with py-spy (raw collapsed stacks) into FILE")
    parser.add_argument("--keep", type=Path, help="copy the database and the servers' logs into this folder at the end")
    parser.add_argument("--tmpdir", type=Path, help="where the temporary folder goes (default: the system's)")
    args = parser.parse_args(argv)
    if min(args.exams, args.batch, args.concurrency) < 1 or args.background < 0:
        parser.error("--exams, --batch and --concurrency must be positive, --background not negative")
    if args.py_spy and not shutil.which("py-spy"):
        parser.error("py-spy not found: pip install py-spy")
    if not (grading.is_english(NORMAL) is False and grading.is_english(ABNORMAL) is False):
        parser.error("the report texts would not be translated")

    began = time.perf_counter()
    print(f"Machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, aiohttp {aiohttp.__version__}")
    try:
        run(args)
    except KeyboardInterrupt:
        print("\nInterrupted: everything this script started is stopped and its temporary folder removed")
        return 130
    except pytest.fail.Exception as exc:  # tests/sekmet.py's way of saying sekmet is missing or did not start
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\nTotal time {time.perf_counter() - began:.0f} s")
    return 0


def run(args: argparse.Namespace) -> None:
    sekmet: Sekmet | None = None
    model: Model | None = None
    with tempfile.TemporaryDirectory(prefix="xrv-fhir-bench-", dir=args.tmpdir) as tmp:
        workdir = Path(tmp)
        db = workdir / "xrayvision.db"
        try:
            exams, seconds = asyncio.run(seed_db(db, args.exams, args.background, args.seed))
            print(f"Database: {args.exams} done exams (+{args.background} background) seeded in {seconds:.1f} s",
                  flush=True)
            t = time.perf_counter()
            sekmet = start_sekmet(workdir / "sekmet")
            started = time.perf_counter() - t
            t = time.perf_counter()
            load_fhir(sekmet, exams)
            print(f"sekmet-fhir: {sekmet.base_url} started in {started:.1f} s; {3 * args.exams} resources loaded "
                  f"in {time.perf_counter() - t:.1f} s ({BUNDLE_EXAMS * 3} per transaction Bundle)", flush=True)
            model = Model(workdir)
            model.start()
            cases = make_cases(exams)
            progress = asyncio.run(measure(args, workdir, db, sekmet, model, cases))
            model.stop()
            sekmet.stop()  # its access log is complete once it has stopped
            requests = count_fhir_requests(sekmet.log_path)
            problems = check(db, exams)
            if progress.graded_at is None:
                problems.append(f"the loop did not finish within {args.timeout:.0f} s")
            closing, model_problems = model.summary()
            print_results(args, cases, progress, requests, problems + model_problems, closing)
        finally:
            if model is not None:
                model.stop()
            if sekmet is not None and sekmet.process.poll() is None:
                sekmet.stop()
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                kept = [*workdir.glob("xrayvision.db*"), *workdir.glob("*.log"), workdir / "sekmet" / "sekmet.log"]
                for path in kept:
                    if path.is_file():
                        shutil.copy2(path, args.keep / path.name)


if __name__ == "__main__":
    raise SystemExit(main())
