"""The Storage SCP against dcmtk's storescu: what is stored, what is refused, and that the server carries on."""
from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from pathlib import Path

import numpy as np
import pydicom
from conftest import (
    ADMIN,
    CR_STORAGE,
    DATA,
    DX_PRESENTATION,
    basic,
    c_store,
    cnp_with_check,
    dcmcjpeg,
    derive,
    echoscu,
    storescu,
    synthetic_cr,
)
from PIL import Image

from xrayvision.keys import RECEIVER, RENDERER, SETTINGS

SUCCESS = "Success"


def _rows(settings) -> dict[str, sqlite3.Row]:  # type: ignore[no-untyped-def]
    conn = sqlite3.connect(settings.general.db_path)
    conn.row_factory = sqlite3.Row
    try:
        return {r["uid"]: r for r in conn.execute(
            "SELECT e.*, p.name, p.birthdate, p.sex AS psex FROM exams e JOIN patients p USING (cnp)")}
    finally:
        conn.close()


async def _rendered(app) -> None:  # type: ignore[no-untyped-def]
    await asyncio.wait_for(app[RENDERER].idle.wait(), timeout=60)


async def test_storescu_mix_of_radiographs_other_modalities_and_bad_files(client, tmp_path: Path) -> None:
    app = client.server.app
    settings = app[SETTINGS]
    port = app[RECEIVER].port
    cnp = cnp_with_check("619031540123")  # a girl born 2019-03-15 in county 40
    dx = derive("RG3_UNCR.dcm", tmp_path / "dx.dcm", SOPClassUID=DX_PRESENTATION, Modality="DX",
                PatientID=cnp, PatientName="Popescu^Ana", PatientSex="M", PatientBirthDate="20000101",
                ProtocolName="Gamba stg AP", SeriesDate="20261120", SeriesTime="083000")
    lossless = dcmcjpeg(synthetic_cr(tmp_path / "plain.dcm", ProtocolName="Clavicula dreapta"), tmp_path / "jpegll.dcm")
    ct = derive("693_UNCR.dcm", tmp_path / "ct.dcm")
    truncated = derive("RG3_UNCR.dcm", tmp_path / "truncated.dcm", PixelData=b"\0" * 1000)
    no_study = derive("RG3_UNCR.dcm", tmp_path / "nostudy.dcm", StudyInstanceUID=None)
    traversal = derive("RG3_UNCR.dcm", tmp_path / "traversal.dcm", SOPInstanceUID="1.2.3/../../etc/passwd")

    plain = await storescu(port, DATA / "RG1_UNCR.dcm", DATA / "RG3_UNCR.dcm", dx, ct, truncated, no_study, traversal)
    j2k = await storescu(port, DATA / "RG1_J2KR.dcm", flags=("-xv",))
    jpeg = await storescu(port, lossless, flags=("-xs",))

    for path in (DATA / "RG1_UNCR.dcm", DATA / "RG3_UNCR.dcm", dx, ct):
        assert plain.status(path) == SUCCESS, plain.output
    assert j2k.status(DATA / "RG1_J2KR.dcm") == SUCCESS, j2k.output
    assert jpeg.status(lossless) == SUCCESS, jpeg.output
    for bad in (truncated, no_study, traversal):
        status = plain.status(bad)
        assert status not in (SUCCESS, "not sent"), (bad.name, plain.output)

    # Still answering, over DICOM and HTTP.
    assert await echoscu(port) == 0
    await _rendered(app)
    resp = await client.get("/api/exams", headers=basic(ADMIN))
    assert resp.status == 200

    rows = _rows(settings)
    uid = lambda p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)  # noqa: E731
    radiographs = [DATA / "RG1_UNCR.dcm", DATA / "RG1_J2KR.dcm", lossless]
    never_analysed = [DATA / "RG3_UNCR.dcm", dx]  # lower limbs: not in [supported_regions]
    assert len(rows) == len(radiographs) + len(never_analysed) + 1  # the CT too; nothing refused was stored
    for path in never_analysed:
        # Said when stored, not when the worker reaches it; still rendered, for the radiologist's eyes.
        row = rows[uid(path)]
        assert (row["status"], row["reason"]) == ("ignore", "region 'lower_limb' is not analysed (not in "
                                                            "[supported_regions])"), path.name
        assert row["image"] == f"{row['uid']}.png" and (settings.general.images_dir / row["image"]).exists()
        assert row["dicom"] is None
        shown = await (await client.get(f"/api/exams/{row['uid']}", headers=basic(ADMIN))).json()
        assert (shown["exam"]["status"], shown["exam"]["reason"]) == (row["status"], row["reason"])
    for path in radiographs:
        row = rows[uid(path)]
        assert row["status"] == "queued", (path.name, row["reason"])
        assert row["image"] == f"{row['uid']}.png"
        png = Image.open(settings.general.images_dir / row["image"])
        assert png.mode == "L" and max(png.size) <= settings.processing.png_max_size
        assert row["dicom"] is None and not (settings.general.images_dir / f"{row['uid']}.dcm").exists()

    rg1 = rows[uid(DATA / "RG1_UNCR.dcm")]
    assert (rg1["name"], rg1["cnp"], rg1["region"], rg1["type"]) == ("CompressedSamples RG1", "9RG1", "chest", "CR")
    assert (rg1["birthdate"], rg1["psex"], rg1["age"]) == ("1940-03-05", "F", 55)

    # The CNP wins over contradicting DICOM tags; age is at the exam, not today.
    child = rows[uid(dx)]
    assert (child["cnp"], child["name"], child["psex"], child["birthdate"]) == (cnp, "Popescu Ana", "F", "2019-03-15")
    assert (child["type"], child["region"], child["projection"], child["age"]) == ("DX", "lower_limb", "frontal", 7)
    assert rows[uid(lossless)]["region"] == "clavicle"

    ct_row = rows[uid(ct)]
    assert ct_row["status"] == "ignore" and "CT" in ct_row["reason"]
    assert ct_row["image"] is None and (settings.general.images_dir / ct_row["dicom"]).exists()

    # No file of a refused instance, and no temporary file, is left behind.
    names = {p.name for p in settings.general.images_dir.iterdir()}
    assert not [n for n in names if n.endswith(".tmp")]
    assert not any("passwd" in n for n in names)


