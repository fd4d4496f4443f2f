"""The CSRF guard on state-changing /api requests (same origin, JSON bodies) and json_body()."""
from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from conftest import make_settings

from xrayvision.keys import SETTINGS
from xrayvision.web.errors import error_middleware
from xrayvision.web.origin import json_body, parse_origin, setup_origin

JSON = {"Content-Type": "application/json"}
FOREIGN = "https://evil.example"


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"got": await json_body(request)})


async def done(request: web.Request) -> web.Response:
    return web.json_response({"done": True})


def bare_app(tmp_path: Path, client_max_size: int = 1024**2, **dashboard: str) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=client_max_size)
    app[SETTINGS] = make_settings(tmp_path, {"dashboard": dashboard})
    setup_origin(app)
    app.router.add_post("/api/echo", echo)
    app.router.add_put("/api/echo", echo)
    app.router.add_patch("/api/echo", echo)
    app.router.add_post("/api/requeue", done)
    app.router.add_delete("/api/thing", done)
    app.router.add_get("/api/thing", done)
    app.router.add_post("/login-form", done)  # not /api: not guarded
    return app


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path):  # type: ignore[no-untyped-def]
    return await aiohttp_client(bare_app(tmp_path))


@pytest.fixture
async def behind_proxy(aiohttp_client, tmp_path: Path):  # type: ignore[no-untyped-def]
    return await aiohttp_client(bare_app(tmp_path, trusted_proxies="127.0.0.0/8"))


def own_origin(client) -> str:  # type: ignore[no-untyped-def]
    return str(client.make_url("/")).rstrip("/")


async def error(resp, status: int) -> str:  # type: ignore[no-untyped-def]
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"}
    return body["error"]


# --- Origin ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("origin", [FOREIGN, "null", "http://127.0.0.1", "http://localhost:1", "not a url",
                                    "file://", "https://127.0.0.1"])
async def test_foreign_origin_is_refused(client, origin: str) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/api/echo", json={"a": 1}, headers={"Origin": origin})
    assert await error(resp, 403) == "cross-origin request refused"


async def test_same_origin_passes(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/api/echo", json={"a": 1}, headers={"Origin": own_origin(client)})
    assert resp.status == 200
    assert await resp.json() == {"got": {"a": 1}}
    upper = own_origin(client).replace("http://", "HTTP://")
    assert (await client.post("/api/echo", json={}, headers={"Origin": upper})).status == 200


async def test_no_origin_passes(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/api/echo", json={"a": [1, 2]})
    assert resp.status == 200
    assert await resp.json() == {"got": {"a": [1, 2]}}


async def test_every_state_changing_method_is_guarded(client) -> None:  # type: ignore[no-untyped-def]
    for method, path in (("PUT", "/api/echo"), ("PATCH", "/api/echo"), ("DELETE", "/api/thing")):
        resp = await client.request(method, path, json={}, headers={"Origin": FOREIGN})
        await error(resp, 403)
        assert (await client.request(method, path, json={}, headers={"Origin": own_origin(client)})).status == 200


async def test_reads_with_a_foreign_origin_pass(client) -> None:  # type: ignore[no-untyped-def]
    for method in ("GET", "HEAD"):
        resp = await client.request(method, "/api/thing", headers={"Origin": FOREIGN, "Content-Type": "text/plain"})
        assert resp.status == 200
    # No CORS headers are granted, so a preflight for a JSON POST from elsewhere never succeeds.
    resp = await client.options("/api/echo", headers={"Origin": FOREIGN, "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_paths_outside_the_api_are_not_guarded(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/login-form", data="a=1", headers={"Origin": FOREIGN})
    assert resp.status == 200


async def test_two_origin_headers_are_refused(client) -> None:  # type: ignore[no-untyped-def]
    headers = [("Origin", own_origin(client)), ("Origin", FOREIGN)]
    await error(await client.post("/api/echo", json={}, headers=headers), 403)


async def test_origin_is_checked_before_the_body_type(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/api/echo", data="a=1", headers={"Origin": FOREIGN, "Content-Type": "text/plain"})
    await error(resp, 403)


# --- behind a reverse proxy ---------------------------------------------------------------------------------------

async def test_forwarded_proto_and_host_from_a_trusted_proxy(behind_proxy) -> None:  # type: ignore[no-untyped-def]
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "XRay.Hospital.example"}
    for origin in ("https://xray.hospital.example", "https://xray.hospital.example:443"):
        resp = await behind_proxy.post("/api/echo", json={}, headers={**forwarded, "Origin": origin})
        assert resp.status == 200, await resp.text()
    # The proxy's view wins over the Host it connected with...
    resp = await behind_proxy.post("/api/echo", json={}, headers={**forwarded, "Origin": own_origin(behind_proxy)})
    await error(resp, 403)
    for origin in ("http://xray.hospital.example", "https://xray.hospital.example:8443", FOREIGN):
        await error(await behind_proxy.post("/api/echo", json={}, headers={**forwarded, "Origin": origin}), 403)
    # ...and the right-most value is the one the proxy in front of us set.
    chained = {"X-Forwarded-Proto": "http, https", "X-Forwarded-Host": "evil.example, xray.hospital.example:8443"}
    resp = await behind_proxy.post("/api/echo", json={},
                                   headers={**chained, "Origin": "https://xray.hospital.example:8443"})
    assert resp.status == 200


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(client) -> None:  # type: ignore[no-untyped-def]
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "xray.hospital.example"}
    resp = await client.post("/api/echo", json={}, headers={**forwarded, "Origin": "https://xray.hospital.example"})
    await error(resp, 403)
    resp = await client.post("/api/echo", json={}, headers={**forwarded, "Origin": own_origin(client)})
    assert resp.status == 200


@pytest.mark.parametrize("text, expected", [
    ("https://a.example", ("https", "a.example", 443)),
    ("http://A.Example:80", ("http", "a.example", 80)),
    ("http://[::1]:8000", ("http", "::1", 8000)),
    ("null", None), ("", None), ("ftp://a.example", None), ("https://u:p@a.example", None),
    ("https://a.example/path", None), ("https://a.example?q", None), ("https://", None),
])
def test_parse_origin(text: str, expected) -> None:  # type: ignore[no-untyped-def]
    assert parse_origin(text) == expected


# --- JSON bodies --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonp", "application/json-x",
                                          "application/octet-stream"])
