"""The HTTP server as the real `xrayvision` command runs it: slow and odd clients, parser errors, the connection cap,
long URLs, and clean start-up failures when a port is taken."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from conftest import ADMIN, free_port, make_settings, xrayvision_command

from xrayvision.web.server import Runner

START_TIMEOUT = 60  # seconds; generous, the machine is shared


def _env(dicom_port: int, web_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAYVISION_")}
    env["XRAYVISION_DICOM_AE_PORT"] = str(dicom_port)
    env["XRAYVISION_DASHBOARD_DASHBOARD_PORT"] = str(web_port)
    return env


def _workdir(path: Path, dashboard: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "xrayvision.cfg").write_text(f"[users]\n{ADMIN[0]} = {ADMIN[1]},admin\n[dashboard]\n{dashboard}")
    return path


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def lines(self, text: str) -> int:
        return sum(text in line for line in self.log.read_text(errors="replace").splitlines())


def _start(workdir: Path, open_files: int | None = None) -> Server:
    port = free_port()
    log = workdir / "server.log"

    def limit_open_files() -> None:
        if open_files:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    proc = subprocess.Popen(xrayvision_command(), cwd=workdir, env=_env(free_port(), port), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, preexec_fn=limit_open_files)
    server = Server(proc, port, log)
    deadline = time.monotonic() + START_TIMEOUT
    while server.lines("Dashboard on http://") == 0:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    return server


def _stop(server: Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    try:
        assert server.proc.wait(timeout=30) == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    running = _start(_workdir(tmp_path_factory.mktemp("server"), "MAX_CONNECTIONS_PER_HOST = 4\n"))
    yield running
    _stop(running)


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[Server]:
    running = _start(_workdir(tmp_path / "impatient", "HEADER_TIMEOUT = 1\n"))
    yield running
    _stop(running)


@dataclass
class Answer:
    status: int
    head: str
    body: bytes

    def json(self) -> dict[str, object]:
        return json.loads(self.body)


def _read_all(sock: socket.socket, timeout: float = 30) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _parse(data: bytes) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    return Answer(int(text.split(" ", 2)[1]), text, body)


def closed_by_peer(socks: set[socket.socket], wait: float) -> set[socket.socket]:
    """Those of `socks` that the server closed within `wait` seconds (what they still send us is read and dropped)."""
    closed = set()
    readable, _, _ = select.select(list(socks), [], [], wait)
    for sock in readable:
        try:
            if not sock.recv(4096):
                closed.add(sock)
        except ConnectionResetError:
            closed.add(sock)
    return closed


def exchange(port: int, request: bytes) -> Answer:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        return _parse(_read_all(sock))


def get(path: str, *, auth: tuple[str, str] | None = ADMIN, headers: str = "") -> bytes:
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth else ""
    credentials = f"Authorization: Basic {token}\r\n" if auth else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{credentials}{headers}Connection: close\r\n\r\n".encode()


# --- long lines and parser errors ----------------------------------------------------------------------------------

def test_a_9000_character_search_gets_the_apis_json_answer(server: Server) -> None:
    answer = exchange(server.port, get("/api/exams?search=" + "x" * 9000))
    assert answer.status == 400 and "application/json" in answer.head
    # The API's own check naming the parameter (aiohttp's 8 KiB line limit answered a plain-text 400 before).
    assert answer.json() == {"error": "search: longer than 200 characters"}
    assert "Cache-Control: no-store" in answer.head
    ok = exchange(server.port, get("/api/exams?search=" + "%C8%98" * 200))  # 1,200 characters that are fine
    assert ok.status == 200 and ok.json()["total"] == 0
    assert server.lines("Failed to create request handler") == 0  # aiohttp took our settings


MARK = "ECHO-ME-NOT"


@pytest.mark.parametrize(("request_bytes", "status"), [
    (get(f"/{MARK}" + "a" * 40000), 414),  # over the 32 KiB request line
    (get("/", headers=f"X-{MARK}: {'b' * 9000}\r\n"), 431),  # one over-long header
    (f"FOO{MARK} / HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400),  # unknown method
    (f"GET /{MARK} HTTP/9z\r\nHost: x\r\n\r\n".encode(), 400),  # bad request line
    (f"\x16\x03\x01{MARK}\r\n\r\n".encode(), 400),  # TLS on the plain port
], ids=["long-line", "long-header", "unknown-method", "bad-request-line", "tls"])
def test_parser_errors_are_the_json_error_without_the_request(server: Server, request_bytes: bytes,
                                                              status: int) -> None:
    for _ in range(3):
        answer = exchange(server.port, request_bytes)
        assert answer.status == status, answer.head
        assert "application/json" in answer.head
        assert set(answer.json()) == {"error"}
        assert MARK not in answer.head + answer.body.decode()
    log = server.log.read_text(errors="replace")
    assert MARK not in log and "Traceback" not in log
    assert server.lines("Bad HTTP request") == 1  # once a minute, whatever the number


# --- slow clients and the connection cap ---------------------------------------------------------------------------

def test_connections_per_address_are_capped(server: Server) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(4)]
    try:
        for _ in range(5):
            answer = exchange(server.port, get("/api/exams"))
            assert answer.status == 429 and "Retry-After:" in answer.head
            assert set(answer.json()) == {"error"}
        held.pop().close()
        deadline = time.monotonic() + 30
        while (answer := exchange(server.port, get("/api/exams"))).status == 429:  # once the server saw the close
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert answer.status == 200
    finally:
        for sock in held:
            sock.close()
    assert server.lines("Refused a connection from 127.0.0.1") == 1  # not one line per refusal


async def test_connections_are_capped_in_all_and_per_address(tmp_path: Path) -> None:
    """The server's own runner in this process, over real sockets from three loopback addresses."""
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/", ok)
    settings = make_settings(tmp_path, {"dashboard": {"max_connections": "3", "max_connections_per_host": "2"}})
    runner = Runner(app, settings.dashboard)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    async def connect(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))

    async def status(source: str) -> int:
        reader, writer = await connect(source)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            return _parse(await asyncio.wait_for(reader.read(), 30)).status
        finally:
            writer.close()

    held = []
    try:
        held += [await connect("127.0.0.1"), await connect("127.0.0.1")]
        assert await status("127.0.0.1") == 429  # that address holds its two
        held.append(await connect("127.0.0.2"))
        assert await status("127.0.0.3") == 503  # three open in all
    finally:
        for _, writer in held:
            writer.close()
        await runner.cleanup()