async def test_raw_and_jpeg2000_rg1_render_the_same(client) -> None:
    app = client.server.app
    port = app[RECEIVER].port
    assert (await storescu(port, DATA / "RG1_UNCR.dcm")).status(DATA / "RG1_UNCR.dcm") == SUCCESS
    assert (await storescu(port, DATA / "RG1_J2KR.dcm", flags=("-xv",))).status(DATA / "RG1_J2KR.dcm") == SUCCESS
    await _rendered(app)
    folder = app[SETTINGS].general.images_dir
    raw = np.asarray(Image.open(next(folder.glob("*.9.1.1.*.png"))), dtype=np.int16)
    j2k = np.asarray(Image.open(next(folder.glob("*.9.1.2.*.png"))), dtype=np.int16)
    assert raw.shape == j2k.shape
    assert np.abs(raw - j2k).mean() <= 1.0


async def test_resent_instance_is_idempotent(client, tmp_path: Path) -> None:
    app = client.server.app
    port = app[RECEIVER].port
    image = synthetic_cr(tmp_path / "once.dcm")
    first = await storescu(port, image)
    await _rendered(app)
    before = _rows(app[SETTINGS])
    second = await storescu(port, image)
    await _rendered(app)
    after = _rows(app[SETTINGS])
    assert first.status(image) == second.status(image) == SUCCESS
    assert len(before) == len(after) == 1
    (uid,) = after
    assert dict(before[uid]) == dict(after[uid])
    # The re-send did not bring back the .dcm that rendering had already removed.
    assert not (app[SETTINGS].general.images_dir / f"{uid}.dcm").exists()


async def test_undecodable_pixels_mark_the_exam_error_and_keep_the_file(client, tmp_path: Path) -> None:
    app = client.server.app
    # Well-framed JPEG 2000 whose codestream is garbage: accepted (no decoding before the answer), then 'error'.
    ds = pydicom.dcmread(DATA / "RG1_J2KR.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 4000])
    ds.save_as(tmp_path / "garbage_j2k.dcm")
    result = await storescu(app[RECEIVER].port, tmp_path / "garbage_j2k.dcm", flags=("-xv",))
    assert result.status(tmp_path / "garbage_j2k.dcm") == SUCCESS, result.output
    await _rendered(app)
    row = _rows(app[SETTINGS])[str(ds.SOPInstanceUID)]
    assert row["status"] == "error" and row["reason"].startswith("cannot render the image")
    assert row["image"] is None and (app[SETTINGS].general.images_dir / row["dicom"]).exists()


async def test_undecodable_dataset_gets_cannot_understand(client, tmp_path: Path, monkeypatch) -> None:
    """pynetdicom as the sender here: it can send a file's dataset bytes as they are, which dcmtk refuses to do."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes, do not re-encode

    app = client.server.app
    good = synthetic_cr(tmp_path / "good.dcm")
    raw = good.read_bytes()
    broken = tmp_path / "broken.dcm"
    # StudyInstanceUID's header rewritten as a sequence of undefined length: the rest of the dataset is unreadable.
    marker = raw.index(b"\x20\x00\x0d\x00UI")
    broken.write_bytes(raw[:marker + 4] + b"SQ\x00\x00\xff\xff\xff\xff" + raw[marker + 12:])

    status = await asyncio.to_thread(c_store, app[RECEIVER].port, broken, sop_class=CR_STORAGE)
    assert status == [0xC210]
    assert _rows(app[SETTINGS]) == {}
    assert await echoscu(app[RECEIVER].port) == 0


async def test_exam_time_is_stored_in_utc(tmp_path: Path, aiohttp_client) -> None:
    from conftest import make_settings

    from xrayvision.app import build_app

    settings = make_settings(tmp_path, {"general": {"timezone": "Europe/Bucharest"}})
    client = await aiohttp_client(build_app(settings))
    image = synthetic_cr(tmp_path / "tz.dcm", SeriesDate="20260715", SeriesTime="101500")
    assert (await storescu(client.server.app[RECEIVER].port, image)).status(image) == SUCCESS
    (row,) = _rows(settings).values()
    assert row["created"] == "2026-07-15 07:15:00"  # EEST is UTC+3
    resp = await client.get(f"/api/exams/{row['uid']}", headers=basic(ADMIN))
    exam = (await resp.json())["exam"]
    assert (exam["created"], exam["date"], exam["time"]) == ("2026-07-15T07:15:00Z", "20260715", "101500")
    assert dt.date.fromisoformat(row["received"][:10]) >= dt.date(2026, 1, 1)