async def test_non_json_bodies_are_refused(client, content_type: str) -> None:  # type: ignore[no-untyped-def]
    # The classic CSRF form: a text/plain body that happens to parse as JSON.
    resp = await client.post("/api/echo", data='{"a": 1}', headers={"Content-Type": content_type})
    assert await error(resp, 415) == "expected a JSON body (Content-Type: application/json)"


async def test_a_body_without_content_type_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/api/echo", data=b'{"a": 1}', skip_auto_headers=["Content-Type"])
    await error(resp, 415)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8", " application/json "])
async def test_json_with_parameters_passes(client, content_type: str) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/api/echo", data='{"a": "ă"}'.encode(), headers={"Content-Type": content_type})
    assert resp.status == 200
    assert await resp.json() == {"got": {"a": "ă"}}


async def test_bodiless_requests_need_no_content_type(client) -> None:  # type: ignore[no-untyped-def]
    # What fetch(url, {method: "POST"}) sends: no body, no Content-Type.
    assert (await client.post("/api/requeue", skip_auto_headers=["Content-Type"])).status == 200
    assert (await client.delete("/api/thing")).status == 200
    assert (await client.post("/api/requeue", json={})).status == 200
    # A declared non-JSON type is refused even without a body: an empty form post, or aiohttp's client, which
    # labels a bodiless POST application/octet-stream.
    resp = await client.post("/api/requeue", headers={"Content-Type": "application/x-www-form-urlencoded"})
    await error(resp, 415)
    await error(await client.post("/api/requeue"), 415)


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "invalid JSON: "),
    (b"", "invalid JSON: empty body"),
    (b"   ", "invalid JSON: empty body"),
    (b"[1, 2]", "invalid JSON: expected an object, got an array"),
    (b'"text"', "invalid JSON: expected an object, got a string"),
    (b"null", "invalid JSON: expected an object, got null"),
    (b"3", "invalid JSON: expected an object, got a number"),
    (b'{"a": NaN}', "invalid JSON: NaN is not JSON"),
    (b'{"a": 1} trailing', "invalid JSON: Extra data"),
    (b"\xff\xfe\xfd", "invalid JSON: "),
    (b"[" * 100_000 + b"]" * 100_000, "invalid JSON: "),
])
async def test_json_body_refuses_bad_json(client, body: bytes, fragment: str) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/api/echo", data=body, headers=JSON)
    assert (await error(resp, 400)).startswith(fragment)


async def test_json_body_size_is_capped(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(bare_app(tmp_path, client_max_size=1024))
    resp = await client.post("/api/echo", json={"a": "x" * 2000})
    await error(resp, 413)
    assert (await client.post("/api/echo", json={"a": "x" * 100})).status == 200


async def test_json_body_checks_the_type_itself(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Outside /api the middleware does not look, but json_body still insists on JSON.
    app = bare_app(tmp_path)
    app.router.add_post("/elsewhere", echo)
    client = await aiohttp_client(app)
    await error(await client.post("/elsewhere", data="{}", headers={"Content-Type": "text/plain"}), 415)
    assert (await client.post("/elsewhere", json={"b": 2})).status == 200
