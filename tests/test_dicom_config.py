"""What the README promises of the DICOM side and its [dicom]/[processing] keys, each checked with a real peer:
the exact failure statuses (0xA900, and 0xA700 for a failed write or a store that does not commit within
STORE_TIMEOUT), KEEP_DICOM, MAX_ASSOCIATIONS and the deflated transfer syntax. MAX_PDU is in test_dicom_limits."""
from __future__ import annotations

import asyncio
import resource
import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest
from conftest import c_store, cr_dataset, make_settings, storescu, synthetic_cr, xrayvision_command
from test_crash import _wait_listening, _write_config

from xrayvision.app import build_app
from xrayvision.keys import RECEIVER, RENDERER, SETTINGS

SUCCESS = "Success"


async def _app(aiohttp_client, tmp_path: Path, extra=None):  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(make_settings(tmp_path, extra)))
    return client.server.app


def _rows(db: Path) -> dict[str, sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return {r["uid"]: r for r in conn.execute("SELECT * FROM exams")}
    finally:
        conn.close()


async def test_missing_uid_and_short_pixel_data_get_exactly_0xa900(client) -> None:
    app = client.server.app
    no_study = cr_dataset(64, 64, StudyInstanceUID=None)
    short = cr_dataset(64, 64)
    short.PixelData = bytes(100)  # 64 x 64 x 2 bytes declared
    good = cr_dataset(64, 64)
    statuses = await asyncio.to_thread(c_store, app[RECEIVER].port, no_study, short, good)
    assert statuses == [0xA900, 0xA900, 0x0000]
    assert list(_rows(app[SETTINGS].general.db_path)) == [good.SOPInstanceUID]


def test_failed_write_gets_0xa700_and_the_server_carries_on(tmp_path: Path) -> None:
    """A full disk, made honestly without mount rights: the server runs under a file-size limit (RLIMIT_FSIZE),
    so writing a file past it fails with EFBIG, as a write to a full disk fails with ENOSPC."""
    limit = 1024 * 1024
    config, port = _write_config(tmp_path)
    small = [synthetic_cr(tmp_path / f"small{n}.dcm", 128, 128, seed=n) for n in range(2)]
    large = synthetic_cr(tmp_path / "large.dcm", 1024, 1024)  # 2 MB: past the limit

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with (tmp_path / "server.log").open("ab") as log:
        server = subprocess.Popen([*xrayvision_command(), "--config", str(config)], cwd=tmp_path,
                                  stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit_file_size)
    try:
        _wait_listening(port, server)
        result = asyncio.run(storescu(port, small[0], large, small[1]))
        assert server.poll() is None, "the server died"
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert result.status(small[0]) == SUCCESS, result.output
    assert result.status(large) == "Refused: OutOfResources", result.output
    assert result.status(small[1]) == SUCCESS, result.output
    rows = _rows(tmp_path / "xrayvision.db")
    uid = lambda p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)  # noqa: E731
    assert set(rows) == {uid(small[0]), uid(small[1])}
    images = tmp_path / "images"
    assert not list(images.glob(".*.tmp")) and not (images / f"{uid(large)}.dcm").exists()
    assert "File too large" in (tmp_path / "server.log").read_text(errors="replace")


async def test_store_that_does_not_commit_within_store_timeout_gets_0xa700(aiohttp_client, tmp_path: Path) -> None:
    app = await _app(aiohttp_client, tmp_path, {"dicom": {"store_timeout": "1"}})
    port = app[RECEIVER].port
    db = app[SETTINGS].general.db_path
    blocked, later = cr_dataset(64, 64), cr_dataset(64, 64, seed=1)

    # Another process (a backup, a DB browser) holds the write lock: the commit waits for it.
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        assert await asyncio.to_thread(c_store, port, blocked) == [0xA700]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # With the lock gone the server answers at once; the refused instance's file stayed for its late commit.
    assert await asyncio.to_thread(c_store, port, blocked, later) == [0x0000, 0x0000]
    assert set(_rows(db)) == {blocked.SOPInstanceUID, later.SOPInstanceUID}


