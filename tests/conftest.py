"""Shared fixtures: settings built in code, a real app through build_app, real DICOM peers (dcmtk) and test files
derived from the pydicom-data radiographs."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import re
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import data_store
import numpy as np
import pydicom
import pytest
from aiohttp import web
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xrayvision.app import build_app
from xrayvision.config import Settings, load_settings
from xrayvision.dicom.metadata import describe
from xrayvision.keys import INGEST, RENDERER, SETTINGS, STORE

DATA = Path(data_store.__file__).parent / "data"
# dcmtk's tools, not pynetdicom's console scripts of the same names that pip may put earlier on PATH.
DCMTK = Path(os.environ.get("DCMTK_BIN", "/usr/bin"))
ADMIN = ("admin", "test-admin-pw-7f3a")
READER = ("reader", "test-reader-pw-91c2")

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


class Clock:
    """A monotonic clock the test moves by hand (`clock.t += 300`), for a module that reads time as `now()`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


def fake_clock(monkeypatch: pytest.MonkeyPatch, module: object) -> Clock:
    fake = Clock()
    monkeypatch.setattr(module, "now", fake)
    return fake


async def ok_handler(request: web.Request) -> web.Response:
    """A route that only says yes: what is tested is the middleware in front of it."""
    return web.json_response({"ok": True})


def c_store(port: int, *items: pydicom.Dataset | Path, bind: str = "127.0.0.1", sop_class: str | None = None,
            syntax: str = ExplicitVRLittleEndian) -> list[int]:
    """pynetdicom as the sending peer, on one association from `bind`: the exact status of each item. A Path is sent
    as its bytes are (the caller names its `sop_class`); blocking, so call it in a thread from async tests."""
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    for item in items:
        ae.add_requested_context(sop_class or item.SOPClassUID, syntax)  # type: ignore[union-attr]
    assoc = ae.associate("127.0.0.1", port, ae_title="XRAYVISION", bind_address=(bind, 0))
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(item).Status) for item in items]
    finally:
        assoc.release()


def xrayvision_command() -> list[str]:
    """The installed `xrayvision` console script, as an operator runs it (tests/run installs the package). Beside
    this interpreter first, so that a virtualenv's own script wins over another on PATH."""
    beside = Path(sys.executable).with_name("xrayvision")
    script = str(beside) if beside.exists() else shutil.which("xrayvision")
    if script is None:
        pytest.fail("the `xrayvision` command is not installed: run the tests with `bash tests/run`")
    return [script]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


Sections = Mapping[str, Mapping[str, str]]


def settings_overrides(tmp_path: Path, extra: Sections | None = None) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {
        "general": {"xrayvision_db_path": str(tmp_path / "xrayvision.db"), "images_dir": str(tmp_path / "images")},
        "users": {ADMIN[0]: f"{ADMIN[1]},admin", READER[0]: f"{READER[1]},user"},
        "dicom": {"ae_port": str(free_port())},
        "dashboard": {"dashboard_port": str(free_port())},
    }
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    return overrides


