"""The live feed at /ws: frames in the contract's shape, events as they are committed, redaction per role, replay
after a reconnect, and a stalled client dropped without slowing the others."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN, READER, add_exams, basic, make_settings
from llm_server import LLMServer

from xrayvision import events
from xrayvision.app import build_app
from xrayvision.keys import BUS, POOL, STORE
from xrayvision.store import reviews
from xrayvision.web import live

FRAME_KEYS = {"id", "dashboard", "openai", "timings", "next_query"}
DASHBOARD_KEYS = {"queue_size", "check_queue_size", "processing", "error_count", "ignore_count", "success_count"}


@pytest.fixture
async def app_client(aiohttp_client, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, {"openai": {"openai_url_primary": ""},
                                        "dashboard": {"rate_limit": "0"}})
    return await aiohttp_client(build_app(settings))


async def _frame(ws, name: str | None = None, timeout: float = 5) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The next frame (with the named event, when a name is given)."""
    while True:
        frame = json.loads((await asyncio.wait_for(ws.receive(), timeout)).data)
        if name is None or frame.get("event", {}).get("name") == name:
            return frame


async def _until(condition, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Poll `condition()` until it holds; fail naming `what` after a generous deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_connect_gets_a_frame_in_the_contract_shape(app_client) -> None:  # type: ignore[no-untyped-def]
    async with app_client.ws_connect("/ws", headers=basic(ADMIN)) as ws:
        frame = await _frame(ws)
        assert FRAME_KEYS <= frame.keys() and DASHBOARD_KEYS <= frame["dashboard"].keys()
        assert frame["event"]["name"] == "connected" and frame["event"]["payload"]["address"] == "127.0.0.1"
        assert frame["next_query"] == "Disabled"
        assert set(frame["timings"]) == {"avg_latency", "min_latency", "max_latency"}
        assert set(frame["openai"]) == {"url", "health", "endpoints"}


async def test_the_feed_needs_credentials_and_our_origin(app_client) -> None:  # type: ignore[no-untyped-def]
    assert (await app_client.get("/ws")).status == 401
    handshake = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                 "Sec-WebSocket-Key": "x3JJHMbDL1EzLkh9GBhXDw=="}
    resp = await app_client.get("/ws", headers={**basic(ADMIN), **handshake, "Origin": "https://evil.example"})
    assert resp.status == 403