@pytest.mark.parametrize("keep", [True, False])
async def test_keep_dicom_keeps_the_received_file_after_rendering(aiohttp_client, tmp_path: Path, keep: bool) -> None:
    app = await _app(aiohttp_client, tmp_path, {"processing": {"keep_dicom": str(keep).lower()}})
    image = synthetic_cr(tmp_path / "cr.dcm", 256, 256)
    assert (await storescu(app[RECEIVER].port, image)).status(image) == SUCCESS
    await asyncio.wait_for(app[RENDERER].idle.wait(), timeout=60)
    (row,) = _rows(app[SETTINGS].general.db_path).values()
    folder = app[SETTINGS].general.images_dir
    assert (folder / row["image"]).exists()
    dcm = folder / f"{row['uid']}.dcm"
    assert dcm.exists() is keep
    assert row["dicom"] == (dcm.name if keep else None)
    if keep:
        assert pydicom.dcmread(dcm).PixelData == pydicom.dcmread(image).PixelData


async def test_association_beyond_max_associations_is_rejected(aiohttp_client, tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    app = await _app(aiohttp_client, tmp_path, {"dicom": {"max_associations": "2"}})
    port = app[RECEIVER].port

    def associate(bind: str):  # type: ignore[no-untyped-def]
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        return ae.associate("127.0.0.1", port, ae_title="XRAYVISION", bind_address=(bind, 0))

    def scenario() -> tuple[list[bool], tuple[int, int, int], bool]:
        # From distinct addresses, so that the per-host cap is not what refuses the third.
        held = [associate("127.0.0.2"), associate("127.0.0.3")]
        try:
            third = associate("127.0.0.4")
            rejection = (third.acceptor.primitive.result, third.acceptor.primitive.result_source,
                         third.acceptor.primitive.diagnostic)
            return [a.is_established for a in held] + [third.is_established], rejection, third.is_rejected
        finally:
            for assoc in held:
                assoc.release()

    established, rejection, rejected = await asyncio.to_thread(scenario)
    assert established == [True, True, False]
    assert rejected
    assert rejection == (0x02, 0x03, 0x02)  # rejected-transient, by the presentation layer: local limit exceeded
    # Slots are given back: a new association is accepted once those are released.
    again = await asyncio.to_thread(associate, "127.0.0.4")
    assert again.is_established
    again.release()


async def test_deflated_transfer_syntax_is_stored_and_rendered(client, tmp_path: Path) -> None:
    app = client.server.app
    image = synthetic_cr(tmp_path / "deflate.dcm", 256, 256, ProtocolName="Torace PA")
    result = await storescu(app[RECEIVER].port, image, flags=("-xd",))
    assert "Deflated" in result.output, result.output  # storescu really proposed and used deflate
    assert result.status(image) == SUCCESS, result.output
    await asyncio.wait_for(app[RENDERER].idle.wait(), timeout=60)
    (row,) = _rows(app[SETTINGS].general.db_path).values()
    assert (row["status"], row["region"]) == ("queued", "chest")
    assert (app[SETTINGS].general.images_dir / row["image"]).stat().st_size > 0


@pytest.mark.parametrize(("key", "value"), [("MAX_INSTANCE_MB", "0"), ("ASSOC_TIMEOUT", "never"),
                                            ("MAX_ASSOCIATIONS_PER_HOST", "0"), ("MAX_SPOOL_MB", "0")])
def test_limit_keys_are_validated(tmp_path: Path, key: str, value: str) -> None:
    from xrayvision.config import ConfigError

    with pytest.raises(ConfigError, match=rf"\[dicom\] {key}"):
        make_settings(tmp_path, {"dicom": {key.lower(): value}})


def test_limit_keys_have_their_defaults(tmp_path: Path) -> None:
    dicom = make_settings(tmp_path).dicom
    assert (dicom.max_instance_mb, dicom.assoc_timeout, dicom.max_associations_per_host) == (1024, 10.0, 8)


def test_max_spool_mb_has_its_default(tmp_path: Path) -> None:
    assert make_settings(tmp_path).dicom.max_spool_mb == 4096


def test_receiver_settings_come_from_one_place(tmp_path: Path) -> None:
    """ReceiverConfig repeats none of defaults.cfg: every value comes from [dicom] through app.py."""
    import dataclasses

    from xrayvision.dicom.receiver import ReceiverConfig

    assert [f.name for f in dataclasses.fields(ReceiverConfig)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING] == []


async def test_one_pdu_timeout_for_every_wait_once_associated(client) -> None:
    from xrayvision.dicom.limits import PDU_TIMEOUT

    receiver = client.server.app[RECEIVER]
    assert receiver.ae.network_timeout == receiver.ae.dimse_timeout == receiver.limits.pdu_timeout == PDU_TIMEOUT
