"""Crash safety: the server is killed with SIGKILL while a modality sends; every instance it acknowledged is in the
store after a restart, and gets its PNG. Counted, not sampled."""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from conftest import ADMIN, DCMTK, echoscu, free_port, parse_storescu, storescu, synthetic_cr, xrayvision_command
from llm_server import LLMServer

INSTANCES = 300


def _write_config(tmp_path: Path, extra: str = "") -> tuple[Path, int]:
    port = free_port()
    config = tmp_path / "server.cfg"
    config.write_text(
        "[general]\n"
        f"XRAYVISION_DB_PATH = {tmp_path / 'xrayvision.db'}\n"
        f"IMAGES_DIR = {tmp_path / 'images'}\n"
        f"[users]\n{ADMIN[0]} = {ADMIN[1]},admin\n"
        f"[dicom]\nAE_PORT = {port}\n"
        f"[dashboard]\nDASHBOARD_PORT = {free_port()}\n"
        + extra
    )
    return config, port


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*xrayvision_command(), "--config", str(config)],
        cwd=config.parent, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )


def _wait_listening(port: int, server: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "server exited during start-up"
        echo = subprocess.run([str(DCMTK / "echoscu"), "-aec", "XRAYVISION", "127.0.0.1", str(port)],
                              capture_output=True)
        if echo.returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("server did not start listening")


def _query(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_sigkill_during_ingest_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    files_dir = tmp_path / "send"
    files_dir.mkdir()
    uid_of: dict[str, str] = {}
    for n in range(INSTANCES):
        path = synthetic_cr(files_dir / f"cr{n:03d}.dcm", 256, 256, seed=n, PatientID=f"CRASH{n:03d}")
        uid_of[path.name] = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    config, port = _write_config(tmp_path)
    log = tmp_path / "server.log"
    db = tmp_path / "xrayvision.db"

    server = _start(config, log)
    try:
        _wait_listening(port, server)
        sender_log = tmp_path / "storescu.log"
        with sender_log.open("wb") as out:
            sender = subprocess.Popen(
                [str(DCMTK / "storescu"), "-v", "-aec", "XRAYVISION", "127.0.0.1", str(port),
                 *sorted(str(p) for p in files_dir.iterdir())],
                stdout=out, stderr=subprocess.STDOUT,
            )
            # Kill once about a third has been acknowledged: mid-stream, with the renderer behind.
            deadline = time.monotonic() + 120
            while sender_log.read_text(errors="replace").count("Received Store Response") < INSTANCES // 3:
                assert time.monotonic() < deadline, "sending did not progress"
                assert sender.poll() is None, "storescu finished before the kill"
                time.sleep(0.02)
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
            sender.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    statuses = parse_storescu(sender_log.read_text(errors="replace"))
    acknowledged = {uid_of[name] for name, status in statuses.items() if status == "Success"}
    assert INSTANCES // 3 <= len(acknowledged) < INSTANCES, "the kill did not land mid-stream"

    server = _start(config, log)
    try:
        _wait_listening(port, server)
        deadline = time.monotonic() + 120
        while _query(db, "SELECT COUNT(*) FROM exams WHERE status = 'queued' AND image IS NULL")[0][0]:
            assert time.monotonic() < deadline, "rendering did not catch up after the restart"
            time.sleep(0.2)
        rows = {uid: (status, image) for uid, status, image in _query(db, "SELECT uid, status, image FROM exams")}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    missing = acknowledged - rows.keys()
    assert not missing, f"{len(missing)} acknowledged instance(s) lost"
    images = tmp_path / "images"
    for uid in acknowledged:
        status, image = rows[uid]
        assert status == "queued" and image == f"{uid}.png", (uid, status, image)
        assert (images / image).stat().st_size > 0
    # Anything else in the store is an instance in flight at the kill: complete, never half-written.
    assert rows.keys() <= set(uid_of.values())
    assert not list(images.glob("*.tmp"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_server_stops_cleanly_on_signal(tmp_path: Path, signum: int) -> None:
    config, port = _write_config(tmp_path)
    server = _start(config, tmp_path / "server.log")
    try:
        _wait_listening(port, server)
        server.send_signal(signum)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


async def _await_listening(port: int, server: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while await echoscu(port) != 0:
        assert server.poll() is None, "server exited during start-up"
        assert time.monotonic() < deadline, "server did not start listening"
        await asyncio.sleep(0.2)


async def test_sigkill_during_analysis_then_every_exam_ends_done(tmp_path: Path) -> None:
    """Killed while the model is answering: after a restart the interrupted exams are analysed again, once."""
    async with LLMServer(latency=0.4) as llm:
        config, port = _write_config(tmp_path, (
            f"[openai]\nOPENAI_URL_PRIMARY = {llm.base_url}\nMODEL_NAME = medgemma-test\nCONCURRENCY = 2\n"
            "PROBE_INTERVAL = 0.2\nTIMEOUT = 10\n"))
        files = [synthetic_cr(tmp_path / f"a{n}.dcm", 128, 128, seed=n, PatientID=f"AN{n:03d}") for n in range(12)]
        db = tmp_path / "xrayvision.db"
        log = tmp_path / "server.log"
        server = _start(config, log)
        try:
            await _await_listening(port, server)
            sent = await storescu(port, *files)
            assert all(sent.status(f) == "Success" for f in files), sent.output
            deadline = time.monotonic() + 60
            while True:  # kill with answers stored and requests in flight
                counts = dict(_query(db, "SELECT status, COUNT(*) FROM exams GROUP BY status"))
                if counts.get("done", 0) >= 2 and counts.get("processing", 0) >= 1:
                    break
                assert time.monotonic() < deadline, counts
                await asyncio.sleep(0.02)
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        interrupted = _query(db, "SELECT COUNT(*) FROM exams WHERE status = 'processing'")[0][0]
        assert interrupted >= 1

        server = _start(config, log)
        try:
            await _await_listening(port, server)
            deadline = time.monotonic() + 60
            while _query(db, "SELECT COUNT(*) FROM exams WHERE status != 'done'")[0][0]:
                assert time.monotonic() < deadline, _query(db, "SELECT status, reason FROM exams")
                await asyncio.sleep(0.1)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        reports = dict(_query(db, "SELECT e.uid, COUNT(a.seq) FROM exams e LEFT JOIN ai_reports a USING (uid) "
                                  "GROUP BY e.uid"))
        assert len(reports) == len(files)
        assert set(reports.values()) == {1}, "an answer was lost or stored twice"
        assert llm.problems == []
