"""Per-client request limits on /api, and how the client's address is worked out behind reverse proxies."""
from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from aiohttp import web
from conftest import ADMIN, Clock, basic, fake_clock, make_settings, ok_handler

from xrayvision.keys import SETTINGS
from xrayvision.web import ratelimit
from xrayvision.web.auth import setup_auth
from xrayvision.web.clients import parse_address, resolve_client
from xrayvision.web.errors import error_middleware
from xrayvision.web.origin import setup_origin
from xrayvision.web.ratelimit import RATE_LIMITS, SlidingWindow, setup_ratelimit

HEAVY = ("/api/check", "/api/analyse", "/api/translate")


@pytest.fixture
def clock(monkeypatch) -> Clock:  # type: ignore[no-untyped-def]
    return fake_clock(monkeypatch, ratelimit)


def bare_app(tmp_path: Path, **dashboard: str) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = make_settings(tmp_path, {"dashboard": dashboard})
    setup_ratelimit(app)
    for path in ("/api/exams", "/api/check", "/api/analyse", "/api/translate", "/", "/images/x.png",
                 "/static/app.js", "/ws"):
        app.router.add_get(path, ok_handler)
    app.router.add_post("/api/check", ok_handler)
    return app


@pytest.fixture
async def limited(aiohttp_client, tmp_path: Path, clock: Clock):  # type: ignore[no-untyped-def]
    """Default limits (60 and 10), the test client's 127.0.0.1 a trusted proxy so X-Forwarded-For picks clients."""
    return await aiohttp_client(bare_app(tmp_path, trusted_proxies="127.0.0.1"))


