"""WebSocket fan-out of the live feed, and the dashboard's first render over a large database.

Run: python benchmarks/live_bench.py [--exams 100000] [--patients 30000] [--clients 200] [--events 100]
         [--rate 20] [--stall-events 300] [--loads 5] [--db PATH] [--skip-render] [--skip-fanout]

1. Seeds a database with api_bench.py's seeding (through the product's Store, the real migrations; 100,000 exams by
   default; --db PATH reuses or keeps one) and starts the real server on it in its own process
   (`python -m xrayvision --config <temporary cfg>`: one admin user with a long password, rate limits off, no model
   endpoint, free ports; api_bench.Server).
2. First render: headless Chromium through Playwright (/usr/bin/chromium), --loads times, each in a fresh browser
   context with HTTP credentials sent up front. An init script's MutationObserver notes performance.now() (ms
   since navigation start) when the first exam card (`#exams > .exam`, what dashboard.js renders) is in the DOM.
   The Navigation and Resource Timing entries give the page's HTML, DOMContentLoaded, and when /api/exams was asked
   and answered.
3. Fan-out: --clients WebSocket clients on /ws (aiohttp, one process, opened in batches), then --events
   `POST /api/requeue {uid}` at --rate per second on distinct 'done' exams. Each POST commits a row, then the
   handler publishes `requeue`. Per event, t0 is taken just before the POST is sent (so before the commit: the
   figures include the request and the commit), and per client the arrival of the frame whose event is that
   `requeue` with that uid. Latency over all (event, client) pairs: median, p95, p99, max; and the POST's round
   trip, to subtract. Then the same with one more client that does the WebSocket handshake on a raw socket with a
   small receive buffer and never reads: first events as fast as possible until the server's kernel send queue
   towards it (`ss`) stops growing (at most 40 s), then --stall-events measured events: the others' figures again,
   and when the server dropped the stalled client (its end of the connection left ESTABLISHED).
4. Prints a table and whether each target is met.

It asserts nothing. It stops the server it started and removes its temporary folder.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import api_bench  # noqa: E402  (also puts the repository on sys.path)

try:
    import psutil
except ImportError:  # optional: only the server's CPU figure needs it
    psutil = None

TARGET_FANOUT_MS = 50.0  # median and p99, committed event -> every client
TARGET_STALL_MS = 5.0  # "does not change the others' figures": medians and p99 within this much (or 20 %)
TARGET_RENDER_MS = 1000.0  # page plus first list
CARD = "#exams > .exam"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync"]
FIRST_CARD_SCRIPT = """
(() => {
  const sel = "__SELECTOR__";
  const seen = () => {
    if (window.__firstCard === undefined && document.querySelector(sel)) {
      window.__firstCard = performance.now();
      window.__cards = document.querySelectorAll(sel).length;
      return true;
    }
    return false;
  };
  const observer = new MutationObserver(() => { if (seen()) observer.disconnect(); });
  observer.observe(document, { childList: true, subtree: true });
})();
""".replace('"__SELECTOR__"', json.dumps(CARD))
TIMINGS_SCRIPT = """
() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const list = performance.getEntriesByType("resource").filter((e) => e.name.includes("/api/exams"))[0];
  return {
    first_card: window.__firstCard ?? null, cards: window.__cards ?? 0,
    html: nav ? nav.responseEnd : null, dcl: nav ? nav.domContentLoadedEventEnd : null,
    list_start: list ? list.startTime : null, list_end: list ? list.responseEnd : null,
    list_ms: list ? list.responseEnd - list.startTime : null,
    list_ttfb: list ? list.responseStart - list.requestStart : null,
    list_bytes: list ? list.encodedBodySize : null,
  };
}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ------------------------------------------------------------------------------------------------ fan-out


@dataclass
class Fanout:
    label: str
    clients: int
    events: int
    latencies: list[float] = field(default_factory=list)  # ms, every (event, client) pair that arrived
    posts: list[float] = field(default_factory=list)  # ms, the POST's round trip
    missing: int = 0
    failures: list[str] = field(default_factory=list)
    frames: int = 0  # frames the clients received during the events
    frame_bytes: int = 0
    server_cpu: float | None = None
    seconds: float = 0.0
    stalled: str = ""  # the stalled client's fate, when there was one


