"""Attacks on the unauthenticated DICOM port, reproduced on loopback: a PDU header declaring 4 GB, an instance
streamed past MAX_INSTANCE_MB, connections that never ask for an association, one host taking every slot. Each
attack fails, costs little memory, and a real peer is still served while (or after) it runs."""
from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from pathlib import Path

import psutil
import pydicom
import pytest
from conftest import c_store, cr_dataset, echoscu, make_settings, storescu, synthetic_cr

from xrayvision.app import build_app
from xrayvision.dicom import spool
from xrayvision.dicom.limits import DEFAULT_PDU_CEILING
from xrayvision.keys import RECEIVER, SETTINGS

MB = 1024 * 1024
SUCCESS = "Success"
A_ABORT = 0x07
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # kept, never rendered: nothing after the answer uses memory


class RssPeak:
    """The process's largest RSS above its starting value, sampled every millisecond or so while the block runs:
    memory a handler held and freed again still shows."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.base


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    return sock


def _read_until_closed(sock: socket.socket, deadline: float = 30) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not within `deadline`)."""
    sock.settimeout(deadline)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


async def _app(aiohttp_client, tmp_path: Path, **dicom: str):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, {"dicom": dicom})
    client = await aiohttp_client(build_app(settings))
    return client.server.app


def _rows(app) -> list[sqlite3.Row]:  # type: ignore[no-untyped-def]
    conn = sqlite3.connect(app[SETTINGS].general.db_path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM exams").fetchall()
    finally:
        conn.close()


async def test_pdu_header_declaring_4_gb_allocates_nothing_and_closes(client) -> None:
    port = client.server.app[RECEIVER].port

    def attack() -> list[bytes]:
        socks = [_connect(port) for _ in range(4)]
        for sock in socks:
            sock.sendall(bytes.fromhex("0100FFFFFFF0"))  # an A-ASSOCIATE-RQ "of 4 GB"
        try:
            return [_read_until_closed(sock) for sock in socks]
        finally:
            for sock in socks:
                sock.close()

    with RssPeak() as rss:
        answers = await asyncio.to_thread(attack)
    # Each connection got an A-ABORT (source: service provider, reason: invalid PDU parameter value), then EOF.
    assert answers == [bytes([A_ABORT, 0, 0, 0, 0, 4, 0, 0, 2, 6])] * 4
    assert rss.growth < 16 * MB, f"RSS grew by {rss.growth / MB:.0f} MB"
    assert await echoscu(port) == 0


async def test_p_data_longer_than_negotiated_aborts_the_association(aiohttp_client, tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    app = await _app(aiohttp_client, tmp_path, max_pdu="16384")
    port = app[RECEIVER].port

    def attack() -> tuple[int, bool]:
        ae = AE(ae_title="ATTACKER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="XRAYVISION")
        assert assoc.is_established
        negotiated = assoc.acceptor.maximum_length
        # A P-DATA-TF declaring 64 MiB, far past the 16 KiB we advertised.
        assoc.dul.socket.socket.sendall(bytes.fromhex("0400") + (64 * MB).to_bytes(4, "big"))
        deadline = time.monotonic() + 30
        while not assoc.is_aborted and time.monotonic() < deadline:
            time.sleep(0.01)
        aborted = assoc.is_aborted
        if not aborted:
            assoc.abort()
        return negotiated, aborted

    with RssPeak() as rss:
        negotiated, aborted = await asyncio.to_thread(attack)
    assert negotiated == 16384
    assert aborted
    assert rss.growth < 16 * MB
    assert await echoscu(port) == 0


@pytest.mark.parametrize("spool_above", [None, 256 * 1024], ids=["in-memory", "spooled-first"])
async def test_instance_over_max_instance_mb_is_refused_without_holding_it(aiohttp_client, tmp_path: Path,
                                                                            monkeypatch, spool_above) -> None:
    if spool_above:
        monkeypatch.setattr(spool, "SPOOL_ABOVE", spool_above)  # refused after it went to disk: the file goes too
    app = await _app(aiohttp_client, tmp_path, max_instance_mb="1")
    port = app[RECEIVER].port
    big = tmp_path / "big.dcm"
    # 48 MB of pixel data, streamed by storescu in its 128 KiB PDUs.
    cr_dataset(4096, 6144, pixels=bytes(4096 * 6144 * 2)).save_as(big, enforce_file_format=True)

    with RssPeak() as rss:
        result = await storescu(port, big)
    assert result.status(big) == "Refused: OutOfResources", result.output
    assert rss.growth < 24 * MB, f"RSS grew by {rss.growth / MB:.0f} MB while refusing"
    assert _rows(app) == []
    assert list(app[SETTINGS].general.images_dir.iterdir()) == []

    # The same association layer still takes an ordinary instance.
    small = synthetic_cr(tmp_path / "small.dcm", 256, 256)
    assert (await storescu(port, small)).status(small) == SUCCESS
    assert len(_rows(app)) == 1


async def test_instance_over_max_instance_mb_gets_exactly_0xa700(aiohttp_client, tmp_path: Path) -> None:

    app = await _app(aiohttp_client, tmp_path, max_instance_mb="1")
    ds = cr_dataset(1024, 1024)  # 2 MB of pixel data

    assert await asyncio.to_thread(c_store, app[RECEIVER].port, ds) == [0xA700]
    assert _rows(app) == []


async def test_large_instance_is_spooled_to_disk_not_memory(aiohttp_client, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(spool, "SPOOL_ABOVE", 1 * MB)
    app = await _app(aiohttp_client, tmp_path)
    port = app[RECEIVER].port
    # A secondary capture: kept, never rendered, so nothing after the answer touches the pixels.
    ds = cr_dataset(4096, 6144, pixels=bytes(range(256)) * (4096 * 6144 * 2 // 256),
                    SOPClassUID=SECONDARY_CAPTURE, Modality="OT")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    sent = tmp_path / "large.dcm"
    ds.save_as(sent, enforce_file_format=True)

    with RssPeak() as rss:
        result = await storescu(port, sent)
    assert result.status(sent) == SUCCESS, result.output
    assert rss.growth < 24 * MB, f"RSS grew by {rss.growth / MB:.0f} MB for a 48 MB instance"

    (row,) = _rows(app)
    assert row["status"] == "ignore"
    stored = pydicom.dcmread(app[SETTINGS].general.images_dir / row["dicom"])
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert stored.PixelData == ds.PixelData
    assert [p.name for p in app[SETTINGS].general.images_dir.iterdir()] == [row["dicom"]]


async def test_spooled_instance_that_is_refused_leaves_no_file(aiohttp_client, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(spool, "SPOOL_ABOVE", 256 * 1024)
    app = await _app(aiohttp_client, tmp_path)
    no_study = synthetic_cr(tmp_path / "nostudy.dcm", 1024, 1024, StudyInstanceUID=None)  # 2 MB: spooled
    result = await storescu(app[RECEIVER].port, no_study)
    assert result.status(no_study) not in (SUCCESS, "not sent"), result.output
    assert _rows(app) == []
    assert list(app[SETTINGS].general.images_dir.iterdir()) == []
    # A spooled radiograph is stored and rendered like any other.
    image = synthetic_cr(tmp_path / "spooled.dcm", 1024, 1024)
    assert (await storescu(app[RECEIVER].port, image)).status(image) == SUCCESS
    (row,) = _rows(app)
    assert row["status"] == "queued"


def _closed_within(sock: socket.socket, deadline: float) -> bool:
    try:
        _read_until_closed(sock, deadline)
        return True
    except TimeoutError:
        return False


async def test_connections_that_never_ask_are_closed_after_assoc_timeout(aiohttp_client, tmp_path: Path) -> None:
    app = await _app(aiohttp_client, tmp_path, assoc_timeout="0.5")
    port = app[RECEIVER].port

    def idle_then_wait() -> list[bool]:
        silent = [_connect(port) for _ in range(3)]
        trickle = _connect(port)
        trickle.sendall(b"\x01\x00")  # the start of a PDU header, then nothing
        header = _connect(port)
        header.sendall(bytes.fromhex("010000000100"))  # a 256-byte A-ASSOCIATE-RQ that never comes
        try:
            # pynetdicom's own timers would close the silent ones after 30 s and the others after 60 s or never.
            return [_closed_within(sock, 15) for sock in (*silent, trickle, header)]
        finally:
            for sock in (*silent, trickle, header):
                sock.close()

    assert await asyncio.to_thread(idle_then_wait) == [True] * 5
    assert await echoscu(port) == 0


async def test_one_host_cannot_take_every_association_slot(aiohttp_client, tmp_path: Path) -> None:
    app = await _app(aiohttp_client, tmp_path, max_associations="6", max_associations_per_host="3",
                     assoc_timeout="120")
    port = app[RECEIVER].port
    image = synthetic_cr(tmp_path / "cr.dcm", 256, 256)

    # 127.0.0.2 is another host on Linux loopback: it opens 10 connections and never speaks.
    idle = await asyncio.to_thread(lambda: [_connect(port, "127.0.0.2") for _ in range(10)])
    try:
        closed = await asyncio.to_thread(lambda: [_closed_within(s, 0.5) for s in idle])
        assert closed.count(False) == 3  # its share stays open (until ASSOC_TIMEOUT); the rest were closed
        # A real modality on another address still gets through while they are open.
        assert await echoscu(port) == 0
        assert (await storescu(port, image)).status(image) == SUCCESS
    finally:
        for sock in idle:
            sock.close()

    # The host gets its slots back once its connections end.
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    def echo_from_second_host() -> bool:
        ae = AE(ae_title="SECOND")
        ae.add_requested_context(Verification)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assoc = ae.associate("127.0.0.1", port, ae_title="XRAYVISION", bind_address=("127.0.0.2", 0))
            if assoc.is_established:
                status = assoc.send_c_echo()
                assoc.release()
                return int(status.Status) == 0
            time.sleep(0.05)
        return False

    assert await asyncio.to_thread(echo_from_second_host)


@pytest.mark.parametrize(("configured", "advertised"), [("16384", 16384), ("0", DEFAULT_PDU_CEILING)])
async def test_max_pdu_is_what_the_peer_sees(aiohttp_client, tmp_path: Path, configured: str, advertised: int) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    app = await _app(aiohttp_client, tmp_path, max_pdu=configured)

    def negotiate() -> int:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", app[RECEIVER].port, ae_title="XRAYVISION")
        assert assoc.is_established
        try:
            return int(assoc.acceptor.maximum_length)
        finally:
            assoc.release()

    assert await asyncio.to_thread(negotiate) == advertised
    image = synthetic_cr(tmp_path / "cr.dcm", 512, 512)  # 512 KB: many PDUs at 16 KiB
    assert (await storescu(app[RECEIVER].port, image)).status(image) == SUCCESS


async def test_sender_gone_mid_spool_leaves_no_file(aiohttp_client, tmp_path: Path, monkeypatch) -> None:
    from conftest import DCMTK

    monkeypatch.setattr(spool, "SPOOL_ABOVE", 1 * MB)
    app = await _app(aiohttp_client, tmp_path)
    folder = app[SETTINGS].general.images_dir
    big = tmp_path / "big.dcm"
    cr_dataset(4096, 6144, pixels=bytes(4096 * 6144 * 2)).save_as(big, enforce_file_format=True)
    # Slowed down by a small send PDU, so that it is surely killed in the middle.
    sender = await asyncio.create_subprocess_exec(
        str(DCMTK / "storescu"), "--max-send-pdu", "4096", "-aec", "XRAYVISION", "127.0.0.1",
        str(app[RECEIVER].port), str(big), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(folder.glob(".spool-*.tmp")):
            assert time.monotonic() < deadline and sender.returncode is None, "no spool file appeared"
            await asyncio.sleep(0.01)
    finally:
        if sender.returncode is None:
            sender.kill()
        await sender.wait()
    deadline = time.monotonic() + 60
    while list(folder.iterdir()):
        assert time.monotonic() < deadline, list(folder.iterdir())
        await asyncio.sleep(0.05)
    assert _rows(app) == []
    assert await echoscu(app[RECEIVER].port) == 0


def _c_store_pdus(ds: pydicom.Dataset, context_id: int, message_id: int, max_pdu: int) -> bytes:
    """A C-STORE-RQ as the P-DATA-TF PDUs a peer would put on the wire, for sending without waiting for answers."""
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode
    from pynetdicom.pdu import P_DATA_TF

    request = C_STORE()
    request.MessageID, request.Priority = message_id, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    request.DataSet = BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    wire = bytearray()
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        wire += pdu.encode()
    return bytes(wire)


def _established(port: int, sop_class: str = "1.2.840.10008.5.1.4.1.1.1"):  # type: ignore[no-untyped-def]
    from pynetdicom import AE

    ae = AE(ae_title="PIPELINER")
    ae.add_requested_context(sop_class, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="XRAYVISION")
    assert assoc.is_established
    # From here on the test owns the socket: pynetdicom's reactor must not read the answers.
    assoc.dul._kill_thread = True
    assoc.dul.join()
    return assoc, assoc.accepted_contexts[0].context_id, assoc.acceptor.maximum_length


async def test_pipelined_instances_wait_in_the_peers_buffers_not_ours(aiohttp_client, tmp_path: Path) -> None:
    """A peer that sends C-STOREs without waiting for answers, while the store is slow: the receiver stops reading
    once one message waits for its handler, so memory holds two instances, not all that was sent."""
    app = await _app(aiohttp_client, tmp_path)
    port = app[RECEIVER].port
    count, size = 24, 4 * MB  # 96 MB in all
    holder = sqlite3.connect(app[SETTINGS].general.db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the commit of the first instance waits (within STORE_TIMEOUT)

    def prepare():  # type: ignore[no-untyped-def]
        assoc, context_id, max_pdu = _established(port, SECONDARY_CAPTURE)
        ds = cr_dataset(1024, 2048, pixels=bytes(size), SOPClassUID=SECONDARY_CAPTURE, Modality="OT")
        wire = bytearray()
        for n in range(count):
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            wire += _c_store_pdus(ds, context_id, n + 1, max_pdu)
        return assoc, bytes(wire)

    assoc, wire = await asyncio.to_thread(prepare)  # the test's own bytes, made before the measurement starts

    def pipeline() -> int:
        import select

        sock = assoc.dul.socket.socket
        view, sent = memoryview(wire), 0
        sock.setblocking(False)
        # Send until the server has not read anything for 2 s (it stopped reading), or all is sent.
        while sent < len(wire):
            try:
                sent += sock.send(view[sent:sent + MB])
            except BlockingIOError:
                if not select.select([], [sock], [], 2)[1]:
                    break
        stalled_at = sent
        holder.execute("ROLLBACK")  # the store is back: everything goes through
        sock.setblocking(True)
        sock.sendall(view[sent:])
        return stalled_at

    try:
        with RssPeak() as rss:
            stalled_at = await asyncio.to_thread(pipeline)
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
    total = len(wire)
    assert stalled_at < total // 3, f"{stalled_at / MB:.0f} of {total / MB:.0f} MB read while the store was busy"
    assert rss.growth < 48 * MB, f"RSS grew by {rss.growth / MB:.0f} MB"
    deadline = time.monotonic() + 60
    while len(_rows(app)) < count:
        assert time.monotonic() < deadline, len(_rows(app))
        await asyncio.sleep(0.05)


async def test_endless_command_set_aborts_the_association(client) -> None:
    port = client.server.app[RECEIVER].port

    def attack() -> bytes:
        assoc, context_id, _ = _established(port)
        sock = assoc.dul.socket.socket
        # Command fragments (control header 0x01: command, not the last) without end, 16 KiB each.
        pdv = (1 + 1 + 16384).to_bytes(4, "big") + bytes([context_id, 0x01]) + bytes(16384)
        pdu = bytes.fromhex("0400") + len(pdv).to_bytes(4, "big") + pdv
        try:
            for _ in range(64):  # 1 MiB
                sock.sendall(pdu)
        except OSError:
            pass  # aborted while sending
        return _read_until_closed(sock)

    with RssPeak() as rss:
        answer = await asyncio.to_thread(attack)
    assert answer[:1] == bytes([A_ABORT])
    assert rss.growth < 16 * MB
    assert await echoscu(port) == 0


async def test_large_max_pdu_still_allocates_only_what_arrives(aiohttp_client, tmp_path: Path) -> None:
    """With MAX_PDU raised to 1 GiB a declared 512 MiB P-DATA is allowed, but read in pieces as it arrives."""
    app = await _app(aiohttp_client, tmp_path, max_pdu=str(1024 * MB))
    port = app[RECEIVER].port

    def declare_and_leave() -> None:
        assoc, context_id, negotiated = _established(port)
        assert negotiated == 1024 * MB
        sock = assoc.dul.socket.socket
        sock.sendall(bytes.fromhex("0400") + (512 * MB).to_bytes(4, "big") + bytes(MB))  # 1 MiB of it, then gone
        sock.shutdown(socket.SHUT_WR)
        _read_until_closed(sock)
        sock.close()

    with RssPeak() as rss:
        await asyncio.to_thread(declare_and_leave)
    assert rss.growth < 40 * MB, f"RSS grew by {rss.growth / MB:.0f} MB"
    assert await echoscu(port) == 0


async def test_spooled_encapsulated_instance_is_measured_and_rendered(aiohttp_client, tmp_path: Path,
                                                                     monkeypatch, caplog) -> None:
    """The spooled path walks fragment items without reading them; same outcome as the in-memory path."""
    from conftest import DATA

    from xrayvision.keys import RENDERER

    monkeypatch.setattr(spool, "SPOOL_ABOVE", 64 * 1024)
    app = await _app(aiohttp_client, tmp_path)
    port = app[RECEIVER].port
    broken = tmp_path / "broken_items.dcm"
    ds = pydicom.dcmread(DATA / "RG1_J2KR.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    # An item tag that is not one: (FFFE,E000) becomes (FFFE,E001) in the second item.
    raw = bytearray(ds.PixelData)
    second = raw.index(b"\xfe\xff\x00\xe0", 8)
    raw[second + 2] = 0x01
    ds.PixelData = bytes(raw)
    ds.save_as(broken, enforce_file_format=True)

    result = await storescu(port, DATA / "RG1_J2KR.dcm", flags=("-xv",))
    assert result.status(DATA / "RG1_J2KR.dcm") == SUCCESS, result.output

    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the file's bytes as they are (dcmtk checks)

    status = await asyncio.to_thread(c_store, port, broken, sop_class=ds.SOPClassUID,
                                     syntax=ds.file_meta.TransferSyntaxUID)
    assert status == [0xA900]
    assert "among the fragment items" in caplog.text  # the spooled file's walk found it
    await asyncio.wait_for(app[RENDERER].idle.wait(), timeout=60)
    (row,) = _rows(app)
    assert row["status"] == "queued" and row["image"] == f"{row['uid']}.png"
    assert not list(app[SETTINGS].general.images_dir.glob(".*.tmp"))


def test_the_real_server_survives_the_six_bytes_and_silent_connections(tmp_path: Path) -> None:
    """The same attacks on the `xrayvision` command, measured on its own process."""
    import subprocess

    from conftest import DCMTK, xrayvision_command
    from test_crash import _wait_listening, _write_config

    config, port = _write_config(tmp_path)
    config.write_text(config.read_text().replace("[dicom]\n", "[dicom]\nASSOC_TIMEOUT = 1\n"))
    with (tmp_path / "server.log").open("ab") as log:
        server = subprocess.Popen([*xrayvision_command(), "--config", str(config)], cwd=tmp_path,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, server)
        echo = [str(DCMTK / "echoscu"), "-aec", "XRAYVISION", "127.0.0.1", str(port)]
        # One real association first, so that what start-up and a first association allocate is in the baseline.
        assert subprocess.run(echo, capture_output=True, timeout=60).returncode == 0
        process = psutil.Process(server.pid)
        before = process.memory_info().rss
        attacks = [_connect(port) for _ in range(6)]
        for sock in attacks:
            sock.sendall(bytes.fromhex("0100FFFFFFF0"))
        silent = [_connect(port) for _ in range(6)]
        assert all(_closed_within(sock, 15) for sock in (*attacks, *silent))
        grown = process.memory_info().rss - before
        assert grown < 16 * MB, f"the server grew by {grown / MB:.0f} MB"
        assert subprocess.run(echo, capture_output=True, timeout=60).returncode == 0
        for sock in (*attacks, *silent):
            sock.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode == 0
    assert "Aborted a DICOM connection from 127.0.0.1" in (tmp_path / "server.log").read_text()


# --- deflate bombs ----------------------------------------------------------------------------------------------

INFLATES_TO = 1024 * MB  # a CR whose pixel data is a gigabyte of zeros, about 1 MB once deflated


@pytest.fixture(scope="module")
def deflate_bomb(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """A Part 10 file in Deflated Explicit VR Little Endian whose dataset inflates to a gigabyte, made without
    holding that gigabyte: the file meta, then the raw deflate stream of the header elements and the zeros."""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = cr_dataset(16, 16)
    del ds.PixelData
    ds.Rows, ds.Columns = 16384, INFLATES_TO // (16384 * 2)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    meta, body = DicomBytesIO(), DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    pixel_header = bytes.fromhex("E07F1000") + b"OW\x00\x00" + INFLATES_TO.to_bytes(4, "little")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    path = tmp_path_factory.mktemp("bomb") / "bomb.dcm"
    with path.open("wb") as out:
        out.write(b"\x00" * 128 + b"DICM" + meta.getvalue())
        out.write(deflater.compress(body.getvalue() + pixel_header))
        zeros = bytes(MB)
        for _ in range(INFLATES_TO // MB):
            out.write(deflater.compress(zeros))
        out.write(deflater.flush())
    assert path.stat().st_size < 2 * MB
    return path


def _send_file(port: int, path: Path, source: str = "127.0.0.1") -> int:
    """C-STORE the file's dataset bytes as they are (pynetdicom re-encodes nothing), from `source`."""
    from pynetdicom import AE, _config

    meta = pydicom.filereader.read_file_meta_info(path)  # not dcmread: it would inflate a deflated dataset
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="XRAYVISION", bind_address=(source, 0))
        assert assoc.is_established
        try:
            return int(assoc.send_c_store(path).Status)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked


@pytest.mark.parametrize(("spool_above", "dicom"), [
    (None, {"max_instance_mb": "8"}),
    (64 * 1024, {"max_instance_mb": "64"}),
    (None, {"max_instance_mb": "64", "max_spool_mb": "4"}),  # its inflated copy on disk counts in the budget
], ids=["in-memory", "spooled", "over-spool-budget"])
async def test_deflate_bomb_is_refused_without_inflating_it(aiohttp_client, tmp_path: Path, monkeypatch,
                                                            deflate_bomb: Path, spool_above, dicom, caplog) -> None:
    """A megabyte that inflates to a gigabyte: inflated only up to MAX_INSTANCE_MB, and past SPOOL_ABOVE into a
    temporary file, not memory (spooled: the 1 MB stream goes to disk as it arrives, and so do 64 MB inflated)."""
    if spool_above:
        monkeypatch.setattr(spool, "SPOOL_ABOVE", spool_above)
    app = await _app(aiohttp_client, tmp_path, **dicom)
    port = app[RECEIVER].port

    with RssPeak() as rss:
        status = await asyncio.to_thread(_send_file, port, deflate_bomb)
    assert status == 0xA700
    assert rss.growth < 24 * MB, f"RSS grew by {rss.growth / MB:.0f} MB inflating a deflate bomb"
    assert app[RECEIVER].spool_budget.used == 0
    why = "would pass MAX_SPOOL_MB" if "max_spool_mb" in dicom else "inflates past MAX_INSTANCE_MB"
    assert why in caplog.text
    assert _rows(app) == []
    assert list(app[SETTINGS].general.images_dir.iterdir()) == []
    # An ordinary deflated instance is still taken (storescu deflates it itself).
    image = synthetic_cr(tmp_path / "deflate.dcm", 256, 256)
    result = await storescu(port, image, flags=("-xd",))
    assert "Deflated" in result.output and result.status(image) == SUCCESS, result.output
    assert len(_rows(app)) == 1


# --- association slots ------------------------------------------------------------------------------------------


def _still_open(sock: socket.socket) -> bool:
    """Whether the server has not closed this (idle, never answered) connection; does not wait."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def _wait_until(condition, deadline: float = 30) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "the condition did not come true"
        time.sleep(0.01)


async def test_idle_connections_from_many_hosts_do_not_keep_a_real_peer_out(aiohttp_client, tmp_path: Path) -> None:
    """127.0.0.2 to .6 each open their share (MAX_ASSOCIATIONS_PER_HOST, 8) of connections that never ask for an
    association: 40, more than MAX_ASSOCIATIONS (32). The asking phase holds at most 16 of them, and a real peer's
    connection makes room for itself by closing the oldest of the host holding the most."""
    app = await _app(aiohttp_client, tmp_path, assoc_timeout="120")
    port = app[RECEIVER].port
    image = synthetic_cr(tmp_path / "cr.dcm", 256, 256)
    hosts = [f"127.0.0.{n}" for n in range(2, 7)]
    idle = await asyncio.to_thread(lambda: [_connect(port, host) for host in hosts for _ in range(8)])
    try:
        # Every one was taken in; those beyond the asking phase's 16 slots cost an older one its place.
        await asyncio.to_thread(_wait_until, lambda: sum(map(_still_open, idle)) == 16)
        assert app[RECEIVER].admission.held() == 16
        assert await echoscu(port) == 0
        assert (await storescu(port, image)).status(image) == SUCCESS
        assert sum(map(_still_open, idle)) >= 14  # the real peers displaced one idle connection each
    finally:
        for sock in idle:
            sock.close()
    assert len(_rows(app)) == 1


async def test_a_host_over_its_share_of_associations_is_rejected_not_cut_off(aiohttp_client, tmp_path: Path) -> None:
    """A real A-ASSOCIATE-RQ over MAX_ASSOCIATIONS_PER_HOST gets A-ASSOCIATE-RJ (transient, local limit exceeded),
    which a PACS retries cleanly, rather than a closed connection."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    app = await _app(aiohttp_client, tmp_path, max_associations_per_host="2")
    port = app[RECEIVER].port

    def associate(source: str):  # type: ignore[no-untyped-def]
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        return ae.associate("127.0.0.1", port, ae_title="XRAYVISION", bind_address=(source, 0))

    def scenario():  # type: ignore[no-untyped-def]
        held = [associate("127.0.0.2"), associate("127.0.0.2")]
        try:
            third = associate("127.0.0.2")
            primitive = third.acceptor.primitive
            answer = (primitive.result, primitive.result_source, primitive.diagnostic) if primitive else None
            other = associate("127.0.0.3")  # another host is not affected
            other_ok = other.is_established
            other.release()
            return [a.is_established for a in held], third.is_rejected, answer, other_ok
        finally:
            for assoc in held:
                assoc.release()

    established, rejected, answer, other_ok = await asyncio.to_thread(scenario)
    assert established == [True, True]
    assert rejected and answer == (0x02, 0x03, 0x02)
    assert other_ok
    again = await asyncio.to_thread(associate, "127.0.0.2")  # its slots come back once released
    assert again.is_established
    again.release()


async def test_a_pdu_trickled_a_byte_at_a_time_is_cut_off(aiohttp_client, tmp_path: Path, monkeypatch) -> None:
    """Once associated a PDU must arrive whole within PDU_TIMEOUT of its first byte, not within PDU_TIMEOUT of each
    byte: a peer trickling a byte now and then cannot hold its slot forever."""
    from xrayvision.dicom import receiver

    monkeypatch.setattr(receiver, "PDU_TIMEOUT", 1.0, raising=False)
    app = await _app(aiohttp_client, tmp_path)
    port = app[RECEIVER].port

    def trickle() -> bytes | None:
        assoc, _, _ = _established(port)
        sock = assoc.dul.socket.socket
        sock.sendall(bytes.fromhex("0400") + (1000).to_bytes(4, "big"))  # a P-DATA-TF of 1,000 bytes...
        sock.settimeout(0.1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # ...sent a byte every 0.1 s, far within any per-read timeout
            try:
                sock.send(b"\x00")
                answer = sock.recv(64)
                return answer
            except TimeoutError:
                continue
            except OSError:
                return b""
        sock.close()
        return None

    answer = await asyncio.to_thread(trickle)
    assert answer is not None, "the trickling peer kept its association"
    assert answer[:1] in (bytes([A_ABORT]), b"")
    assert await echoscu(port) == 0


def test_admission_phases_and_total() -> None:
    """limits.Admission on its own, with socket pairs standing for connections: the asking phase's cap and who
    makes room, the associated phase's caps, the total, and slots given back."""
    from xrayvision.connections import HOST, TOTAL
    from xrayvision.dicom.limits import Admission

    admission = Admission(max_associations=4, per_host=2)  # asking: 2 in all, 2 per host; 6 connections in all
    pairs = [socket.socketpair() for _ in range(8)]
    ours = [a for a, _ in pairs]
    try:
        assert admission.connect(ours[0], "10.0.0.1") is None
        assert admission.connect(ours[1], "10.0.0.1") is None
        assert admission.connect(ours[2], "10.0.0.1") == HOST  # over its share: closed at once
        # Every asking slot is taken: another host's connection closes the busiest host's oldest.
        assert admission.connect(ours[3], "10.0.0.2") is None
        assert pairs[0][1].recv(1) == b""  # shut down
        assert admission.requested(ours[0]) == TOTAL  # had its request arrived meanwhile, it is refused
        # A host holding as few as the newcomer is not made to give way.
        assert admission.connect(ours[4], "10.0.0.3") is None  # 10.0.0.1 holds 1, 10.0.0.3 none: ours[1] goes
        assert admission.connect(ours[5], "10.0.0.4") is None  # now .2 and .3 hold 1 each: .2's goes
        assert admission.asking.held() == 2
        for conn in (ours[4], ours[5]):
            assert admission.requested(conn) is None  # associated
        assert admission.asking.held() == 0 and admission.associated.held() == 2
        for conn, host in ((ours[6], "10.0.0.3"), (ours[7], "10.0.0.3")):
            assert admission.connect(conn, host) is None
        assert admission.requested(ours[6]) is None
        assert admission.requested(ours[7]) == HOST  # 10.0.0.3 holds its 2 associations: A-ASSOCIATE-RJ
        for conn in ours:
            admission.closed(conn)
            admission.closed(conn)  # twice is harmless
        assert admission.held() == admission.asking.held() == admission.associated.held() == 0
    finally:
        for a, b in pairs:
            a.close()
            b.close()

    full = Admission(max_associations=2, per_host=8)  # 1 asking, 3 in all
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        for n, (conn, _) in enumerate(pairs[:3]):
            assert full.connect(conn, f"10.0.1.{n}") is None
            if n < 2:
                assert full.requested(conn) is None
        assert full.connect(pairs[3][0], "10.0.1.9") == TOTAL  # every slot of either phase is held
    finally:
        for a, b in pairs:
            a.close()
            b.close()


async def test_dicom_refusals_are_logged_through_the_one_log_throttle(aiohttp_client, tmp_path: Path, monkeypatch,
                                                                    caplog) -> None:
    """A flood of refused connections logs one line a minute, with the count of the others (logthrottle.LogThrottle,
    the same as the HTTP server's)."""
    from xrayvision import logthrottle
    from xrayvision.dicom import receiver

    clock = [time.monotonic() + 1e6]
    monkeypatch.setattr(logthrottle, "now", lambda: clock[0])
    monkeypatch.setattr(receiver, "_quiet", logthrottle.LogThrottle(receiver.logger), raising=False)
    app = await _app(aiohttp_client, tmp_path, max_associations_per_host="1", assoc_timeout="120")
    port = app[RECEIVER].port
    held = await asyncio.to_thread(_connect, port, "127.0.0.2")

    def refused(count: int) -> None:
        for _ in range(count):
            with _connect(port, "127.0.0.2") as sock:
                _read_until_closed(sock)  # closed at once: 127.0.0.2 holds its one

    try:
        await asyncio.to_thread(refused, 5)
        lines = [r.getMessage() for r in caplog.records if "Closed a DICOM connection from 127.0.0.2" in r.getMessage()]
        assert len(lines) == 1, lines
        clock[0] += 61
        await asyncio.to_thread(refused, 1)
        lines = [r.getMessage() for r in caplog.records if "Closed a DICOM connection from 127.0.0.2" in r.getMessage()]
        assert len(lines) == 2 and lines[1].endswith("(4 more like this in the last 61 s)"), lines
    finally:
        held.close()


async def test_spool_budget_is_shared_by_every_association(aiohttp_client, tmp_path: Path, monkeypatch) -> None:
    """MAX_SPOOL_MB bounds what all associations together hold in spool files: while one peer is half-way through a
    large instance, another's that would pass the budget is answered 0xA700 and leaves nothing; both go through
    once the budget is free again."""
    monkeypatch.setattr(spool, "SPOOL_ABOVE", 256 * 1024)
    app = await _app(aiohttp_client, tmp_path, max_spool_mb="2")
    port = app[RECEIVER].port
    budget = app[RECEIVER].spool_budget
    folder = app[SETTINGS].general.images_dir

    def prepare():  # type: ignore[no-untyped-def]
        assoc, context_id, _ = _established(port)
        first = cr_dataset(768, 1024)  # 1.5 MB, in 64 KiB PDUs so that the server sees it arrive
        return assoc, first, _c_store_pdus(first, context_id, 1, 64 * 1024)

    assoc, first, wire = await asyncio.to_thread(prepare)
    sock = assoc.dul.socket.socket
    try:
        await asyncio.to_thread(sock.sendall, wire[:1200 * 1024])  # 1.2 MB of it, then the peer pauses
        await asyncio.to_thread(_wait_until, lambda: budget.used >= 1024 * 1024)
        second = tmp_path / "second.dcm"
        cr_dataset(512, 1024).save_as(second, enforce_file_format=True)  # 1 MB: spooled, past what is left
        assert await asyncio.to_thread(_send_file, port, second) == 0xA700
        assert [p for p in folder.iterdir() if not p.name.startswith(".spool-")] == []
        assert len(list(folder.glob(".spool-*.tmp"))) == 1  # only the first's, still arriving
        await asyncio.to_thread(sock.sendall, wire[1200 * 1024:])
        await asyncio.to_thread(_wait_until, lambda: len(_rows(app)) == 1)
    finally:
        sock.close()
    assert _rows(app)[0]["uid"] == first.SOPInstanceUID
    await asyncio.to_thread(_wait_until, lambda: budget.used == 0)
    assert await asyncio.to_thread(_send_file, port, second) == 0x0000
    assert budget.used == 0
    assert len(_rows(app)) == 2