def xff(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def spend(client, path: str, count: int, headers: dict[str, str] | None = None) -> None:  # type: ignore[no-untyped-def]
    for _ in range(count):
        resp = await client.get(path, headers=headers)
        assert resp.status == 200, await resp.text()


async def assert_refused(resp, limit: int) -> int:  # type: ignore[no-untyped-def]
    assert resp.status == 429
    retry = int(resp.headers["Retry-After"])
    assert retry >= 1
    body = await resp.json()
    assert set(body) == {"error"}
    assert body["error"].startswith(f"too many requests: {limit} per minute")
    return retry


# --- the limiter through HTTP -------------------------------------------------------------------------------------

async def test_61st_request_in_a_minute_is_refused(limited, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    await spend(limited, "/api/exams", 60, xff("10.0.0.1"))
    clock.t += 15
    retry = await assert_refused(await limited.get("/api/exams", headers=xff("10.0.0.1")), 60)
    assert retry == 45
    # Another client is unaffected.
    assert (await limited.get("/api/exams", headers=xff("10.0.0.2"))).status == 200


async def test_refusals_do_not_count_and_the_window_slides(limited, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    await spend(limited, "/api/exams", 30, xff("10.0.0.1"))
    clock.t += 30
    await spend(limited, "/api/exams", 30, xff("10.0.0.1"))
    for _ in range(5):
        await assert_refused(await limited.get("/api/exams", headers=xff("10.0.0.1")), 60)
    clock.t += 29.5  # the first 30 are still 0.5 s short of a minute old
    resp = await limited.get("/api/exams", headers=xff("10.0.0.1"))
    assert await assert_refused(resp, 60) == 1  # at least 1 s, never 0
    clock.t += 0.5
    await spend(limited, "/api/exams", 30, xff("10.0.0.1"))
    await assert_refused(await limited.get("/api/exams", headers=xff("10.0.0.1")), 60)


async def test_heavy_endpoints_have_their_own_lower_limit(limited) -> None:  # type: ignore[no-untyped-def]
    await spend(limited, "/api/check", 4, xff("10.0.0.1"))
    await spend(limited, "/api/analyse", 3, xff("10.0.0.1"))
    await spend(limited, "/api/translate", 3, xff("10.0.0.1"))
    for path in HEAVY:
        resp = await limited.get(path, headers=xff("10.0.0.1"))
        await assert_refused(resp, 10)
        assert "AI endpoints" in (await resp.json())["error"]
    resp = await limited.post("/api/check", headers=xff("10.0.0.1"))
    await assert_refused(resp, 10)
    # Ordinary endpoints still pass, and the heavy ones did not use up their allowance.
    await spend(limited, "/api/exams", 60, xff("10.0.0.1"))
    await assert_refused(await limited.get("/api/exams", headers=xff("10.0.0.1")), 60)


async def test_requests_pass_again_after_the_window(limited, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    await spend(limited, "/api/exams", 60, xff("10.0.0.1"))
    await spend(limited, "/api/check", 10, xff("10.0.0.1"))
    await assert_refused(await limited.get("/api/exams", headers=xff("10.0.0.1")), 60)
    await assert_refused(await limited.get("/api/check", headers=xff("10.0.0.1")), 10)
    clock.t += 59.9
    await assert_refused(await limited.get("/api/exams", headers=xff("10.0.0.1")), 60)
    clock.t += 0.1
    await spend(limited, "/api/exams", 60, xff("10.0.0.1"))
    await spend(limited, "/api/check", 10, xff("10.0.0.1"))


async def test_non_api_paths_are_never_limited(aiohttp_client, tmp_path: Path, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(bare_app(tmp_path, rate_limit="1", rate_limit_heavy="1"))
    for path in ("/", "/images/x.png", "/static/app.js", "/ws", "/apix"):
        for _ in range(5):
            assert (await client.get(path)).status in (200, 404)
    await spend(client, "/api/exams", 1)
    await assert_refused(await client.get("/api/exams"), 1)
    # Unknown /api paths count as well: probing is not free.
    assert (await client.get("/api/nothing-here")).status == 429


async def test_limits_of_zero_disable(aiohttp_client, tmp_path: Path, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(bare_app(tmp_path, rate_limit="0", rate_limit_heavy="0"))
    await spend(client, "/api/exams", 150)
    await spend(client, "/api/check", 30)
    assert client.server.app[RATE_LIMITS].heavy is None and client.server.app[RATE_LIMITS].normal is None


async def test_only_the_heavy_limit_off(aiohttp_client, tmp_path: Path, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(bare_app(tmp_path, rate_limit="2", rate_limit_heavy="0"))
    await spend(client, "/api/check", 20)
    await spend(client, "/api/exams", 2)
    await assert_refused(await client.get("/api/exams"), 2)


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(aiohttp_client, tmp_path: Path, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(bare_app(tmp_path))  # no trusted proxies
    for n in range(60):
        assert (await client.get("/api/exams", headers=xff(f"10.1.0.{n}"))).status == 200
    # Every request counted against 127.0.0.1, whatever it claimed.
    await assert_refused(await client.get("/api/exams", headers=xff("10.9.9.9")), 60)
    await assert_refused(await client.get("/api/exams"), 60)


async def test_a_trusted_proxy_without_forwarded_for_is_the_client(limited) -> None:  # type: ignore[no-untyped-def]
    await spend(limited, "/api/exams", 60)
    await assert_refused(await limited.get("/api/exams"), 60)
    assert (await limited.get("/api/exams", headers=xff("10.0.0.1"))).status == 200


async def test_table_stays_bounded(limited, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    limits = limited.server.app[RATE_LIMITS]

    async def one(n: int) -> None:
        address = str(ipaddress.IPv4Address("10.0.0.0") + n)
        resp = await limited.get("/api/exams", headers=xff(address))
        assert resp.status == 200
        resp.release()

    for start in range(0, 10_000, 250):
        await asyncio.gather(*(one(n) for n in range(start, start + 250)))
        clock.t += 0.01
    assert len(limits.normal) <= ratelimit.MAX_CLIENTS
    assert len(limits.heavy) == 0
    # Idle clients are forgotten once their requests have aged out.
    clock.t += ratelimit.WINDOW
    assert (await limited.get("/api/exams", headers=xff("192.0.2.1"))).status == 200
    assert len(limits.normal) == 1


# --- the limiter alone --------------------------------------------------------------------------------------------

def test_sliding_window_counts_per_key(clock: Clock) -> None:
    window = SlidingWindow(3, 10.0)
    assert [window.hit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert window.hit("a") == pytest.approx(10.0)
    assert window.hit("b") == 0.0
    clock.t += 4
    assert window.hit("a") == pytest.approx(6.0)
    clock.t += 6
    assert window.hit("a") == 0.0


def test_sliding_window_memory_is_per_slot_not_per_request(clock: Clock) -> None:
    window = SlidingWindow(1_000_000, 60.0)
    for _ in range(10_000):
        assert window.hit("a") == 0.0
        clock.t += 0.001
    client = window._clients["a"]
    assert client.count == 10_000 and len(client.slots) <= 11


def test_sliding_window_forgets_the_quietest_when_full(clock: Clock) -> None:
    window = SlidingWindow(1, 60.0, max_clients=3)
    for key in "abcd":
        window.hit(key)
        clock.t += 1
    assert len(window) == 3
    assert window.hit("a") == 0.0  # forgotten, so a fresh allowance
    assert window.hit("d") > 0


@pytest.mark.parametrize("args", [(0, 60.0), (1, 0.0), (1, 60.0, 0)])
def test_sliding_window_rejects_nonsense(args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        SlidingWindow(*args)


# --- client addresses ---------------------------------------------------------------------------------------------

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"), ipaddress.ip_network("127.0.0.1"))


@pytest.mark.parametrize("peer, forwarded, expected", [
    # An untrusted peer is the client, whatever it says.
    ("203.0.113.5", ["198.51.100.1"], "203.0.113.5"),
    ("203.0.113.5", [], "203.0.113.5"),
    # A trusted proxy without the header is itself the client.
    ("10.0.0.1", [], "10.0.0.1"),
    ("10.0.0.1", [""], "10.0.0.1"),
    # The right-most address that is not a trusted proxy; what the client wrote to the left is ignored.
    ("10.0.0.1", ["198.51.100.1"], "198.51.100.1"),
    ("10.0.0.1", ["1.1.1.1, 198.51.100.1"], "198.51.100.1"),
    ("10.0.0.1", ["1.1.1.1, 198.51.100.1, 10.0.0.7"], "198.51.100.1"),
    ("10.0.0.1", ["1.1.1.1, 198.51.100.1", "10.0.0.7, 10.2.3.4"], "198.51.100.1"),  # repeated header lines
    ("10.0.0.1", ["10.0.0.9, 10.0.0.7"], "10.0.0.9"),  # all trusted: the left-most
    # Invalid entries are skipped.
    ("10.0.0.1", ["198.51.100.1, unknown, _hidden, 999.1.1.1, 10.0.0.7"], "198.51.100.1"),
    ("10.0.0.1", ["garbage"], "10.0.0.1"),
    ("10.0.0.1", ["1.1.1.1,,  , 198.51.100.1"], "198.51.100.1"),
    # Ports and brackets, IPv6 and IPv4-mapped IPv6.
    ("10.0.0.1", ["198.51.100.1:4711"], "198.51.100.1"),
    ("10.0.0.1", ["[2001:db8::1]:4711"], "2001:db8::1"),
    ("10.0.0.1", ["2001:DB8::1"], "2001:db8::1"),
    ("fd00::1", ["2001:db8::2, fd00::5"], "2001:db8::2"),
    ("::ffff:10.0.0.1", ["198.51.100.1"], "198.51.100.1"),
    ("::ffff:203.0.113.5", ["198.51.100.1"], "203.0.113.5"),
    ("10.0.0.1", ["::ffff:198.51.100.1"], "198.51.100.1"),
    # No peer address at all (a Unix socket): nothing to trust.
    (None, ["198.51.100.1"], ""),
    ("/run/x.sock", ["198.51.100.1"], "/run/x.sock"),
])
def test_resolve_client(peer, forwarded, expected) -> None:  # type: ignore[no-untyped-def]
    assert resolve_client(peer, forwarded, PROXIES) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert resolve_client("127.0.0.1", ["198.51.100.1"], ()) == "127.0.0.1"


@pytest.mark.parametrize("text", ["", "unknown", "[::1", "[::1]x", "1.2.3.4:5:6", "1.2.3", "::1]:80", "host:80"])
def test_parse_address_rejects(text: str) -> None:
    assert parse_address(text) is None


# --- in the order build_app uses ----------------------------------------------------------------------------------

async def test_limits_run_before_auth_and_throttle_guessing(aiohttp_client, tmp_path: Path, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    """error -> ratelimit -> origin -> auth, as build_app is to wire them."""
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = make_settings(tmp_path, {"dashboard": {"rate_limit": "5"}})
    setup_ratelimit(app)
    setup_origin(app)
    setup_auth(app)
    app.router.add_get("/api/exams", ok_handler)
    app.router.add_post("/api/exams", ok_handler)
    client = await aiohttp_client(app)
    for n in range(5):
        resp = await client.get("/api/exams", headers=basic((ADMIN[0], f"guess-{n}")))
        assert resp.status == 401
    # The right password no longer helps within the minute, and refused cross-origin posts counted too.
    await assert_refused(await client.get("/api/exams", headers=basic(ADMIN)), 5)
    clock.t += ratelimit.WINDOW
    resp = await client.post("/api/exams", json={}, headers={**basic(ADMIN), "Origin": "https://evil.example"})
    assert resp.status == 403
    assert (await client.post("/api/exams", json={}, headers=basic(ADMIN))).status == 200
    await spend(client, "/api/exams", 3, basic(ADMIN))
    await assert_refused(await client.get("/api/exams", headers=basic(ADMIN)), 5)


async def test_an_ipv6_client_is_one_client_across_its_64(limited) -> None:  # type: ignore[no-untyped-def]
    """Keyed as lockout and the connection cap are (connections.address_key): rotating through a /64 gains nothing."""
    await spend(limited, "/api/check", 10, xff("2001:db8:1:2::1"))
    await assert_refused(await limited.get("/api/check", headers=xff("2001:db8:1:2::ffff")), 10)
    # Another /64 is another client.
    assert (await limited.get("/api/check", headers=xff("2001:db8:1:3::1"))).status == 200