async def test_a_new_exam_and_a_review_reach_every_client_redacted_for_users(
        app_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = app_client.server.app
    async with app_client.ws_connect("/ws", headers=basic(ADMIN)) as admin_ws, \
            app_client.ws_connect("/ws", headers=basic(READER)) as user_ws:
        await _frame(admin_ws, "connected")
        await _frame(user_ws, "connected")
        (uid,) = await add_exams(app, tmp_path, 1)
        stored = await _frame(admin_ws, events.STORED)
        assert stored["event"]["payload"] == {"uid": uid}
        assert (await _frame(user_ws, events.STORED))["event"]["payload"] == {"uid": uid}

        resp = await app_client.post("/api/radreview", json={"uid": uid, "normal": False}, headers=basic(ADMIN))
        assert resp.status == 200
        full = (await _frame(admin_ws, events.RADREVIEW))["event"]["payload"]
        redacted = (await _frame(user_ws, events.RADREVIEW))["event"]["payload"]
        assert full["uid"] == redacted["uid"] == uid
        assert full["patient"]["name"] == "Ionescu Maria0" and full["report"]["review"]["reviewer"] == "admin"
        assert redacted["patient"]["name"] == "I.M." and redacted["report"]["review"]["reviewer"] == "A."
        assert redacted["patient"]["birthdate"] is None and "Ionescu" not in json.dumps(redacted)


async def test_counts_follow_the_store(app_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = app_client.server.app
    async with app_client.ws_connect("/ws", headers=basic(ADMIN)) as ws:
        assert (await _frame(ws))["dashboard"]["queue_size"] == 0
        await add_exams(app, tmp_path, 3)
        deadline = asyncio.get_running_loop().time() + 5
        while (await _frame(ws))["dashboard"]["queue_size"] != 3:
            assert asyncio.get_running_loop().time() < deadline


async def test_a_client_that_reconnects_gets_what_it_missed(app_client) -> None:  # type: ignore[no-untyped-def]
    bus = app_client.server.app[BUS]
    async with app_client.ws_connect("/ws", headers=basic(ADMIN)) as ws:
        last = (await _frame(ws))["id"]
    missed = [bus.publish(events.REQUEUE, {"uid": f"1.2.{n}", "status": "requeue"}) for n in range(3)]
    async with app_client.ws_connect(f"/ws?last_id={last}", headers=basic(ADMIN)) as ws:
        await _frame(ws, "connected")
        replayed = [await _frame(ws, events.REQUEUE) for _ in missed]
        assert [f["event"]["id"] for f in replayed] == [e.id for e in missed]
        assert [f["event"]["payload"]["uid"] for f in replayed] == ["1.2.0", "1.2.1", "1.2.2"]


async def test_a_client_too_far_behind_is_told_to_resync(app_client, monkeypatch) -> None:  # type: ignore
    bus = app_client.server.app[BUS]
    for n in range(events.HISTORY + 5):
        bus.publish(events.REQUEUE, {"uid": f"1.{n}", "status": "requeue"})
    async with app_client.ws_connect("/ws?last_id=1", headers=basic(ADMIN)) as ws:
        await _frame(ws, "connected")
        assert (await _frame(ws))["event"]["name"] == live.RESYNC


class _StalledSocket:
    """A browser that stopped reading: sending never completes."""

    def __init__(self) -> None:
        self.closed_with: int | None = None

    async def send_str(self, data: str) -> None:
        await asyncio.Event().wait()

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        self.closed_with = code


class _ReadingSocket:
    def __init__(self) -> None:
        self.frames: list[str] = []

    async def send_str(self, data: str) -> None:
        self.frames.append(data)

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        pass


async def test_a_stalled_client_is_dropped_and_the_others_get_everything(app_client) -> None:  # type: ignore
    hub = app_client.server.app[live.HUB]
    stalled, reading = _StalledSocket(), _ReadingSocket()
    slow, fast = live._Client(stalled, admin=True), live._Client(reading, admin=True)  # type: ignore[arg-type]
    hub.clients |= {slow, fast}
    writers = [asyncio.create_task(hub._write(c)) for c in (slow, fast)]
    bus = app_client.server.app[BUS]
    try:
        for n in range(live.MAX_PENDING * 3):
            bus.publish(events.REQUEUE, {"uid": f"9.{n}", "status": "requeue"})
            await asyncio.sleep(0)  # let writers run, as the loop would between events
        def uids() -> list[str]:
            return [json.loads(f)["event"]["payload"]["uid"] for f in reading.frames if '"requeue"' in f]

        await _until(lambda: len(uids()) == live.MAX_PENDING * 3 and stalled.closed_with is not None,
                     "the reading client's frames and the stalled one's close")
        assert slow not in hub.clients and stalled.closed_with == 1008
        assert fast in hub.clients
        assert uids() == [f"9.{n}" for n in range(live.MAX_PENDING * 3)]
    finally:
        for task in writers:
            task.cancel()
        hub.clients -= {slow, fast}


class _DeafSocket(_StalledSocket):
    """Reads nothing at all, not even the close frame."""

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        await asyncio.Event().wait()


class _Line:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


async def test_a_client_deaf_to_the_close_frame_is_cut_off(app_client, monkeypatch) -> None:  # type: ignore
    monkeypatch.setattr(live, "CLOSE_TIMEOUT", 0.05)
    hub = app_client.server.app[live.HUB]
    line = _Line()
    deaf = live._Client(_DeafSocket(), admin=True, transport=line)  # type: ignore[arg-type]
    hub.clients.add(deaf)
    writer = asyncio.create_task(hub._write(deaf))
    try:
        for n in range(live.MAX_PENDING + 2):
            app_client.server.app[BUS].publish(events.REQUEUE, {"uid": f"8.{n}", "status": "requeue"})
        await _until(lambda: line.aborted, "the deaf client's line to be cut")
        assert deaf not in hub.clients
    finally:
        writer.cancel()


# --- a real client that stops reading ---------------------------------------------------------------------------

async def test_a_real_socket_that_stops_reading_is_dropped_and_the_others_get_everything(
        app_client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A raw TCP client does the WebSocket handshake and then never reads; frames pile up in the kernel's buffers,
    then in its queue, and the hub drops it and cuts the line, while a reading client misses nothing."""
    monkeypatch.setattr(live, "CLOSE_TIMEOUT", 0.2)
    app = app_client.server.app
    hub, bus, loop = app[live.HUB], app[BUS], asyncio.get_running_loop()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills sooner
    raw.setblocking(False)
    try:
        await loop.sock_connect(raw, (app_client.host, app_client.port))
        token = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
        await loop.sock_sendall(raw, (
            f"GET /ws HTTP/1.1\r\nHost: {app_client.host}:{app_client.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Authorization: Basic {token}\r\n\r\n").encode())
        address = raw.getsockname()

        def deaf() -> live._Client | None:
            return next((c for c in hub.clients if c.transport and c.transport.get_extra_info("peername") == address),
                        None)

        await _until(lambda: deaf() is not None, "the raw client to join the hub")
        stalled = deaf()
        assert stalled is not None
        async with app_client.ws_connect("/ws", headers=basic(ADMIN)) as reader:
            await _frame(reader, "connected")
            padding = "0" * 16_000  # big frames: the buffers fill after a few hundred
            sent = 0
            while not stalled.dropped:
                assert sent < 20_000, "the stalled client was never dropped"
                bus.publish(events.REQUEUE, {"uid": f"{sent}.{padding}", "status": "requeue"})
                # Paced by the reader: the next event goes once the reader has this one.
                got = (await _frame(reader, events.REQUEUE))["event"]["payload"]["uid"]
                assert got == f"{sent}.{padding}"
                sent += 1
            assert sent > live.MAX_PENDING  # it took the kernel's buffers and the whole queue first
            bus.publish(events.REQUEUE, {"uid": "after", "status": "requeue"})
            assert (await _frame(reader, events.REQUEUE))["event"]["payload"]["uid"] == "after"
            assert stalled not in hub.clients
            assert stalled.transport is not None
            await _until(stalled.transport.is_closing, "the stalled client's line to be cut")
        # Only now does the raw client read: what the kernel held, then the end of the connection.
        deadline = loop.time() + 30
        while True:
            assert loop.time() < deadline, "the server never closed the stalled connection"
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(raw, 1 << 20), timeout=30)
            except ConnectionResetError:
                break
            if not chunk:
                break
    finally:
        raw.close()


async def test_the_heartbeat_sends_a_frame_when_nothing_happens(aiohttp_client, tmp_path: Path,
                                                                monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert live.HEARTBEAT == 10  # what the README promises
    monkeypatch.setattr(live, "HEARTBEAT", 0.05)  # the hub reads it when built
    client = await aiohttp_client(build_app(make_settings(tmp_path, {"openai": {"openai_url_primary": ""}})))
    assert client.server.app[live.HUB].heartbeat == 0.05
    assert live.Hub(client.server.app).heartbeat == 0.05 and live.Hub(client.server.app, heartbeat=3).heartbeat == 3
    async with client.ws_connect("/ws", headers=basic(READER)) as ws:
        await _frame(ws, "connected")
        for _ in range(3):  # nothing is published: these frames are the heartbeat's
            frame = await _frame(ws, timeout=30)
            assert "event" not in frame and FRAME_KEYS <= frame.keys()


# --- what users see -------------------------------------------------------------------------------------------

PATIENT, RADIOLOGIST, REVIEWER = "Zamfirescu^Ileana", "Livia Caramitru", "Octavian Bratianu"


async def test_every_event_kind_reaches_users_without_names_numbers_or_birth_dates(
        app_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = app_client.server.app
    bus = app[BUS]
    (uid,) = await add_exams(app, tmp_path, 1, PatientName=PATIENT)
    store = app[STORE]
    await store.execute("INSERT INTO rad_reports (uid, created, updated, text, severity, radiologist) "
                        "VALUES (?, '2026-11-02 09:00:00', '2026-11-02 09:00:00', 'Normal.', 2, ?)",
                        (uid, RADIOLOGIST))
    assert await reviews.add_review(store, uid, REVIEWER, abnormal=True)
    exam = await (await app_client.get(f"/api/exams/{uid}", headers=basic(ADMIN))).json()
    cnp = exam["patient"]["cnp"]
    secrets = ["Zamfirescu", "Ileana", "Livia", "Caramitru", "Octavian", "Bratianu", cnp, cnp[:7],
               exam["patient"]["birthdate"], exam["patient"]["birthdate"].replace("-", "")]
    # What a careless publisher might add to any event: every one of these must be dropped for users.
    extra = {"name": "Zamfirescu Ileana", "cnp": cnp, "birthdate": exam["patient"]["birthdate"],
             "reviewer": REVIEWER, "radiologist": RADIOLOGIST, "exam": exam}
    payloads = {
        events.STORED: {"uid": uid},
        events.PROCESSING_START: {"uid": uid, "patient": "Zamfirescu Ileana", "region": "chest"},
        events.NEW_EXAM: {"uid": uid, "positive": True, "reviewed": True, "severity": 7},
        events.ERROR: {"uid": uid, "reason": "model unavailable after 3 tries: cannot connect"},
        events.IGNORE: {"uid": uid, "reason": "region 'knee' is not analysed (not in [supported_regions])"},
        events.REQUEUE: {"uid": uid, "status": "requeue"},
        events.RADREVIEW: exam,
        events.RADREPORT: {"uid": uid, "rad_report": exam["report"]["rad"]},
        events.RADCHECK: {"uid": uid, "positive": 0, "severity": 2, "summary": "", "confidence": -1,
                          "radiologist": RADIOLOGIST},
        "some_future_event": exam,  # a kind nobody declared a redaction for
    }
    assert set(payloads) >= set(events.KINDS) - {events.STATE}  # every kind with a payload is tried
    assert set(live.REDACTIONS) >= set(events.KINDS)  # and every kind declares its redaction
    async with app_client.ws_connect("/ws", headers=basic(ADMIN)) as admin_ws, \
            app_client.ws_connect("/ws", headers=basic(READER)) as user_ws:
        await _frame(admin_ws, "connected")
        await _frame(user_ws, "connected")
        for name, payload in payloads.items():
            bus.publish(name, {**extra, **payload} if payload is not exam else payload)
        bus.publish(events.STATE)
        for name in payloads:
            admin_frame = await _frame(admin_ws, name)
            user_frame = await _frame(user_ws, name)
            user_text = json.dumps(user_frame, ensure_ascii=False)
            for secret in secrets:
                assert secret not in user_text, (name, secret)
            assert any(secret in json.dumps(admin_frame) for secret in secrets), name  # admins get it whole
            assert user_frame["event"]["id"] == admin_frame["event"]["id"]
            payload = user_frame["event"]["payload"]
            if name == "some_future_event":
                assert payload == {}
            elif name == events.RADREPORT:
                assert payload == {"uid": uid, "rad_report": {**exam["report"]["rad"], "radiologist": "L.C."}}
            elif name == events.RADCHECK:
                assert payload == {**payloads[name], "radiologist": "L.C."}
            elif name == events.RADREVIEW:
                assert payload["patient"]["name"] == "Z.I." and payload["report"]["review"]["reviewer"] == "O.B."
                assert payload["report"]["rad"]["radiologist"] == "L.C." and payload["patient"]["birthdate"] is None
            else:
                assert payload == {k: v for k, v in payloads[name].items() if k != "patient"} | (
                    {"patient": "Z.I."} if "patient" in payloads[name] else {}), name


async def test_users_get_the_model_endpoints_without_their_urls(aiohttp_client, tmp_path: Path) -> None:
    async with LLMServer() as llm:
        settings = make_settings(tmp_path, {"openai": {"openai_url_primary": llm.base_url, "probe_interval": "0.2"}})
        client = await aiohttp_client(build_app(settings))
        pool = client.server.app[POOL]
        await _until(lambda: pool.status()["url"] != "", "the endpoint's first probe")
        async with client.ws_connect("/ws", headers=basic(ADMIN)) as admin_ws, \
                client.ws_connect("/ws", headers=basic(READER)) as user_ws:
            admin = (await _frame(admin_ws, "connected"))["openai"]
            user = (await _frame(user_ws, "connected"))["openai"]
        assert admin["url"].startswith(llm.base_url) and admin["health"] == {"pri": True}
        assert user == {**admin, "url": "", "endpoints": [{"name": "pri", "label": "primary", "healthy": True}]}
        assert str(llm.port) not in json.dumps(user)


def test_the_endpoint_status_of_the_contract_is_redacted_for_users() -> None:
    status = {"url": "http://u:secret@10.0.0.5:8080/v1/chat/completions", "health": {"pri": False, "sec": True},
              "endpoints": [{"name": "pri", "label": "primary", "url": "http://u:secret@10.0.0.5:8080/v1",
                             "healthy": False, "error": "cannot connect to http://u:secret@10.0.0.5:8080",
                             "since": "2026-12-01T10:00:00Z"},
                            {"name": "sec", "label": "secondary", "url": "http://10.0.0.6/v1", "healthy": True,
                             "error": None, "since": None}]}
    assert live.redact_endpoints(status) == {
        "url": "", "health": {"pri": False, "sec": True},
        "endpoints": [{"name": "pri", "label": "primary", "healthy": False},
                      {"name": "sec", "label": "secondary", "healthy": True}]}


async def test_processed_counts_analyses_finished_this_week_whatever_the_exam_date(
        aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with LLMServer() as llm:
        settings = make_settings(tmp_path, {"openai": {"openai_url_primary": llm.base_url, "probe_interval": "0.2"}})
        client = await aiohttp_client(build_app(settings))
        app = client.server.app
        async with client.ws_connect("/ws", headers=basic(ADMIN)) as ws:
            assert (await _frame(ws, "connected"))["dashboard"]["success_count"] == 0
            # A study made years ago, sent and analysed now.
            (uid,) = await add_exams(app, tmp_path, 1, start=dt.datetime(2019, 5, 1, 8, 0))
            done = await _frame(ws, events.NEW_EXAM, timeout=60)
            assert done["event"]["payload"]["uid"] == uid
            deadline = asyncio.get_running_loop().time() + 30
            while (frame := await _frame(ws, timeout=30))["dashboard"]["success_count"] != 1:
                assert frame["dashboard"]["success_count"] == 0
                assert asyncio.get_running_loop().time() < deadline, "the count never followed the analysis"
