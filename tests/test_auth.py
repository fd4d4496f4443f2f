"""Password checks off the event loop, and failed logins locked out per client address and per user name on every
route."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from pathlib import Path

import pytest
from aiohttp import web
from conftest import ADMIN, READER, Clock, add_exams, basic, fake_clock, make_settings, ok_handler

from xrayvision.app import build_app
from xrayvision.keys import SETTINGS
from xrayvision.web import auth, lockout
from xrayvision.web.auth import AUTHENTICATOR, DUMMY_HASH, setup_auth
from xrayvision.web.errors import error_middleware

ROUTES = ("/", "/images/1.2.3.png", "/ws", "/api/exams")


@pytest.fixture
def clock(monkeypatch) -> Clock:  # type: ignore[no-untyped-def]
    return fake_clock(monkeypatch, lockout)


def bare_app(tmp_path: Path, **dashboard: str) -> web.Application:
    """Only auth inside the error middleware; the test client's 127.0.0.1 a trusted proxy, so that
    X-Forwarded-For picks the client's address."""
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = make_settings(tmp_path, {"dashboard": {"trusted_proxies": "127.0.0.1", **dashboard}})
    setup_auth(app)
    for path in (*ROUTES, "/static/app.js"):
        app.router.add_get(path, ok_handler)
    return app


@pytest.fixture
async def guarded(aiohttp_client, tmp_path: Path, clock: Clock):  # type: ignore[no-untyped-def]
    return await aiohttp_client(bare_app(tmp_path))


def at(address: str, user: tuple[str, str] | None = None) -> dict[str, str]:
    return {"X-Forwarded-For": address, **(basic(user) if user else {})}


async def assert_locked(resp, scope: str, seconds: int = 900) -> None:  # type: ignore[no-untyped-def]
    assert resp.status == 429
    assert resp.headers["Retry-After"] == str(seconds)
    body = await resp.json()
    assert set(body) == {"error"} and f"for this {scope}" in body["error"] and f"{seconds} s" in body["error"]


# --- per address ---------------------------------------------------------------------------------------------------

async def test_ten_failures_lock_the_address_on_every_route(guarded, clock: Clock, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="xrayvision.web.auth")
    for n in range(10):  # spread over the routes (they share one count) and user names (not locked here)
        resp = await guarded.get(ROUTES[n % len(ROUTES)], headers=at("10.0.0.1", (f"user{n}", f"guess-{n}")))
        assert resp.status == 401
    for path in ROUTES:  # even the right password, on every route
        await assert_locked(await guarded.get(path, headers=at("10.0.0.1", ADMIN)), "address")
    await assert_locked(await guarded.get("/", headers=at("10.0.0.1")), "address")
    assert (await guarded.get("/static/app.js", headers=at("10.0.0.1"))).status == 200  # public
    # Another address is not affected, nor another user there.
    assert (await guarded.get("/api/exams", headers=at("10.0.0.2", ADMIN))).status == 200
    assert (await guarded.get("/", headers=at("10.0.0.3", READER))).status == 200
    # Address and user are logged, the password never; the lock is said once.
    log = caplog.text
    assert "10.0.0.1" in log and "'user3'" in log and "guess-" not in log and ADMIN[1] not in log
    assert log.count("Login locked for address 10.0.0.1") == 1
    for n in range(5):  # knocking on, under other names too: one line a minute
        await guarded.get("/", headers=at("10.0.0.1", (f"other{n}", "x")))
    assert caplog.text.count("Refused a login attempt from 10.0.0.1") == 1
    # The lock ends after LOGIN_LOCKOUT, with a fresh count.
    clock.t += 899
    await assert_locked(await guarded.get("/", headers=at("10.0.0.1", ADMIN)), "address", 1)
    clock.t += 1
    assert (await guarded.get("/", headers=at("10.0.0.1", ADMIN))).status == 200
    assert (await guarded.get("/", headers=at("10.0.0.1", (ADMIN[0], "again")))).status == 401


