"""`/ws`: the live feed. Every event of the bus, and a heartbeat, goes to each browser as one JSON frame (the
contract's `dashboard`, `openai`, `timings`, `next_query` and, for a named event, `event`). A frame is encoded once
per audience, never once per client; each client has a bounded queue and its own writer, so a slow or stalled
browser is dropped and never slows the others. Events carry increasing ids: a client that reconnects with the last
id it saw gets what it missed."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import WSMsgType, web

from .. import events, timeutil
from ..keys import BUS, POOL, SETTINGS, STORE, USER, WORKER
from ..store import schema
from ..tasks import cancel_and_wait
from .errors import BadRequest
from .origin import check_origin
from .present import ADMIN, redact_exam

logger = logging.getLogger(__name__)

MAX_PENDING: Final = 64  # frames waiting for one client; past that the client is too slow and is dropped
HEARTBEAT: Final = 10.0  # seconds between state frames when nothing happens
COUNTS_REFRESH: Final = 0.2  # the header's counts are read again at most this often
PING: Final = 30.0  # WebSocket ping, so dead connections are noticed
CLOSE_TIMEOUT: Final = 2.0  # seconds a dropped client gets to take its close frame
RECENT_DAYS: Final = 7  # "processed" counts exams done in the last week
CONNECTED: Final = "connected"
RESYNC: Final = "resync"  # the client missed more than we keep: it should reload its state


@dataclass(eq=False)
class _Client:
    ws: web.WebSocketResponse
    admin: bool
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(MAX_PENDING))
    dropped: bool = False
    transport: asyncio.BaseTransport | None = None


class Hub:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.clients: set[_Client] = set()
        self.counts: dict[str, int] = {}
        self.recent_done = 0
        self._refresh = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()  # closes of dropped clients, kept until done
        self._unsubscribe = lambda: None

    async def start(self) -> None:
        await self._read_counts()
        self._unsubscribe = self.app[BUS].subscribe(self._on_event)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat(), name="ws-heartbeat"),
                       loop.create_task(self._counts_loop(), name="ws-counts")]

    async def stop(self) -> None:
        self._unsubscribe()
        await cancel_and_wait(*self._tasks)
        for client in list(self.clients):
            await client.ws.close(code=1001, message=b"server stopping")

    # --- state --------------------------------------------------------------------------------------------------
    async def _read_counts(self) -> None:
        store = self.app[STORE]
        rows = await store.fetch_all("SELECT status, COUNT(*) FROM exams GROUP BY status")
        self.counts = {status: n for status, n in rows}
        since = timeutil.to_store(timeutil.utc_now() - dt.timedelta(days=RECENT_DAYS))
        self.recent_done = int(await store.fetch_value(
            "SELECT COUNT(*) FROM exams WHERE status = ? AND created >= ?", (schema.DONE, since)) or 0)

    async def _counts_loop(self) -> None:
        """Counts follow events, but at most every COUNTS_REFRESH: a burst of events costs one query."""
        while True:
            await self._refresh.wait()
            self._refresh.clear()
            before = (dict(self.counts), self.recent_done)
            try:
                await self._read_counts()
            except Exception:
                logger.exception("Could not read the dashboard counts")
            if (self.counts, self.recent_done) != before:
                self.broadcast(None)
            await asyncio.sleep(COUNTS_REFRESH)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            self._refresh.set()
            self.broadcast(None)

    def state(self) -> dict[str, Any]:
        """The contract's frame without its event."""
        worker = self.app[WORKER]
        settings = self.app[SETTINGS]
        counts = self.counts
        return {
            "id": self.app[BUS].last_id,
            "dashboard": {
                "queue_size": counts.get(schema.QUEUED, 0) + counts.get(schema.REQUEUE, 0),
                "check_queue_size": counts.get(schema.CHECK, 0),
                "processing": ", ".join(sorted(set(worker.processing.values()))) or None,
                "error_count": counts.get(schema.ERROR, 0),
                "ignore_count": counts.get(schema.IGNORE, 0),
                "success_count": self.recent_done,
            },
            "openai": self.app[POOL].status(),
            "timings": worker.timings(),
            "next_query": "Disabled" if settings.processing.no_query else None,
        }

    # --- fan-out ------------------------------------------------------------------------------------------------
    def _on_event(self, event: events.Event) -> None:
        self._refresh.set()
        self.broadcast(None if event.name == events.STATE else event)

    def _frames(self, event: events.Event | None) -> tuple[str, str]:
        """The frame for admins and the one for users, each encoded once."""
        frame = self.state()
        if event is None:
            text = json.dumps(frame)
            return text, text
        frame["id"] = event.id
        admin = {**frame, "event": {"id": event.id, "name": event.name, "payload": event.payload}}
        payload = event.payload
        if "patient" in payload and "report" in payload:  # a whole exam: users get it redacted
            payload = redact_exam(payload)
        user = {**frame, "event": {"id": event.id, "name": event.name, "payload": payload}}
        return json.dumps(admin), json.dumps(user)

    def broadcast(self, event: events.Event | None) -> None:
        """Never waits: each client's frame is queued; a client whose queue is full is dropped."""
        if not self.clients:
            return
        for_admin, for_user = self._frames(event)
        for client in list(self.clients):
            self._offer(client, for_admin if client.admin else for_user)

    def _offer(self, client: _Client, frame: str) -> None:
        if client.dropped:
            return
        try:
            client.queue.put_nowait(frame)
        except asyncio.QueueFull:
            logger.info("Dropping a WebSocket client that stopped reading (%d frames waiting)", MAX_PENDING)
            client.dropped = True
            self.clients.discard(client)
            closing = asyncio.get_running_loop().create_task(_close_slow(client))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    # --- one connection -----------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        check_origin(request)  # browsers send saved credentials on a cross-site WebSocket too
        last_id = _last_id(request)
        ws = web.WebSocketResponse(heartbeat=PING, max_msg_size=64 * 1024)
        await ws.prepare(request)
        client = _Client(ws, admin=request[USER].role == ADMIN, transport=request.transport)
        bus = self.app[BUS]
        hello = events.Event(bus.last_id, CONNECTED, {"address": request.remote or ""})
        self._offer(client, json.dumps({**self.state(), "event": _event_json(hello)}))
        if last_id is not None:
            self._replay(client, last_id)
        self.clients.add(client)
        writer = asyncio.get_running_loop().create_task(self._write(client))
        try:
            async for message in ws:  # nothing is expected from browsers; reading keeps pings and closes flowing
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self.clients.discard(client)
            await cancel_and_wait(writer)
            with contextlib.suppress(Exception):
                await ws.close()
        return ws

    def _replay(self, client: _Client, last_id: int) -> None:
        missed = self.app[BUS].since(last_id)
        if (missed and missed[0].id > last_id + 1) or (not missed and self.app[BUS].last_id > last_id):
            # More was missed than we keep: tell the page to fetch its state again.
            resync = events.Event(self.app[BUS].last_id, RESYNC, {})
            self._offer(client, json.dumps({**self.state(), "event": _event_json(resync)}))
            return
        for event in missed[-MAX_PENDING // 2:]:
            for_admin, for_user = self._frames(event)
            self._offer(client, for_admin if client.admin else for_user)

    async def _write(self, client: _Client) -> None:
        while True:
            frame = await client.queue.get()
            try:
                await client.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                self.clients.discard(client)
                return


async def _close_slow(client: _Client) -> None:
    """Say goodbye; a client that reads nothing will not read the close frame either, so then cut the line."""
    try:
        await asyncio.wait_for(client.ws.close(code=1008, message=b"too slow"), timeout=CLOSE_TIMEOUT)
    except (TimeoutError, ConnectionError, RuntimeError):
        if client.transport is not None:
            client.transport.abort()


def _event_json(event: events.Event) -> dict[str, Any]:
    return {"id": event.id, "name": event.name, "payload": event.payload}


def _last_id(request: web.Request) -> int | None:
    raw = request.query.get("last_id")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("last_id: a whole number is required") from None
    return max(value, 0)


HUB = web.AppKey("hub", Hub)


async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = Hub(app)
    app[HUB] = hub
    await hub.start()
    yield
    await hub.stop()


async def websocket(request: web.Request) -> web.WebSocketResponse:
    return await request.app[HUB].handle(request)


def setup_live(app: web.Application) -> None:
    """Routes and lifetime of the hub; its cleanup context must come after the store, pool and worker."""
    app.cleanup_ctx.append(_hub_ctx)
    app.router.add_get("/ws", websocket, name="ws")