def test_headers_that_do_not_arrive_in_time_close_the_connection(impatient: Server) -> None:
    """Five clients that send their headers a byte at a time, never finishing: each is closed after HEADER_TIMEOUT
    (1 s here) however busy it keeps the line, and the log does not grow with them."""
    before = len(impatient.log.read_text().splitlines())
    slow = [socket.create_connection(("127.0.0.1", impatient.port), timeout=30) for _ in range(5)]
    for sock in slow:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    open_ = set(slow)
    deadline = time.monotonic() + 30
    try:
        while open_:
            assert time.monotonic() < deadline, f"{len(open_)} slow connection(s) still open"
            for sock in list(open_):
                try:
                    sock.sendall(b"X")  # a byte of a header that never ends
                except (BrokenPipeError, ConnectionResetError):
                    open_.discard(sock)
            open_ -= closed_by_peer(open_, 0.2)
    finally:
        for sock in slow:
            sock.close()
    # A client that sends its request at once is served as ever.
    assert exchange(impatient.port, get("/api/exams")).status == 200
    assert len(impatient.log.read_text().splitlines()) - before <= 1


def test_running_out_of_open_files_is_logged_once_and_passes(tmp_path: Path) -> None:
    """More connections than the process may open files: asyncio's accept fails and retries every second, which
    used to log a traceback each time. Logged once here; and once the header timeout has closed the silent
    connections, the waiting ones get in and the API answers again."""
    server = _start(_workdir(tmp_path / "nofile", "HEADER_TIMEOUT = 3\n"), open_files=48)
    try:
        flood = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(60)]
        try:
            open_ = set(flood)
            deadline = time.monotonic() + 60
            while open_:  # every one is closed by the server in the end: first the accepted, then the waiting
                assert time.monotonic() < deadline, f"{len(open_)} connection(s) still open"
                open_ -= closed_by_peer(open_, 1)
        finally:
            for sock in flood:
                sock.close()
        assert exchange(server.port, get("/api/exams")).status == 200
        assert server.lines("out of system resource") == 1
        assert "Traceback" not in server.log.read_text()
    finally:
        _stop(server)


# --- start-up failures ---------------------------------------------------------------------------------------------

def _run_with_port_taken(tmp_path: Path, which: str) -> tuple[subprocess.CompletedProcess[str], int]:
    dicom_port, web_port = free_port(), free_port()
    taken = dicom_port if which == "dicom" else web_port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        result = subprocess.run(xrayvision_command(), cwd=_workdir(tmp_path / "start"), env=_env(dicom_port, web_port),
                                capture_output=True, text=True, timeout=START_TIMEOUT)
    return result, taken


@pytest.mark.parametrize(("which", "key"), [("dicom", "[dicom] AE_PORT"), ("web", "[dashboard] DASHBOARD_PORT")])
def test_a_taken_port_stops_the_start_with_one_line(tmp_path: Path, which: str, key: str) -> None:
    result, port = _run_with_port_taken(tmp_path, which)  # returns: nothing hangs
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    message = f"xrayvision: cannot listen on 127.0.0.1:{port} ({key}): address already in use"
    assert result.stderr.splitlines()[-1] == message
    assert output.count("cannot listen") == 1
