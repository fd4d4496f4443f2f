"""The live feed at /ws: frames in the contract's shape, events as they are committed, redaction per role, replay
after a reconnect, and a stalled client dropped without slowing the others."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN, READER, add_exams, basic, make_settings

from xrayvision import events
from xrayvision.app import build_app
from xrayvision.keys import BUS
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
        await asyncio.sleep(0.05)
        assert slow not in hub.clients and stalled.closed_with == 1008
        assert fast in hub.clients
        uids = [json.loads(f)["event"]["payload"]["uid"] for f in reading.frames if '"requeue"' in f]
        assert uids == [f"9.{n}" for n in range(live.MAX_PENDING * 3)]
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
        await asyncio.sleep(0.3)
        assert deaf not in hub.clients and line.aborted
    finally:
        writer.cancel()
