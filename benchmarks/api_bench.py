"""Read latency and throughput of the XRayVision JSON API over a large, realistic database.

Run: python benchmarks/api_bench.py [--exams 100000] [--patients 30000] [--requests 60] [--clients 8]
         [--duration 10] [--db PATH] [--explain]

1. Seeds a database through the product's Store (`await Store(path).open()` runs the real migrations), in large
   transactions with executemany: patients with Romanian-like names and valid CNPs (a few with a hospital id
   instead), exams over the last two years (regions weighted toward chest; unsupported regions 'ignore'; most
   supported ones 'done', some 'queued', 'error', 'requeue'), AI answers for the analysed exams (a few analysed
   twice), graded radiologist reports for about 60 % of the done exams, manual reviews for about 5 %. The rows go
   into ai_reports, rad_reports and reviews, so the schema's triggers fill the copies on `exams`; the script checks
   that they did. No image files: the image column names PNGs that do not exist (only JSON routes are measured).
   With --db PATH an existing database is reused as it is, and a missing one is seeded there and kept.
2. Starts the real server in its own process (`python -m xrayvision --config <temporary cfg>`: that database, one
   admin user with a long password, rate limits off, no model endpoint, free ports), so that the client's CPU is
   not the server's.
3. From this process, with aiohttp (keep-alive, Basic auth): for every case, a warm-up, then --requests
   sequential requests (fewer if a case passes --case-budget seconds); median and p95 in ms. Cases: /api/exams
   with no filter, each filter alone, combinations, deep pages; /api/exams/{uid}; /api/patients (with and without
   a search); /api/patients/{cnp}; /api/regions; /api/config.
4. Then --clients concurrent clients (one keep-alive connection each) on /api/exams with a mix of filters for
   --duration seconds: requests/s, median and p95, and the server's CPU.
5. Stops the server and times the same reads without HTTP, in this process: the product's worklist functions
   through a Store ("store ms"), and for /api/exams the three statements worklist.list_exams runs (the count,
   the page of UIDs, the page's rows), with plain sqlite3. --explain prints their query plans.
6. Prints one table and whether each target is met.

It asserts nothing: it prints figures (and a WARNING line for a trigger copy that disagrees with its table, or a
request that did not answer 200). It stops the server it started and removes its temporary folder.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
from aiohttp.test_utils import make_mocked_request

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _process import stop_process  # noqa: E402

from xrayvision.clinical.cnp import age_on, parse_cnp  # noqa: E402
from xrayvision.config import User, load_settings  # noqa: E402
from xrayvision.keys import USER  # noqa: E402
from xrayvision.store import Store, schema, worklist  # noqa: E402
from xrayvision.store.filters import ExamFilter  # noqa: E402
from xrayvision.web import api  # noqa: E402

try:
    import psutil
except ImportError:  # optional: only the server's CPU figure needs it
    psutil = None

TARGET_LIST_MS = 25.0  # every /api/exams case, median
TARGET_DETAIL_MS = 5.0  # /api/exams/{uid}, median
TARGET_RPS = 200.0  # the concurrent clients on /api/exams
REFERENCE = ("the public reference implementation answers /api/exams in 254 ms at 50,000 exams and serves "
             "8 clients at 4 req/s on this machine (figures given with the target, not measured here)")

# ------------------------------------------------------------------------------------------------ the data

SURNAMES = [
    "Popescu", "Ionescu", "Popa", "Pop", "Radu", "Dumitru", "Stan", "Stoica", "Gheorghe", "Matei", "Ciobanu",
    "Constantin", "Rusu", "Mihai", "Munteanu", "Marin", "Șerban", "Florea", "Toma", "Ene", "Lazăr", "Dinu", "Nistor",
    "Georgescu", "Moldovan", "Barbu", "Cristea", "Ungureanu", "Dobre", "Neagu", "Vasile", "Tudor", "Ilie", "Preda",
    "Oprea", "Dragomir", "Nedelcu", "Zamfir", "Badea", "Mocanu", "Iordache", "Ardeleanu", "Manole", "Sandu", "Voicu",
    "Crăciun", "Enache", "Anghel", "Bratu", "Diaconu", "Avram", "Petrescu", "Stanciu", "Cojocaru", "Lungu",
    "Mihăilă", "Drăgan", "Grigore", "Roșu", "Paraschiv", "Mureșan", "Sârbu", "Bălan", "Lupu", "Costache", "Nițu",
    "Tănase", "Chiriac", "Surdu", "Husar", "Pavel", "Dobrescu", "Olteanu", "Coman", "Văduva", "Cazacu", "Pîrvu",
]
MALE = ["Ion", "Gheorghe", "Vasile", "Constantin", "Mihai", "Alexandru", "Andrei", "Nicolae", "Ștefan", "Dumitru",
        "Florin", "Adrian", "Marian", "Cristian", "Daniel", "Gabriel", "Bogdan", "Ionuț", "Radu", "Mircea", "Sorin",
        "Cătălin", "Vlad", "Teodor", "Petru", "Costel", "Aurel", "Emil", "Lucian", "Tudor", "Matei", "David"]
FEMALE = ["Maria", "Elena", "Ioana", "Ana", "Mihaela", "Andreea", "Cristina", "Gabriela", "Daniela", "Alexandra",
          "Georgeta", "Florica", "Mariana", "Ileana", "Adriana", "Raluca", "Simona", "Alina", "Roxana", "Ecaterina",
          "Viorica", "Doina", "Camelia", "Larisa", "Irina", "Oana", "Bianca", "Sofia", "Ilinca", "Rodica", "Lucia"]
RADIOLOGISTS = ["Pop Mihaela", "Ionescu Radu", "Dobre Cristina", "Marin Andrei", "Stoica Elena", "Toma Bogdan",
                "Neagu Ioana", "Lazăr Dan", "Avram Simona", "Grigore Vlad", "Chiriac Ana", "Sandu Mircea",
                "Olteanu Irina", "Bălan Sorin", "Preda Raluca"]
REVIEWERS = ["admin", "mpop", "rionescu", "cdobre", "rezident1"]
COUNTIES = [*range(1, 47), 51, 52]
HOME_COUNTY = 33  # most patients live where the hospital is

# region: (weight %, protocols)
REGIONS: dict[str, tuple[float, list[str]]] = {
    "chest": (62, ["Torace AP", "Torace PA", "Torace PA + profil", "Pulmon PA", "Torace AP la pat", "Chest PA"]),
    "abdomen": (6, ["Abdomen simplu", "Abdomen pe gol", "Abdomen ortostatism"]),
    "paranasal_sinuses": (4, ["Sinusuri fata", "Sinusuri anterioare"]),
    "clavicle": (2, ["Clavicula dr", "Clavicula stg"]),
    "nasal_bones": (2, ["Piramida nazala profil", "Oase nazale"]),
    "spine": (5, ["Coloana lombara AP+LL", "Coloana cervicala", "Coloana toracala"]),
    "knee": (4, ["Genunchi AP+LL dr", "Genunchi stg"]),
    "hand": (3, ["Mana dr", "Pumn stg", "Deget III dr"]),
    "foot": (3, ["Picior dr", "Calcai stg"]),
    "pelvis": (2, ["Bazin AP"]),
    "skull": (2, ["Craniu fata+profil"]),
    "shoulder": (2, ["Umar dr", "Umar stg"]),
    "ankle": (1.5, ["Glezna dr", "Glezna stg"]),
    "elbow": (0.5, ["Cot dr"]),
    "": (1, ["Examen", "Scanogram"]),  # no rule matched
}
SUPPORTED = {"chest", "abdomen", "paranasal_sinuses", "clavicle", "nasal_bones"}  # defaults.cfg
# Graded reports' summaries (the `diagnostic` filter): (normal ones, abnormal ones) per region; about 40 in all.
DIAGNOSTICS: dict[str, tuple[list[str], list[str]]] = {
    "chest": (["normal", "no acute findings", "minimal interstitial changes", "unchanged from prior"],
              ["pneumonia", "pleural effusion", "pneumothorax", "cardiomegaly", "pulmonary edema", "atelectasis",
               "pulmonary nodule", "lung mass", "consolidation", "interstitial pneumonia", "hilar enlargement",
               "rib fracture", "emphysema", "tuberculosis sequelae", "mediastinal widening", "pleural thickening",
               "bronchopneumonia", "covid-19 pneumonia", "aortic elongation"]),
    "abdomen": (["normal bowel gas pattern", "fecal loading"],
                ["bowel obstruction", "free intraperitoneal air", "air-fluid levels", "renal calculi"]),
    "paranasal_sinuses": (["normal sinuses"], ["maxillary sinusitis", "sinus mucosal thickening",
                                               "sinus air-fluid level"]),
    "clavicle": (["no fracture"], ["clavicle fracture", "acromioclavicular dislocation"]),
    "nasal_bones": (["no fracture"], ["nasal bone fracture"]),
}
RO_FINDINGS = {
    "normal": "Campuri pulmonare fara leziuni focale. Sinusuri costo-diafragmatice libere. Cord cu dimensiuni normale.",
    "abnormal": "Se vizualizeaza {d} la nivelul {side}. Se recomanda corelare clinica si control radiologic.",
}
SIDES = [("bazei pulmonare drepte", "right lower zone"), ("bazei pulmonare stangi", "left lower zone"),
         ("campului pulmonar mijlociu drept", "right mid zone"), ("hemitoracelui stang", "left hemithorax"),
         ("regiunii hilare bilateral", "hila"), ("etajului superior drept", "right upper zone")]
AI_NORMAL = ("The image shows no {q}. Lung fields are clear, costophrenic angles are sharp and the heart is not "
             "enlarged.")
AI_ABNORMAL = ("There is {d} in the {side}. The finding is {conf} and warrants radiologist review. Other structures "
               "appear within normal limits for age.")
ERRORS = ["model endpoint unavailable after 4 attempts: timed out after 300 s",
          "answer is not valid JSON after 2 retries", "could not read the image: truncated PNG"]
SEVERITY_WEIGHTS = [18, 14, 12, 8, 6, 9, 10, 9, 7, 5, 2]  # the truth's severity 0..10; threshold 5 -> ~42 % positive
THRESHOLD = 5  # [processing] SEVERITY_THRESHOLD: the default, which the benchmark's server runs with


def cnp_check(first12: str) -> str:
    rest = sum(int(d) * int(w) for d, w in zip(first12, "279146358279")) % 11
    return str(1 if rest == 10 else rest)


def store_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Patient:
    cnp: str
    name: str
    birthdate: dt.date | None
    sex: str
    county: int | None


def make_patients(rng: random.Random, count: int, now: dt.datetime) -> list[Patient]:
    """Valid CNPs (checked with the product's parser), except about 2 % who only have a hospital PatientID."""
    patients: list[Patient] = []
    seen: set[str] = set()
    latest_birth = now.date() - dt.timedelta(days=2 * 366)  # born before the first exam
    bands = [((2, 17), 10), ((18, 39), 18), ((40, 59), 27), ((60, 79), 33), ((80, 98), 12)]
    while len(patients) < count:
        sex = rng.choice("MF")
        given = rng.choice(MALE if sex == "M" else FEMALE)
        if rng.random() < 0.12:
            given += " " + rng.choice(MALE if sex == "M" else FEMALE)
        name = f"{rng.choice(SURNAMES)} {given}"
        if rng.random() < 0.02:
            pid = f"HIS{rng.randrange(10**6, 10**7)}"
            if pid not in seen:
                seen.add(pid)
                patients.append(Patient(pid, name, None, sex, None))
            continue
        (low, high), = rng.choices([b for b, _ in bands], [w for _, w in bands])
        birth = min(now.date() - dt.timedelta(days=int(rng.uniform(low, high + 1) * 365.25)), latest_birth)
        county = HOME_COUNTY if rng.random() < 0.7 else rng.choice(COUNTIES)
        digit = ("1" if sex == "M" else "2") if birth.year < 2000 else ("5" if sex == "M" else "6")
        serial = rng.randrange(1, 1000)
        first12 = f"{digit}{birth.year % 100:02d}{birth.month:02d}{birth.day:02d}{county:02d}{serial:03d}"
        cnp = first12 + cnp_check(first12)
        if cnp in seen:
            continue
        decoded = parse_cnp(cnp, today=now.date())
        assert decoded is not None and decoded.birthdate == birth, cnp
        seen.add(cnp)
        patients.append(Patient(cnp, name, birth, sex, county))
    return patients


@dataclass
class Rows:
    patients: list[tuple] = field(default_factory=list)
    exams: list[tuple] = field(default_factory=list)
    ai: list[tuple] = field(default_factory=list)
    ai_again: list[tuple] = field(default_factory=list)  # re-analyses: inserted after the first answers
    rad: list[tuple] = field(default_factory=list)
    reviews: list[tuple] = field(default_factory=list)
    reviews_again: list[tuple] = field(default_factory=list)


def make_rows(seed: int, n_patients: int, n_exams: int) -> Rows:
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    patients = make_patients(rng, n_patients, now)
    rows = Rows()
    for p in patients:
        rows.patients.append((p.cnp, "", p.cnp, p.name, p.birthdate.isoformat() if p.birthdate else None, p.sex,
                              p.county, store_time(now)))
    # Every patient has an exam; the rest go mostly to a few (long Pareto tail: follow-ups of the chronically ill).
    weights = [rng.paretovariate(1.3) for _ in patients]
    owners = list(range(len(patients))) + rng.choices(range(len(patients)), weights, k=max(0, n_exams - len(patients)))
    rng.shuffle(owners)
    owners = owners[:n_exams]
    # Exam times over two years: mostly working hours (05-17 UTC), some at night (emergencies).
    times = []
    for _ in range(n_exams):
        day = now - dt.timedelta(days=rng.randrange(730))
        hour = rng.randrange(5, 17) if rng.random() < 0.8 else rng.randrange(24)
        moment = day.replace(hour=hour, minute=rng.randrange(60), second=rng.randrange(60))
        if moment > now - dt.timedelta(minutes=20):  # today, later than now: earlier today instead
            moment = now - dt.timedelta(minutes=rng.randrange(20, 12 * 60))
        times.append(moment)
    times.sort()
    region_names = list(REGIONS)
    region_weights = [REGIONS[r][0] for r in region_names]
    recent = now - dt.timedelta(hours=12)  # the model has been down since: what came in since waits
    reported_lag = now - dt.timedelta(days=2)
    root = "1.2.826.0.1.3680043.10.543"
    for n, (created, owner) in enumerate(zip(times, owners)):
        patient = patients[owner]
        region = rng.choices(region_names, region_weights)[0]
        protocol = rng.choice(REGIONS[region][1])
        uid = f"{root}.{created:%Y%m%d}.{n + 1}.{rng.randrange(10**8)}"
        received = created + dt.timedelta(seconds=rng.randrange(20, 900))
        radiograph = rng.random() > 0.004
        modality = rng.choice(["CR", "DX", "DX"]) if radiograph else "OT"
        sop_class = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
                     "OT": "1.2.840.10008.5.1.4.1.1.7"}[modality]
        transfer = "1.2.840.10008.1.2.4.70" if rng.random() < 0.15 else "1.2.840.10008.1.2.1"
        projection = ("lateral" if "profil" in protocol.lower() and rng.random() < 0.5 else
                      rng.choice(["frontal", "frontal", "frontal", ""]))
        reason = ""
        attempts = 1
        if not radiograph:
            status, attempts = schema.IGNORE, 0
            reason = "not a radiograph: modality OT (Secondary Capture Image Storage)"
        elif region not in SUPPORTED:
            status = schema.IGNORE
            reason = (f"region '{region}' is not analysed (not in [supported_regions])" if region
                      else "no region recognised")
        elif received > recent and rng.random() < 0.9:
            status, attempts = schema.QUEUED, 0  # no model: the newest wait
        else:
            roll = rng.random()
            if roll < 0.02:
                status, reason, attempts = schema.ERROR, rng.choice(ERRORS), 4
            elif roll < 0.023:
                status = schema.REQUEUE
            else:
                status = schema.DONE
        age = age_on(patient.birthdate, created.date()) if patient.birthdate else None
        rows.exams.append((
            uid, patient.cnp, f"{created:%y}{n + 1:08d}", store_time(created), store_time(received),
            store_time(received + dt.timedelta(minutes=2)), protocol, region, projection, modality, sop_class,
            transfer, age, status, reason, f"{root}.1.{n + 1}", f"{root}.2.{n + 1}", None,
            f"{uid}.png" if radiograph else None, attempts, None,
        ))
        if status not in (schema.DONE, schema.REQUEUE):
            continue
        truth = rng.choices(range(11), SEVERITY_WEIGHTS)[0]
        normals, abnormals = DIAGNOSTICS[region]
        diagnostic = rng.choice(normals if truth < THRESHOLD else abnormals)
        ai_severity = min(10, max(0, truth + rng.choice([-2, -1, -1, 0, 0, 0, 0, 1, 1, 2])))
        if rng.random() < 0.08:
            ai_severity = rng.randrange(11)  # the model is plainly wrong now and then
        confidence = min(99, max(30, int(rng.gauss(82, 10))))
        side, side_en = rng.choice(SIDES)
        ai_text = (AI_ABNORMAL.format(d=diagnostic, side=side_en, conf=rng.choice(["likely", "possible", "clear"]))
                   if ai_severity >= THRESHOLD else AI_NORMAL.format(q=rng.choice(abnormals)))
        answered = received + dt.timedelta(seconds=rng.randrange(15, 240))
        answer = (uid, store_time(answered), store_time(answered), ai_text, int(ai_severity >= THRESHOLD), confidence,
                  ai_severity, diagnostic if ai_severity >= THRESHOLD else "no acute findings", "medgemma-4b-it",
                  rng.choice(["pri", "pri", "pri", "sec"]), "3", rng.randrange(4000, 25000), rng.randrange(600, 900),
                  rng.randrange(80, 300))
        if rng.random() < 0.03:  # analysed twice: the later answer is the one the exam shows
            earlier = list(answer)
            earlier[1] = earlier[2] = store_time(answered - dt.timedelta(hours=1))
            earlier[6] = rng.randrange(11)
            earlier[4] = int(earlier[6] >= THRESHOLD)
            rows.ai.append(tuple(earlier))
            rows.ai_again.append(answer)
        else:
            rows.ai.append(answer)
        if status == schema.DONE and rng.random() < (0.62 if created < reported_lag else 0.15):
            reported = received + dt.timedelta(hours=rng.uniform(1, 48))
            text = (RO_FINDINGS["normal"] if truth < THRESHOLD
                    else RO_FINDINGS["abnormal"].format(d=diagnostic, side=side))
            rows.rad.append((uid, f"RZ{n + 1:07d}", store_time(reported), store_time(reported),
                             f"{protocol}: {text}", None, int(truth >= THRESHOLD), truth, diagnostic.capitalize(),
                             "Radiografie", rng.choices(RADIOLOGISTS, range(len(RADIOLOGISTS), 0, -1))[0],
                             "graded from the report's findings", "medgemma-4b-it", rng.randrange(2000, 9000)))
        if status == schema.DONE and rng.random() < 0.05:
            reviewed = received + dt.timedelta(hours=rng.uniform(0.2, 12))
            verdict = int(truth >= THRESHOLD) if rng.random() < 0.92 else int(truth < THRESHOLD)
            review = (uid, rng.choice(REVIEWERS), verdict, store_time(reviewed))
            if rng.random() < 0.1:  # changed their mind: the later verdict counts
                rows.reviews.append((uid, rng.choice(REVIEWERS), 1 - verdict,
                                     store_time(reviewed - dt.timedelta(minutes=5))))
                rows.reviews_again.append(review)
            else:
                rows.reviews.append(review)
    return rows