class Listener:
    """One WebSocket client: notes when each `requeue` event's frame arrives."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.frames = 0
        self.bytes = 0
        self.task: asyncio.Task[None] | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        async for msg in ws:
            now = time.perf_counter()
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            self.frames += 1
            self.bytes += len(msg.data)
            if '"requeue"' in msg.data:
                event = json.loads(msg.data).get("event") or {}
                if event.get("name") == "requeue":
                    self.arrivals[event["payload"]["uid"]] = now


async def open_clients(session: aiohttp.ClientSession, url: str, auth: str, count: int,
                       batch: int = 20) -> list[Listener]:
    listeners: list[Listener] = []

    async def one() -> Listener:
        ws = await session.ws_connect(url, headers={"Authorization": auth}, heartbeat=None, autoping=True)
        first = await ws.receive(timeout=10)  # the `connected` frame
        if first.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"no first frame: {first.type}")
        listener = Listener()
        listener.task = asyncio.get_running_loop().create_task(listener.run(ws))
        return listener

    for start in range(0, count, batch):
        listeners += await asyncio.gather(*(one() for _ in range(min(batch, count - start))))
        await asyncio.sleep(0.05)
    return listeners


class StalledClient:
    """The WebSocket handshake on a raw socket with a small receive buffer, then nothing is ever read."""

    def __init__(self, port: int, auth: str) -> None:
        self.port = port
        self.auth = auth
        self.sock: socket.socket | None = None

    async def connect(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: {self.auth}\r\n\r\n")
        await loop.sock_sendall(sock, request.encode())
        head = b""
        while b"\r\n\r\n" not in head:  # read the handshake's answer only, byte by byte, nothing after it
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
            if not chunk:
                raise RuntimeError("the server closed the stalled client's handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"handshake refused: {head.splitlines()[0]!r}")
        self.sock = sock

    @property
    def local_port(self) -> int:
        assert self.sock is not None
        return self.sock.getsockname()[1]

    def server_side(self) -> tuple[str, int] | None:
        """The server's end of this connection as `ss` shows it: (state, bytes in its send queue); None if gone."""
        out = subprocess.run(["ss", "-tnH", "sport", "=", f":{self.port}", "and", "dport", "=", f":{self.local_port}"],
                             capture_output=True, text=True, check=False).stdout.split()
        if len(out) < 3:
            return None
        return out[0], int(out[2])

    async def fill(self, server: api_bench.Server, session: aiohttp.ClientSession, uids: list[str],
                   budget: float = 40.0) -> str:
        """Publish events fast until the server's kernel send buffer towards us stops growing: from then on, the
        server's transport buffer and then the client's queue (MAX_PENDING frames) fill, and it should be dropped."""
        headers = {"Authorization": server.auth}
        loop = asyncio.get_running_loop()
        began = loop.time()
        sent = 0
        stop = False

        async def post_loop(offset: int) -> None:
            nonlocal sent
            n = offset
            while not stop:
                async with session.post(f"{server.base}/api/requeue", json={"uid": uids[n % len(uids)]},
                                        headers=headers) as resp:
                    await resp.read()
                sent += 1
                n += 4

        posters = [loop.create_task(post_loop(k)) for k in range(4)]
        last, steady = -1, 0
        try:
            while loop.time() - began < budget:
                await asyncio.sleep(0.5)
                side = await asyncio.to_thread(self.server_side)
                if side is None or side[0] != "ESTAB":
                    return f"gone during the fill ({side}) after {sent} events"
                steady = steady + 1 if side[1] > 0 and side[1] <= last else 0
                last = max(last, side[1])
                if steady >= 2:
                    break
        finally:
            stop = True
            await asyncio.gather(*posters, return_exceptions=True)
        return (f"{sent} events in {loop.time() - began:.1f} s filled the server's kernel send queue towards it "
                f"to {last} bytes")

    async def watch(self, began: float, result: dict[str, float | str]) -> None:
        """Until cancelled: note when the server's end of the connection leaves ESTAB (it was dropped)."""
        loop = asyncio.get_running_loop()
        while True:
            side = await asyncio.to_thread(self.server_side)
            if side is None or side[0] != "ESTAB":
                result["dropped_at"] = loop.time() - began
                result["state"] = "gone" if side is None else side[0]
                return
            await asyncio.sleep(0.1)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