def make_settings(tmp_path: Path, extra: Sections | None = None) -> Settings:
    return load_settings(None, environ={}, overrides=settings_overrides(tmp_path, extra), base_dir=tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def client(aiohttp_client, settings):  # type: ignore[no-untyped-def]
    """The whole app (store, receiver, renderer, web) through build_app, on loopback."""
    return await aiohttp_client(build_app(settings))


def basic(user: tuple[str, str]) -> dict[str, str]:
    """Headers for HTTP Basic auth as `user`."""
    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def add_exams(app, tmp_path: Path, count: int, *, start: dt.datetime = dt.datetime(2026, 11, 20, 8, 0),
                    step: dt.timedelta = dt.timedelta(minutes=1), **changes: object) -> list[str]:  # type: ignore[no-untyped-def]
    """Exams through the real commit path (the receiver's, without the network) and the real renderer: small
    synthetic chest CRs of one girl (a valid CNP), `step` apart from `start`, oldest first."""
    settings = app[SETTINGS]
    uids = []
    for n in range(count):
        when = start + n * step
        fields = {"PatientName": f"Ionescu^Maria{n}", "PatientID": cnp_with_check("620010140123"),
                  "SeriesDate": when.strftime("%Y%m%d"), "SeriesTime": when.strftime("%H%M%S"), **changes}
        path = synthetic_cr(tmp_path / f"exam{n}-{time.monotonic_ns()}.dcm", 64, 64, seed=n, **fields)
        ds = pydicom.dcmread(path)
        name = f"{ds.SOPInstanceUID}.dcm"
        (settings.general.images_dir / name).write_bytes(path.read_bytes())
        instance = describe(ds, settings.regions, settings.general.timezone)
        assert (await app[INGEST].add(instance, name)).new
        uids.append(instance.uid)
    await asyncio.wait_for(app[RENDERER].idle.wait(), timeout=60)
    return uids


async def seed_fixture(app, tmp_path: Path, fixture: Mapping[str, tuple], threshold: int = 5) -> dict[str, str]:  # type: ignore[no-untyped-def,type-arg]
    """Named exams through the real ingest path, then their state, answers, reports and reviews in the store.
    Each entry: (protocol, patient name, CNP body or patient id, status, (ai severity, confidence) or None,
    (rad severity, radiologist, diagnostic[, English text]) or None, manual verdict 1/0 or None)."""
    store = app[STORE]
    uids: dict[str, str] = {}
    start = dt.datetime(2026, 11, 1, 8, 0)
    for n, (name, (protocol, patient, cnp, status, ai, rad, verdict)) in enumerate(fixture.items()):
        patient_id = cnp_with_check(cnp) if cnp.isdigit() and len(cnp) == 12 else cnp
        (uid,) = await add_exams(app, tmp_path, 1, start=start + dt.timedelta(hours=n), ProtocolName=protocol,
                                 PatientName=patient, PatientID=patient_id)
        uids[name] = uid
        await store.execute("UPDATE exams SET status = ? WHERE uid = ?", (status, uid))
        if ai:
            await store.execute(
                "INSERT INTO ai_reports (uid, created, updated, text, positive, severity, confidence, summary, model, "
                "latency) VALUES (?, '2026-11-01 09:00:00', '2026-11-01 09:00:05', ?, ?, ?, ?, 'finding', 'm', 5000)",
                (uid, f"AI report of {name}", int(ai[0] >= threshold), ai[0], ai[1]))
        if rad:
            await store.execute(
                "INSERT INTO rad_reports (uid, created, updated, text, text_en, severity, summary, radiologist) "
                "VALUES (?, '2026-11-02 09:00:00', '2026-11-02 09:00:00', ?, ?, ?, ?, ?)",
                (uid, f"Report of {name}", rad[3] if len(rad) > 3 else None, rad[0], rad[2], rad[1]))
        if verdict is not None:
            await store.execute("INSERT INTO reviews (uid, reviewer, verdict, created) VALUES (?, 'admin', ?, "
                                "'2026-11-03 09:00:00')", (uid, verdict))
    return uids


# --- DICOM test files ---------------------------------------------------------------------------------------------

def derive(source: str | Path, target: Path, **changes: object) -> Path:
    """Copy a pydicom-data file with fresh UIDs and the given attribute changes (None deletes one)."""
    ds = pydicom.dcmread(DATA / source if isinstance(source, str) else source)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    _apply(ds, changes)
    if "SOPClassUID" in changes:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(target, enforce_file_format=True)
    return target


def _apply(ds: pydicom.Dataset, changes: Mapping[str, object]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some changes are deliberately invalid
        for key, value in changes.items():
            if value is None:
                if key in ds:
                    delattr(ds, key)
            else:
                setattr(ds, key, value)


def cr_dataset(rows: int = 512, columns: int = 512, *, pixels: bytes | None = None, seed: int = 0,
               **changes: object) -> pydicom.Dataset:
    """A 16-bit CR in memory, with a smooth body-like shape and noise unless `pixels` are given; a change of None
    deletes the attribute."""
    if pixels is None:
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:rows, 0:columns]
        body = np.exp(-(((x - columns / 2) / (columns / 3)) ** 2 + ((y - rows / 2) / (rows / 2.5)) ** 2))
        pixels = (body * 3000 + rng.normal(0, 40, (rows, columns)) + 500).clip(0, 4095).astype(np.uint16).tobytes()
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_STORAGE
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST0001"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = "20261120"
    ds.StudyTime = ds.SeriesTime = "101500"
    ds.ProtocolName = "Torace AP"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels
    _apply(ds, changes)
    return ds


def synthetic_cr(target: Path, rows: int = 512, columns: int = 512, *, seed: int = 0, **changes: object) -> Path:
    """cr_dataset() written to `target` as a Part 10 file."""
    cr_dataset(rows, columns, seed=seed, **changes).save_as(target, enforce_file_format=True)
    return target


def cnp_with_check(first12: str) -> str:
    weights = "279146358279"
    rest = sum(int(d) * int(w) for d, w in zip(first12, weights)) % 11
    return first12 + str(1 if rest == 10 else rest)


# --- dcmtk peers ----------------------------------------------------------------------------------------------------

@dataclass
class StoreResult:
    returncode: int
    output: str
    statuses: dict[str, str]  # file name -> "Success" or the failure text dcmtk printed

    def status(self, path: Path) -> str:
        return self.statuses.get(path.name, "not sent")


_SENDING = re.compile(r"Sending file: (\S+)")
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def parse_storescu(output: str) -> dict[str, str]:
    statuses: dict[str, str] = {}
    current = None
    for line in output.splitlines():
        if m := _SENDING.search(line):
            current = Path(m.group(1)).name
        elif (m := _RESPONSE.search(line)) and current:
            statuses[current] = m.group(1)
            current = None
    return statuses


async def storescu(port: int, *files: Path, flags: tuple[str, ...] = (), aet: str = "XRAYVISION") -> StoreResult:
    """Send files with dcmtk's storescu, without blocking the loop the receiver answers through."""
    proc = await asyncio.create_subprocess_exec(
        str(DCMTK / "storescu"), "-v", "-nh", "-aec", aet, *flags, "127.0.0.1", str(port), *map(str, files),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    text = out.decode(errors="replace")
    return StoreResult(proc.returncode or 0, text, parse_storescu(text))


async def echoscu(port: int, aet: str = "XRAYVISION") -> int:
    proc = await asyncio.create_subprocess_exec(
        str(DCMTK / "echoscu"), "-aec", aet, "127.0.0.1", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), timeout=30)


def dcmcjpeg(source: Path, target: Path) -> Path:
    """JPEG lossless (process 14, selection value 1) with dcmtk's encoder."""
    import subprocess

    subprocess.run([str(DCMTK / "dcmcjpeg"), "+e1", str(source), str(target)], check=True, capture_output=True)
    return target