INSERTS = {
    "patients": "INSERT INTO patients (cnp, id, patient_id, name, birthdate, sex, county, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "exams": "INSERT INTO exams (uid, cnp, id, created, received, updated, protocol, region, projection, type, "
             "sop_class, transfer_syntax, age, status, reason, study, series, dicom, image, attempts, retry_at) "
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "ai_reports": "INSERT INTO ai_reports (uid, created, updated, text, positive, confidence, severity, summary, "
                  "model, endpoint, prompt_version, latency, tokens_in, tokens_out) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "rad_reports": "INSERT INTO rad_reports (uid, id, created, updated, text, text_en, positive, severity, summary, "
                   "type, radiologist, justification, model, latency) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "reviews": "INSERT INTO reviews (uid, reviewer, verdict, created) VALUES (?, ?, ?, ?)",
}
CHUNK = 50_000  # rows per transaction


async def seed(path: Path, n_patients: int, n_exams: int, seed_value: int) -> tuple[float, float]:
    """Generate and insert; returns (seconds generating, seconds inserting)."""
    t = time.perf_counter()
    rows = make_rows(seed_value, n_patients, n_exams)
    generated = time.perf_counter() - t
    t = time.perf_counter()
    store = await Store(path).open()  # the real migrations
    try:
        for table, data in (("patients", rows.patients), ("exams", rows.exams), ("ai_reports", rows.ai),
                            ("ai_reports", rows.ai_again), ("rad_reports", rows.rad), ("reviews", rows.reviews),
                            ("reviews", rows.reviews_again)):
            for start in range(0, len(data), CHUNK):
                async with store.transaction() as conn:
                    await conn.executemany(INSERTS[table], data[start:start + CHUNK])
    finally:
        await store.close()
    return generated, time.perf_counter() - t


TRIGGER_CHECKS = {
    "ai_severity/ai_confidence = the latest AI answer's":
        "SELECT COUNT(*) FROM exams e LEFT JOIN ai_reports a ON a.seq = (SELECT MAX(seq) FROM ai_reports "
        "WHERE uid = e.uid) WHERE e.ai_severity != COALESCE(a.severity, -1) "
        "OR e.ai_confidence != COALESCE(a.confidence, -1)",
    "rad_severity/radiologist/diagnostic = the graded report's":
        "SELECT COUNT(*) FROM exams e LEFT JOIN rad_reports r ON r.uid = e.uid "
        "WHERE e.rad_severity != COALESCE(r.severity, -1) OR e.radiologist != COALESCE(r.radiologist, '') "
        "OR e.diagnostic != COALESCE(LOWER(r.summary), '')",
    "verdict = the latest review's":
        "SELECT COUNT(*) FROM exams e LEFT JOIN reviews v ON v.seq = (SELECT MAX(seq) FROM reviews WHERE uid = e.uid) "
        "WHERE e.verdict != COALESCE(v.verdict, -1)",
}


def connect_ro(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA query_only = ON")
    return conn


def describe_db(path: Path) -> tuple[dict[str, int], list[str]]:
    """Row counts and the exam mix; and a problem line for every trigger copy that disagrees with its table."""
    conn = connect_ro(path)
    try:
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("patients", "exams", "ai_reports", "rad_reports", "reviews")}
        for status, n in conn.execute("SELECT status, COUNT(*) FROM exams GROUP BY status ORDER BY 2 DESC"):
            counts[f"status {status}"] = n
        for label, sql in (("chest", "region = 'chest'"), ("reviewed", "verdict >= 0 OR rad_severity >= 0"),
                           ("AI positive", f"ai_severity >= {THRESHOLD}"), ("with a review", "verdict >= 0"),
                           ("with a report", "rad_severity >= 0")):
            counts[label] = conn.execute(f"SELECT COUNT(*) FROM exams WHERE {sql}").fetchone()[0]
        problems = []
        for label, sql in TRIGGER_CHECKS.items():
            wrong = conn.execute(sql).fetchone()[0]
            if wrong:
                problems.append(f"{wrong} exams disagree: {label}")
        if counts["exams"] and counts["ai_reports"] and not conn.execute(
                "SELECT COUNT(*) FROM exams WHERE ai_severity >= 0").fetchone()[0]:
            problems.append("no exam carries an AI answer: the triggers did not run")
        return counts, problems
    finally:
        conn.close()


@dataclass
class Picks:
    """Real values from the database for the cases: a common surname, a patient's CNP, a diagnostic, a radiologist,
    and exams and patients to cycle through."""
    surname: str
    cnp: str
    diagnostic: str
    radiologist: str
    uids: list[str]
    cnps: list[str]


def pick(path: Path, seed_value: int) -> Picks:
    rng = random.Random(seed_value + 1)
    conn = connect_ro(path)
    try:
        surnames = Counter(row[0].split(" ")[0] for row in conn.execute("SELECT name FROM patients"))
        surname = surnames.most_common(1)[0][0]
        cnp = conn.execute("SELECT cnp FROM exams WHERE cnp NOT LIKE 'HIS%' GROUP BY cnp HAVING COUNT(*) "
                           "BETWEEN 3 AND 6 ORDER BY cnp LIMIT 1").fetchone()[0]
        diagnostic = conn.execute(f"SELECT diagnostic FROM exams WHERE rad_severity >= {THRESHOLD} GROUP BY diagnostic "
                                  "ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]
        radiologist = conn.execute("SELECT radiologist FROM exams WHERE radiologist != '' GROUP BY radiologist "
                                   "ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]
        uids = [r[0] for r in conn.execute("SELECT uid FROM exams ORDER BY uid")]
        cnps = [r[0] for r in conn.execute("SELECT cnp FROM patients ORDER BY cnp")]
    finally:
        conn.close()
    return Picks(surname, cnp, diagnostic, radiologist, rng.sample(uids, min(100, len(uids))),
                 rng.sample(cnps, min(100, len(cnps))))


# ------------------------------------------------------------------------------------------------ the server


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Server:
    """`python -m xrayvision --config <cfg>` on the seeded database, in its own process."""

    def __init__(self, workdir: Path, db: Path, extra: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """`extra`: more config keys by section, over these (fhir_bench.py adds FHIR and a model endpoint)."""
        self.workdir = workdir
        self.db = db
        self.config = workdir / "xrayvision.cfg"
        self.log = workdir / "server.log"
        self.password = secrets.token_urlsafe(32)
        ports: set[int] = set()
        self.ae_port, self.port = free_port(ports), free_port(ports)
        self.proc: subprocess.Popen[bytes] | None = None
        sections: dict[str, dict[str, str]] = {
            "general": {"XRAYVISION_DB_PATH": str(db), "XRAYVISION_BACKUP_DIR": str(workdir / "backup"),
                        "IMAGES_DIR": str(workdir / "images"), "LOG_LEVEL": "WARNING"},
            "users": {"admin": f"{self.password},admin"},
            "dicom": {"AE_PORT": str(self.ae_port)},
            "openai": {"OPENAI_URL_PRIMARY": ""},
            # Every benchmark client comes from 127.0.0.1, where a ward's 200 browsers would come from 200 hosts.
            "dashboard": {"DASHBOARD_PORT": str(self.port), "RATE_LIMIT": "0", "RATE_LIMIT_HEAVY": "0",
                          "MAX_CONNECTIONS_PER_HOST": "512"},
        }
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        self.config.write_text("".join(f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
                                       for section, values in sections.items()), encoding="utf-8")
        # The same settings the server will read (fails here, with the message, if the file is wrong).
        self.settings = load_settings(self.config, environ={}, base_dir=workdir)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> str:
        return "Basic " + base64.b64encode(f"admin:{self.password}".encode()).decode()

    def start(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XRAYVISION_")}  # only our config counts
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "xrayvision", "--config", str(self.config)],
                                         cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode} at start:\n{tail(self.log)}")
            try:
                with contextlib.closing(socket.create_connection(("127.0.0.1", self.port), timeout=1)):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not listen within {timeout:.0f} s:\n{tail(self.log)}")

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)
        self.proc = None

    def cpu_seconds(self) -> float | None:
        if psutil is None or self.proc is None:
            return None
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system


# ------------------------------------------------------------------------------------------------ the cases


@dataclass
class Case:
    label: str
    paths: list[str]  # cycled through, request after request
    target_ms: float | None = None
    exam_query: str | None = None  # /api/exams cases: the query, for the SQL breakdown
    store_call: Callable[[Store, int], Awaitable[object]] | None = None  # the handler's read, without HTTP
    # figures
    times: list[float] = field(default_factory=list)
    total: int | None = None
    failures: list[str] = field(default_factory=list)
    store_ms: float | None = None
    sql_ms: tuple[float, float, float] | None = None  # count, page of UIDs, the page's rows


def exam_filter_of(query: str) -> tuple[ExamFilter, int]:
    """The filter and page the API makes of a query string, as an admin (the product's own parsing)."""
    request = make_mocked_request("GET", f"/api/exams?{query}")
    request[USER] = User(name="admin", password="", role="admin")
    return api.exam_filter(request), int(request.query.get("page", "1"))


def make_cases(picks: Picks, page_size: int) -> list[Case]:
    def q(**params: str) -> str:
        return urlencode(params)

    def exams_case(label: str, query: str) -> Case:
        where, page = exam_filter_of(query)

        async def call(store: Store, _: int) -> object:
            return await worklist.list_exams(store, where, page, page_size, THRESHOLD)

        return Case(label, [f"/api/exams?{query}" if query else "/api/exams"], TARGET_LIST_MS, query, call)

    name, cnp, diag, rad = picks.surname, picks.cnp, picks.diagnostic, picks.radiologist
    lists = [
        ("(no filter)", ""),
        ("reviewed=yes", "reviewed=yes"), ("reviewed=no", "reviewed=no"),
        ("positive=yes", "positive=yes"), ("positive=no", "positive=no"),
        ("correct=yes", "correct=yes"), ("correct=no", "correct=no"),
        ("region=chest", "region=chest"),
        ("status=done", "status=done"), ("status=error,ignore", "status=error,ignore"),
        (f"search={name}", q(search=name)), ("search=<CNP>", q(search=cnp)),
        (f"diagnostic={diag}", q(diagnostic=diag)), (f"radiologist={rad}", q(radiologist=rad)),
        ("severity=7-", "severity=7-"), ("confidence=90-", "confidence=90-"), ("sort=triage", "sort=triage"),
        ("reviewed=no&positive=yes&sort=triage", "reviewed=no&positive=yes&sort=triage"),
        ("region=chest&status=done&severity=5-", "region=chest&status=done&severity=5-"),
        (f"search={name}&positive=yes", q(search=name, positive="yes")),
        (f"radiologist={rad}&correct=no", q(radiologist=rad, correct="no")),
        ("status=done&reviewed=yes&correct=no&confidence=90-", "status=done&reviewed=yes&correct=no&confidence=90-"),
        ("page=500", "page=500"), ("region=chest&page=500", "region=chest&page=500"),
        ("sort=triage&page=500", "sort=triage&page=500"),
    ]
    cases = [exams_case(label, query) for label, query in lists]

    async def exam(store: Store, i: int) -> object:
        return await worklist.get_exam(store, picks.uids[i % len(picks.uids)], THRESHOLD)

    async def patients(store: Store, _: int, search: str | None = None) -> object:
        return await worklist.list_patients(store, search, True, 1, page_size)

    async def patients_deep(store: Store, _: int) -> object:
        return await worklist.list_patients(store, None, True, 500, page_size)

    async def patient(store: Store, i: int) -> object:
        return await worklist.get_patient(store, picks.cnps[i % len(picks.cnps)])

    async def regions(store: Store, _: int) -> object:
        return await worklist.regions(store)

    fragment = name[:4].lower()

    async def patients_search(store: Store, i: int) -> object:
        return await patients(store, i, fragment)

    cases += [
        Case("/api/exams/{uid} (100 exams)", [f"/api/exams/{uid}" for uid in picks.uids], TARGET_DETAIL_MS,
             store_call=exam),
        Case("/api/patients", ["/api/patients"], store_call=patients),
        Case(f"/api/patients?search={fragment}", [f"/api/patients?{q(search=fragment)}"],
             store_call=patients_search),
        Case("/api/patients?page=500", ["/api/patients?page=500"], store_call=patients_deep),
        Case("/api/patients/{cnp} (100 patients)", [f"/api/patients/{c}" for c in picks.cnps], store_call=patient),
        Case("/api/regions", ["/api/regions"], store_call=regions),
        Case("/api/config", ["/api/config"]),
    ]
    return cases


def concurrent_mix(picks: Picks) -> list[str]:
    """What a ward's dashboards ask for: the default worklist and its first pages, the triage view, the common
    filters, a name search now and then."""
    queries = ["", "", "page=2", "sort=triage", "reviewed=no&positive=yes&sort=triage", "reviewed=no",
               "positive=yes", "region=chest", "status=done", "severity=7-", "correct=no",
               urlencode({"search": picks.surname}), urlencode({"diagnostic": picks.diagnostic}),
               urlencode({"radiologist": picks.radiologist}), "status=error,ignore", "page=3"]
    return [f"/api/exams?{query}" if query else "/api/exams" for query in queries]


# ------------------------------------------------------------------------------------------------ measuring


def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def session(server: Server) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"Authorization": server.auth},
                                 connector=aiohttp.TCPConnector(limit=1, force_close=False),
                                 timeout=aiohttp.ClientTimeout(total=120))


async def get(client: aiohttp.ClientSession, url: str) -> tuple[float, int, bytes]:
    start = time.perf_counter()
    async with client.get(url) as resp:
        body = await resp.read()
    return (time.perf_counter() - start) * 1000, resp.status, body


async def wait_ready(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with session(server) as client:
        while True:
            try:
                _, status, body = await get(client, server.base + "/api/config")
                if status == 200:
                    return
                problem = f"{status} {body[:200]!r}"
            except aiohttp.ClientError as exc:
                problem = repr(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"/api/config did not answer 200 within {timeout:.0f} s: {problem}")
            await asyncio.sleep(0.2)


async def run_sequential(server: Server, cases: list[Case], requests: int, warmup: int, budget: float) -> None:
    async with session(server) as client:
        for case in cases:
            urls = [server.base + p for p in case.paths]
            _, status, body = await get(client, urls[0])  # the first is a warm-up too
            if status == 200 and len(case.paths) == 1:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    answer = json.loads(body)
                    case.total = answer.get("total") if isinstance(answer, dict) else len(answer)
            for i in range(1, warmup):
                await get(client, urls[i % len(urls)])
            began = time.perf_counter()
            for i in range(requests):
                ms, status, body = await get(client, urls[(i + warmup) % len(urls)])
                case.times.append(ms)
                if status != 200:
                    case.failures.append(f"{status} {body[:120]!r}")
                if i >= 14 and time.perf_counter() - began > budget:
                    break
            med = statistics.median(case.times)
            print(f"  {case.label:<52} {med:8.1f} ms median, {len(case.times)} requests", flush=True)


@dataclass
class Concurrent:
    clients: int
    queries: int
    seconds: float
    times: list[float]
    failures: list[str]
    server_cpu: float | None
    client_cpu: float

    @property
    def rps(self) -> float:
        return len(self.times) / self.seconds


async def run_concurrent(server: Server, paths: list[str], clients: int, duration: float) -> Concurrent:
    times: list[float] = []
    failures: list[str] = []

    async def client_loop(index: int, deadline: float) -> None:
        async with session(server) as client:
            i = index * 3  # each starts elsewhere in the mix
            while time.perf_counter() < deadline:
                ms, status, body = await get(client, server.base + paths[i % len(paths)])
                i += 1
                if status == 200:
                    times.append(ms)
                else:
                    failures.append(f"{status} {body[:120]!r}")

    cpu0, own0 = server.cpu_seconds(), time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(client_loop(i, start + duration) for i in range(clients)))
    seconds = time.perf_counter() - start
    cpu1, own1 = server.cpu_seconds(), time.process_time()
    server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return Concurrent(clients, len(set(paths)), seconds, times, failures, server_cpu, own1 - own0)


def timed(fn: Callable[[], object], reps: int) -> float:
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def list_statements(query: str, page_size: int) -> list[tuple[str, str, dict[str, object]]]:
    """The statements worklist.list_exams runs for a query, in its order: the count, the page of UIDs (then the
    page's rows, which need the UIDs: see sql_breakdown)."""
    where, page = exam_filter_of(query)
    clause, params = where.where(THRESHOLD)
    return [
        ("count", f"SELECT COUNT(*) FROM exams e WHERE {clause}", params),
        ("page", f"SELECT e.uid FROM exams e WHERE {clause} ORDER BY {where.order()} LIMIT :limit OFFSET :offset",
         {**params, "limit": page_size, "offset": (page - 1) * page_size}),
    ]


def rows_statement(uids: list[str]) -> tuple[str, dict[str, object]]:
    names = {f"u{i}": uid for i, uid in enumerate(uids)}
    return (worklist.EXAM_SELECT + f" WHERE e.uid IN ({', '.join(':' + n for n in names)})",
            {**names, "t": THRESHOLD})


def sql_breakdown(conn: sqlite3.Connection, query: str, page_size: int, reps: int) -> tuple[float, float, float]:
    (_, count_sql, count_params), (_, page_sql, page_params) = list_statements(query, page_size)
    uids = [r[0] for r in conn.execute(page_sql, page_params)]
    rows_sql, rows_params = rows_statement(uids or ["-"])
    return (timed(lambda: conn.execute(count_sql, count_params).fetchall(), reps),
            timed(lambda: conn.execute(page_sql, page_params).fetchall(), reps),
            timed(lambda: conn.execute(rows_sql, rows_params).fetchall(), reps) if uids else 0.0)


def explain(conn: sqlite3.Connection, sql: str, params: dict[str, object]) -> Iterator[str]:
    """EXPLAIN QUERY PLAN as the sqlite3 shell draws it."""
    rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    depth = {0: 0}
    for node, parent, _, detail in rows:
        depth[node] = depth.get(parent, 0) + 1
        yield "  " * depth[node] + detail


async def time_store(db: Path, cases: list[Case], reps: int) -> None:
    store = await Store(db).open()
    try:
        for case in cases:
            if case.store_call is None:
                continue
            for i in range(2):
                await case.store_call(store, i)
            samples = []
            for i in range(reps):
                start = time.perf_counter()
                await case.store_call(store, i)
                samples.append((time.perf_counter() - start) * 1000)
            case.store_ms = statistics.median(samples)
    finally:
        await store.close()


# ------------------------------------------------------------------------------------------------ report


def verdict(value: float, target: float, below: bool = True) -> str:
    return "met" if (value <= target if below else value >= target) else "NOT met"


def print_table(cases: list[Case]) -> None:
    print()
    print("Latency, sequential requests on one keep-alive connection (ms; HTTP = the whole round trip from this "
          "process; store = the worklist call alone through a Store; count/page/rows = its SQL statements alone "
          "with sqlite3)")
    header = (f"{'case':<52} {'total':>7} {'n':>4} {'HTTP med':>9} {'p95':>7} {'store':>7} {'count':>7} "
              f"{'page':>7} {'rows':>6}  target")
    print(header)
    print("-" * len(header))
    for c in cases:
        med, p95 = statistics.median(c.times), percentile(c.times, 95)
        total = "" if c.total is None else str(c.total)
        store = "" if c.store_ms is None else f"{c.store_ms:.1f}"
        count, page, rows = ("", "", "") if c.sql_ms is None else (f"{v:.1f}" for v in c.sql_ms)
        target = "" if c.target_ms is None else f"<= {c.target_ms:.0f}: {verdict(med, c.target_ms)}"
        print(f"{c.label[:52]:<52} {total:>7} {len(c.times):>4} {med:>9.1f} {p95:>7.1f} {store:>7} {count:>7} "
              f"{page:>7} {rows:>6}  {target}")
    for c in cases:
        for failure in sorted(set(c.failures)):
            print(f"WARNING: {c.label}: {c.failures.count(failure)} request(s) answered {failure}")


def print_concurrent(result: Concurrent, cores: int) -> None:
    print()
    print(f"{result.clients} concurrent clients on /api/exams (a mix of {result.queries} queries, one "
          f"keep-alive connection each) for {result.seconds:.1f} s:")
    if not result.times:
        print("  no request answered 200")
    else:
        print(f"  {len(result.times)} requests, {result.rps:.1f} req/s; latency median "
              f"{statistics.median(result.times):.1f} ms, p95 {percentile(result.times, 95):.1f} ms")
    if result.server_cpu is not None and result.times:
        print(f"  server CPU {result.server_cpu:.1f} s = {result.server_cpu / result.seconds * 100:.0f} % of one core "
              f"({cores} cores), {result.server_cpu / len(result.times) * 1000:.1f} ms per request; "
              f"this client process {result.client_cpu:.1f} s")
    for failure in sorted(set(result.failures)):
        print(f"WARNING: {result.failures.count(failure)} concurrent request(s) answered {failure}")


def print_targets(cases: list[Case], result: Concurrent) -> None:
    print()
    print("Targets:")
    lists = [c for c in cases if c.exam_query is not None]
    over = [c for c in lists if statistics.median(c.times) > TARGET_LIST_MS]
    print(f"  /api/exams, every filter, combination and deep page (median <= {TARGET_LIST_MS:.0f} ms): "
          f"{'NOT met' if over else 'met'} ({len(lists) - len(over)} of {len(lists)} within; slowest "
          f"{max(statistics.median(c.times) for c in lists):.1f} ms)")
    for c in over:
        print(f"      over: {c.label} {statistics.median(c.times):.1f} ms")
    for c in cases:
        if c.target_ms is not None and c.exam_query is None:
            med = statistics.median(c.times)
            print(f"  {c.label} (median <= {c.target_ms:.0f} ms): {verdict(med, c.target_ms)} ({med:.1f} ms)")
    print(f"  {result.clients} clients on /api/exams (>= {TARGET_RPS:.0f} req/s): "
          f"{verdict(result.rps, TARGET_RPS, below=False)} ({result.rps:.1f} req/s)")
    print(f"  For reference: {REFERENCE}.")


# ------------------------------------------------------------------------------------------------ main


async def measure(args: argparse.Namespace, db: Path, workdir: Path, picks: Picks) -> tuple[list[Case], Concurrent]:
    server = Server(workdir, db)
    page_size = server.settings.processing.page_size
    cases = make_cases(picks, page_size)
    mix = concurrent_mix(picks)
    server.start()
    try:
        await wait_ready(server)
        print(f"Server: python -m xrayvision on 127.0.0.1:{server.port} (pid {server.proc.pid}), PAGE_SIZE "
              f"{page_size}; {args.requests} sequential requests per case after {args.warmup} warm-up "
              f"(at most ~{args.case_budget:.0f} s a case)", flush=True)
        await run_sequential(server, cases, args.requests, args.warmup, args.case_budget)
        print(f"  {args.clients} concurrent clients for {args.duration:.0f} s ...", flush=True)
        result = await run_concurrent(server, mix, args.clients, args.duration)
    finally:
        server.stop()
    # Without HTTP, with the server stopped (nothing else reads the file).
    print("Timing the reads without HTTP ...", flush=True)
    await time_store(db, cases, args.sql_reps)
    conn = connect_ro(db)
    try:
        for case in cases:
            if case.exam_query is not None:
                case.sql_ms = sql_breakdown(conn, case.exam_query, page_size, args.sql_reps)
        if args.explain:
            print_plans(conn, cases, page_size, picks)
    finally:
        conn.close()
    return cases, result


def print_plans(conn: sqlite3.Connection, cases: list[Case], page_size: int, picks: Picks) -> None:
    print()
    print("Query plans (EXPLAIN QUERY PLAN) of the statements worklist.list_exams runs:")
    for case in cases:
        if case.exam_query is None:
            continue
        print(f"\n{case.label}")
        for name, sql, params in list_statements(case.exam_query, page_size):
            print(f"  {name}:")
            for line in explain(conn, sql, params):
                print(f"  {line}")
    sql, params = rows_statement(picks.uids[:page_size])
    print("\nthe page's rows (and /api/exams/{uid}, with one UID):")
    for line in explain(conn, sql, params):
        print(f"  {line}")


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    """The seeded database's options, shared with live_bench.py."""
    parser.add_argument("--exams", type=int, default=100_000, help="exams to seed (default 100000)")
    parser.add_argument("--patients", type=int, default=30_000, help="patients to seed (default 30000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the data (default 1)")
    parser.add_argument("--db", type=Path, help="database to reuse as it is; seeded there (and kept) if missing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="JSON API latency and throughput over a large seeded database")
    add_database_arguments(parser)
    parser.add_argument("--requests", type=int, default=60, help="sequential requests per case (default 60)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up requests per case (default 5, at least 1)")
    parser.add_argument("--case-budget", type=float, default=8.0,
                        help="seconds after which a slow case stops (after at least 15 requests; default 8)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the concurrent run (default 10)")
    parser.add_argument("--sql-reps", type=int, default=15, help="repetitions of each read without HTTP (default 15)")
    parser.add_argument("--explain", action="store_true", help="print the query plans of the /api/exams statements")
    parser.add_argument("--tmpdir", type=Path, help="where the temporary folder goes (default: the system's)")
    args = parser.parse_args(argv)
    if min(args.exams, args.patients, args.requests, args.clients, args.sql_reps) < 1 or args.exams < args.patients:
        parser.error("counts must be positive, and --exams at least --patients")

    began = time.perf_counter()
    print(f"Machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, aiohttp {aiohttp.__version__}")
    with tempfile.TemporaryDirectory(prefix="xrv-api-bench-", dir=args.tmpdir) as tmp:
        workdir = Path(tmp)
        db = args.db.resolve() if args.db else workdir / "xrayvision.db"
        if db.exists():
            print(f"Database: reusing {db} as it is")
        else:
            generated, inserted = asyncio.run(seed(db, args.patients, args.exams, args.seed))
            print(f"Database: seeded {db} in {generated + inserted:.1f} s ({generated:.1f} s generating the rows, "
                  f"{inserted:.1f} s inserting them through the Store)")
        counts, problems = describe_db(db)
        size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
        print("  " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; {size / 1e6:.0f} MB")
        print("  trigger copies on exams: " + ("all agree with their tables" if not problems else "DISAGREE"))
        for problem in problems:
            print(f"WARNING: {problem}")
        picks = pick(db, args.seed)
        print(f"  picked: search {picks.surname!r} and CNP {picks.cnp}, diagnostic {picks.diagnostic!r}, "
              f"radiologist {picks.radiologist!r}", flush=True)
        cases, result = asyncio.run(measure(args, db, workdir, picks))
        print_table(cases)
        print_concurrent(result, os.cpu_count() or 1)
        print_targets(cases, result)
        shutil.rmtree(workdir / "images", ignore_errors=True)
    print(f"\nTotal time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