async def run_fanout(server: api_bench.Server, uids: list[str], clients: int, events: int, rate: float,
                     stall: bool, label: str, filler: list[str] | None = None) -> Fanout:
    result = Fanout(label, clients, events)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        listeners = await open_clients(session, f"{server.base}/ws", server.auth, clients)
        stalled = None
        if stall:
            stalled = StalledClient(server.port, server.auth)
            await stalled.connect()
            print(f"    filling the stalled client's buffers ({stalled.local_port}) ...", flush=True)
            result.stalled = "filled: " + await stalled.fill(server, session, filler or uids)
        await asyncio.sleep(0.5)  # the connected frames and the counts refresh settle
        for li in listeners:
            li.arrivals.clear()
        frames_before = sum(li.frames for li in listeners)
        bytes_before = sum(li.bytes for li in listeners)
        cpu_before = server.cpu_seconds()
        sent: dict[str, float] = {}
        headers = {"Authorization": server.auth}
        loop = asyncio.get_running_loop()
        began = loop.time()
        watched: dict[str, float | str] = {}
        watcher = loop.create_task(stalled.watch(began, watched)) if stalled is not None else None
        for n, uid in enumerate(uids[:events]):
            delay = began + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = time.perf_counter()
            async with session.post(f"{server.base}/api/requeue", json={"uid": uid}, headers=headers) as resp:
                await resp.read()
                status = resp.status
            result.posts.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                result.failures.append(f"POST /api/requeue answered {status}")
                continue
            sent[uid] = t0
        # Wait for the last frames (at most 3 s).
        deadline = loop.time() + 3
        while loop.time() < deadline and any(uid not in li.arrivals for li in listeners for uid in sent):
            await asyncio.sleep(0.05)
        result.seconds = loop.time() - began
        cpu_after = server.cpu_seconds()
        if cpu_before is not None and cpu_after is not None:
            result.server_cpu = cpu_after - cpu_before
        order = list(sent)
        for li in listeners:
            for uid, t0 in sent.items():
                arrived = li.arrivals.get(uid)
                if arrived is None:
                    result.missing += 1
                    result.failures.append(f"event {order.index(uid) + 1} of {len(order)} did not reach a client")
                else:
                    result.latencies.append((arrived - t0) * 1000)
        result.frames = sum(li.frames for li in listeners) - frames_before
        result.frame_bytes = sum(li.bytes for li in listeners) - bytes_before
        closed = sum(1 for li in listeners if li.ws is not None and li.ws.closed)
        if closed:
            result.failures.append(f"{closed} reading client(s) were closed")
        if stalled is not None and watcher is not None:
            if not watcher.done():
                await asyncio.sleep(1.0)  # a close may still be on its way
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if "dropped_at" in watched:
                at = float(watched["dropped_at"])
                result.stalled += (f"; dropped by the server {at:.2f} s into the measured events (about event "
                                   f"{min(events, int(at * rate))} of {events}; its end now {watched['state']})")
            else:
                side = stalled.server_side()
                result.stalled += f"; NOT dropped by the end (the server's end: {side})"
            stalled.close()
        for li in listeners:
            if li.ws is not None:
                await li.ws.close()
        await asyncio.gather(*(li.task for li in listeners if li.task is not None), return_exceptions=True)
    return result


# ------------------------------------------------------------------------------------------------ first render