async def test_failures_older_than_the_window_do_not_count(guarded, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    for n in range(9):
        assert (await guarded.get("/", headers=at("10.0.0.1", (ADMIN[0], f"g{n}")))).status == 401
    clock.t += 300  # LOGIN_WINDOW: those nine age out
    for n in range(9):
        assert (await guarded.get("/", headers=at("10.0.0.1", (ADMIN[0], f"h{n}")))).status == 401
    assert (await guarded.get("/", headers=at("10.0.0.1", ADMIN))).status == 200


async def test_requests_without_credentials_are_not_failures(guarded) -> None:  # type: ignore[no-untyped-def]
    for _ in range(20):  # a browser's first request, before it asks for a password
        assert (await guarded.get("/", headers=at("10.0.0.1"))).status == 401
    assert (await guarded.get("/", headers=at("10.0.0.1", ADMIN))).status == 200


async def test_limits_come_from_the_config(aiohttp_client, tmp_path: Path, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(bare_app(tmp_path, login_failures="3", login_window="60", login_lockout="120"))
    for n in range(3):
        assert (await client.get("/", headers=at("10.0.0.1", (ADMIN[0], f"g{n}")))).status == 401
    await assert_locked(await client.get("/", headers=at("10.0.0.1", ADMIN)), "address", 120)


# --- per user name -------------------------------------------------------------------------------------------------

async def test_a_locked_user_name_still_lets_the_real_user_in_from_a_familiar_address(guarded, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    # The real user works from 10.1.0.1; an attacker spreads guesses over ten other addresses.
    assert (await guarded.get("/", headers=at("10.1.0.1", ADMIN))).status == 200
    for n in range(10):
        assert (await guarded.get("/", headers=at(f"10.2.0.{n}", (ADMIN[0], f"guess-{n}")))).status == 401
    # The user name is locked: from any address that never logged in as admin, even the right password is refused
    # (so guessing from fresh addresses learns nothing)...
    await assert_locked(await guarded.get("/", headers=at("10.3.0.1", ADMIN)), "user")
    await assert_locked(await guarded.get("/", headers=at("10.2.0.1", (ADMIN[0], "guess-11"))), "user")
    # ...while the real user's workstation carries on, and other users are not affected anywhere.
    assert (await guarded.get("/api/exams", headers=at("10.1.0.1", ADMIN))).status == 200
    assert (await guarded.get("/", headers=at("10.3.0.1", READER))).status == 200
    # A wrong password from the familiar address is still a failure, counted for that address.
    assert (await guarded.get("/", headers=at("10.1.0.1", (ADMIN[0], "typo")))).status == 401
    # Once LOGIN_LOCKOUT has passed, every address may log in as admin again.
    clock.t += 900
    assert (await guarded.get("/", headers=at("10.3.0.1", ADMIN))).status == 200


async def test_an_address_becomes_familiar_with_remembered_credentials_too(guarded, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    assert (await guarded.get("/", headers=at("10.1.0.1", ADMIN))).status == 200  # verified here
    assert (await guarded.get("/", headers=at("10.1.0.2", ADMIN))).status == 200  # remembered: no new scrypt
    for n in range(10):
        assert (await guarded.get("/", headers=at(f"10.2.0.{n}", (ADMIN[0], f"guess-{n}")))).status == 401
    assert (await guarded.get("/", headers=at("10.1.0.2", ADMIN))).status == 200
    await assert_locked(await guarded.get("/", headers=at("10.1.0.3", ADMIN)), "user")


async def test_ipv6_addresses_count_by_their_64(guarded, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    """One host usually holds a whole /64: rotating through it does not escape the count."""
    for n in range(10):
        assert (await guarded.get("/", headers=at(f"2001:db8::{n + 1:x}", (f"u{n}", "x")))).status == 401
    await assert_locked(await guarded.get("/", headers=at("2001:db8::ffff", ADMIN)), "address")
    assert (await guarded.get("/", headers=at("2001:db8:0:1::1", ADMIN))).status == 200


async def test_unknown_user_names_lock_the_same_way(guarded, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    """So that a 429 does not tell who exists either."""
    for n in range(10):
        assert (await guarded.get("/", headers=at(f"10.2.0.{n}", ("nobody", f"guess-{n}")))).status == 401
    await assert_locked(await guarded.get("/", headers=at("10.3.0.1", ("nobody", "x"))), "user")
    await assert_locked(await guarded.get("/", headers=at("10.3.0.1", ("NoBody", "x"))), "user")


# --- the check itself ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC", "bAsIc"])
async def test_the_basic_scheme_is_case_insensitive(guarded, scheme: str) -> None:  # type: ignore[no-untyped-def]
    token = basic(ADMIN)["Authorization"].split(" ", 1)[1]
    assert (await guarded.get("/api/exams", headers={"Authorization": f"{scheme} {token}"})).status == 200


async def test_unknown_users_cost_the_same_scrypt_as_known_ones(guarded, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    hashed = auth.hash_password("right")
    calls: list[str] = []
    real = auth.verify_password

    def spy(stored: str, offered: str) -> bool:
        calls.append(stored)
        return real(stored, offered)

    monkeypatch.setattr(auth, "verify_password", spy)
    authenticator = guarded.server.app[AUTHENTICATOR]
    monkeypatch.setattr(authenticator, "users", {**authenticator.users, "hashed": auth.User("hashed", hashed, "user")})
    assert (await guarded.get("/", headers=at("10.0.0.1", ("hashed", "wrong")))).status == 401
    assert calls == [hashed]
    calls.clear()
    assert (await guarded.get("/", headers=at("10.0.0.2", ("nobody", "wrong")))).status == 401
    assert calls == [DUMMY_HASH]  # one scrypt, as for the known user
    calls.clear()
    assert (await guarded.get("/", headers=at("10.0.0.3", (ADMIN[0], "wrong")))).status == 401
    assert calls[0] == DUMMY_HASH  # a plain-text password costs the same scrypt first
    # The dummy is a real hash with our parameters, so that it takes as long.
    assert DUMMY_HASH.split("$")[:4] == hashed.split("$")[:4]


def test_verified_credentials_are_keyed_by_a_secret_hmac(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    one = auth.Authenticator(settings.users, lockout.Lockout(10, 300, 900))
    two = auth.Authenticator(settings.users, lockout.Lockout(10, 300, 900))
    key = one.cache_key(*ADMIN)
    assert key != two.cache_key(*ADMIN)  # a secret per process (per authenticator)
    assert key == one.cache_key(*ADMIN)
    assert key != hashlib.sha256(ADMIN[1].encode()).digest()
    assert one.cache_key("a", "b:c") != one.cache_key("a:b", "c")


async def test_wrong_passwords_run_off_the_loop_and_do_not_stall_others(aiohttp_client, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                        monkeypatch) -> None:
    """Eight clients with wrong passwords while an authenticated client reads the exam list: each check is held
    in its worker thread until the authenticated answer is back, so this passes only if the checks are off the
    loop; and no more than VERIFY_CONCURRENCY of them run at once."""
    app = build_app(make_settings(tmp_path))
    client = await aiohttp_client(app)
    await add_exams(app, tmp_path, 1)
    assert (await client.get("/api/exams", headers=basic(ADMIN))).status == 200  # verified once, then cached
    release = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()
    real = auth.check_password

    def held(user, offered):  # type: ignore[no-untyped-def]
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            assert release.wait(timeout=60)
            return real(user, offered)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(auth, "check_password", held)
    wrong = [asyncio.ensure_future(client.get("/", headers=basic((ADMIN[0], f"wrong-{n}")))) for n in range(8)]
    deadline = asyncio.get_running_loop().time() + 30
    while running < auth.VERIFY_CONCURRENCY:  # the wrong ones have reached their checks
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    resp = await asyncio.wait_for(client.get("/api/exams", headers=basic(ADMIN)), timeout=30)
    assert resp.status == 200 and (await resp.json())["total"] == 1
    assert not any(task.done() for task in wrong)  # still in flight
    assert most == auth.VERIFY_CONCURRENCY
    release.set()
    assert [r.status for r in await asyncio.gather(*wrong)] == [401] * 8


async def test_checks_beyond_the_queue_are_refused_at_once(guarded, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A flood of new passwords gets 503 rather than a queue of scrypt work that would take minutes to drain."""
    monkeypatch.setattr(auth, "VERIFY_QUEUE", 3)
    release = threading.Event()
    real = auth.check_password

    def held(user, offered):  # type: ignore[no-untyped-def]
        assert release.wait(timeout=60)
        return real(user, offered)

    monkeypatch.setattr(auth, "check_password", held)
    waiting = [asyncio.ensure_future(guarded.get("/", headers=at(f"10.0.0.{n}", (ADMIN[0], "w")))) for n in range(3)]
    authenticator = guarded.server.app[AUTHENTICATOR]
    deadline = asyncio.get_running_loop().time() + 30
    while authenticator.waiting < 3:  # two checking, one queued
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    resp = await guarded.get("/", headers=at("10.0.0.9", (ADMIN[0], "w")))
    assert resp.status == 503 and resp.headers["Retry-After"] == "1" and "error" in await resp.json()
    release.set()
    assert [r.status for r in await asyncio.gather(*waiting)] == [401] * 3