@dataclass
class Render:
    loads: list[dict[str, float | None]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = [v for load in self.loads if (v := load.get(key)) is not None]
        return statistics.median(values) if values else None


async def run_render(server: api_bench.Server, loads: int) -> Render:
    from playwright.async_api import async_playwright

    result = Render()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            credentials = {"username": "admin", "password": server.password, "origin": server.base, "send": "always"}
            for n in range(loads + 1):  # the first load warms the server's caches and the browser; not counted
                context = await browser.new_context(http_credentials=credentials)  # type: ignore[arg-type]
                try:
                    page = await context.new_page()
                    await page.add_init_script(FIRST_CARD_SCRIPT)
                    t = time.perf_counter()
                    await page.goto(f"{server.base}/", wait_until="commit")
                    await page.wait_for_selector(CARD, timeout=30_000)
                    wall = (time.perf_counter() - t) * 1000
                    await page.wait_for_function("window.__firstCard !== undefined", timeout=5_000)
                    timings = await page.evaluate(TIMINGS_SCRIPT)
                    timings["wall"] = wall
                    if n:
                        result.loads.append(timings)
                except Exception as exc:  # noqa: BLE001 - a failed load is reported, the others still count
                    result.failures.append(f"load {n}: {type(exc).__name__}: {exc}".splitlines()[0])
                finally:
                    await context.close()
        finally:
            await browser.close()
    return result


# ------------------------------------------------------------------------------------------------ output


def print_fanout(runs: list[Fanout]) -> None:
    print()
    print("WebSocket fan-out: t0 just before POST /api/requeue is sent (before the commit), until the frame with "
          "that event arrives at each client (ms, over all event x client pairs)")
    header = (f"{'run':<34} {'clients':>7} {'events':>6} {'pairs':>7} {'median':>7} {'p95':>7} {'p99':>7} "
              f"{'max':>7} {'missing':>7} {'POST med':>8} {'POST p99':>8} {'server CPU/event':>16}")
    print(header)
    print("-" * len(header))
    for r in runs:
        lat = r.latencies
        cpu = "" if r.server_cpu is None else f"{r.server_cpu / max(1, len(r.posts)) * 1000:.1f} ms"
        print(f"{r.label:<34} {r.clients:>7} {r.events:>6} {len(lat):>7} {statistics.median(lat):>7.1f} "
              f"{percentile(lat, 95):>7.1f} {percentile(lat, 99):>7.1f} {max(lat):>7.1f} {r.missing:>7} "
              f"{statistics.median(r.posts):>8.1f} {percentile(r.posts, 99):>8.1f} {cpu:>16}")
    for r in runs:
        print(f"  {r.label}: {r.frames} frames received in {r.seconds:.1f} s, {r.frame_bytes / max(1, r.frames):.0f} "
              f"bytes each on average")
        if r.stalled:
            print(f"  {r.label}: the stalled client: {r.stalled}")
        for failure in sorted(set(r.failures)):
            print(f"WARNING: {r.label}: {r.failures.count(failure)} x {failure}")


def print_render(render: Render, loads: int) -> None:
    print()
    print(f"Dashboard first render, headless Chromium, {len(render.loads)} of {loads} loads (each in a fresh context, "
          "after one uncounted warm-up); ms since navigation start:")
    rows = [("HTML received (responseEnd)", "html"), ("DOMContentLoaded done", "dcl"),
            ("/api/exams asked", "list_start"), ("/api/exams answered", "list_end"),
            ("/api/exams round trip (the page's)", "list_ms"), ("/api/exams time to first byte", "list_ttfb"),
            ("first exam cards in the DOM", "first_card"), ("wall: goto() to the selector seen", "wall")]
    for label, key in rows:
        values = [v for load in render.loads if (v := load.get(key)) is not None]
        if values:
            print(f"  {label:<40} median {statistics.median(values):7.1f}   all: "
                  + ", ".join(f"{v:.0f}" for v in values))
    if render.loads:
        print(f"  cards on the first page: {render.loads[0].get('cards')}; /api/exams body "
              f"{render.loads[0].get('list_bytes')} bytes (encoded)")
    for failure in render.failures:
        print(f"WARNING: {failure}")


def print_targets(runs: list[Fanout], render: Render | None) -> None:
    print()
    print("Targets:")
    plain = next((r for r in runs if not r.stalled), None)
    stalled = next((r for r in runs if r.stalled), None)
    if plain is not None and plain.latencies:
        med, p99 = statistics.median(plain.latencies), percentile(plain.latencies, 99)
        ok = med <= TARGET_FANOUT_MS and p99 <= TARGET_FANOUT_MS and not plain.missing
        print(f"  fan-out to {plain.clients} clients, median and p99 <= {TARGET_FANOUT_MS:.0f} ms: {verdict(ok)} "
              f"(median {med:.1f} ms, p99 {p99:.1f} ms, {plain.missing} missing; POST round trip median "
              f"{statistics.median(plain.posts):.1f} ms included)")
    if plain is not None and stalled is not None and plain.latencies and stalled.latencies:
        pairs = [(statistics.median(plain.latencies), statistics.median(stalled.latencies)),
                 (percentile(plain.latencies, 99), percentile(stalled.latencies, 99))]
        ok = all(b - a <= max(TARGET_STALL_MS, 0.2 * a) for a, b in pairs) and not stalled.missing
        print(f"  one stalled client does not change the others' figures (within {TARGET_STALL_MS:.0f} ms or 20 %): "
              f"{verdict(ok)} (median {pairs[0][0]:.1f} -> {pairs[0][1]:.1f} ms, p99 {pairs[1][0]:.1f} -> "
              f"{pairs[1][1]:.1f} ms); the stalled client was "
              f"{'dropped' if 'dropped by the server' in stalled.stalled else 'NOT dropped'}")
    if render is not None:
        first = render.median("first_card")
        if first is None:
            print(f"  dashboard first render <= {TARGET_RENDER_MS:.0f} ms: NOT met (no load finished)")
        else:
            print(f"  dashboard first render with the seeded exams, page plus first list <= {TARGET_RENDER_MS:.0f} ms: "
                  f"{verdict(first <= TARGET_RENDER_MS)} (median {first:.0f} ms to the first cards; /api/exams "
                  f"{render.median('list_ms') or 0:.0f} ms of it)")


# ------------------------------------------------------------------------------------------------ main


def pick_uids(db: Path, count: int) -> list[str]:
    """'done' exams with an image: /api/requeue accepts them (the image file is not needed)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT uid FROM exams WHERE status = 'done' AND image IS NOT NULL "
                                           "ORDER BY created DESC LIMIT ?", (count,))]
    finally:
        conn.close()


async def measure(args: argparse.Namespace, db: Path, workdir: Path) -> tuple[list[Fanout], Render | None]:
    server = api_bench.Server(workdir, db)
    runs: list[Fanout] = []
    render = None
    uids = pick_uids(db, args.events + args.stall_events)
    server.start()
    try:
        await wait_ready(server)
        print(f"Server: python -m xrayvision on 127.0.0.1:{server.port} (pid {server.proc.pid})", flush=True)
        if not args.skip_render:
            print(f"  first render: {args.loads} loads in headless Chromium ...", flush=True)
            render = await run_render(server, args.loads)
        if not args.skip_fanout:
            print(f"  fan-out: {args.clients} clients, {args.events} events at {args.rate:g}/s ...", flush=True)
            runs.append(await run_fanout(server, uids[:args.events], args.clients, args.events, args.rate, False,
                                         f"{args.clients} clients"))
            print(f"  fan-out: {args.clients} clients + 1 stalled, {args.stall_events} events at {args.rate:g}/s ...",
                  flush=True)
            runs.append(await run_fanout(server, uids[args.events:], args.clients, args.stall_events, args.rate,
                                         True, f"{args.clients} clients + 1 stalled", filler=uids[:args.events]))
    finally:
        server.stop()
    log = api_bench.tail(server.log, 10)
    if "Traceback" in log or "ERROR" in log:
        print(f"WARNING: the server's log ends with:\n{log}")
    return runs, render


async def wait_ready(server: api_bench.Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{server.base}/api/config", headers={"Authorization": server.auth}) as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /api/config")
            await asyncio.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="WebSocket fan-out and the dashboard's first render")
    api_bench.add_database_arguments(parser)
    parser.add_argument("--clients", type=int, default=200, help="WebSocket clients (default 200)")
    parser.add_argument("--events", type=int, default=100, help="events of the plain run (default 100)")
    parser.add_argument("--stall-events", type=int, default=300,
                        help="events of the run with a stalled client (default 300)")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second (default 20)")
    parser.add_argument("--loads", type=int, default=5, help="page loads measured (default 5)")
    parser.add_argument("--skip-render", action="store_true", help="no browser")
    parser.add_argument("--skip-fanout", action="store_true", help="no WebSocket clients")
    parser.add_argument("--tmpdir", type=Path, help="where the temporary folder goes (default: the system's)")
    args = parser.parse_args(argv)
    if min(args.exams, args.patients, args.clients, args.events, args.stall_events, args.loads) < 1 or args.rate <= 0:
        parser.error("counts and the rate must be positive")

    began = time.perf_counter()
    print(f"Machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, aiohttp {aiohttp.__version__}")
    with tempfile.TemporaryDirectory(prefix="xrv-live-bench-", dir=args.tmpdir) as tmp:
        workdir = Path(tmp)
        db = args.db.resolve() if args.db else workdir / "xrayvision.db"
        if db.exists():
            print(f"Database: reusing {db} as it is")
        else:
            generated, inserted = asyncio.run(api_bench.seed(db, args.patients, args.exams, args.seed))
            print(f"Database: seeded {db} in {generated + inserted:.1f} s (api_bench.seed)")
        counts, _ = api_bench.describe_db(db)
        print("  " + ", ".join(f"{k} {v}" for k, v in counts.items() if k == "exams" or k.startswith("status")),
              flush=True)
        if len(pick_uids(db, args.events + args.stall_events)) < args.events + args.stall_events:
            print("WARNING: fewer 'done' exams than events: some uids repeat no more, the runs are shorter")
        runs, render = asyncio.run(measure(args, db, workdir))
        if render is not None:
            print_render(render, args.loads)
        if runs:
            print_fanout(runs)
        print_targets(runs, render)
    print(f"\nTotal time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
