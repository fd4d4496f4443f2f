"""The model endpoints are visible: each one's URL and state is logged at start and on every change, with the
reason, and EndpointPool.status() carries each endpoint's URL, state, last error and since when. Against the real
openai client and tests/llm_server.py on loopback; an unreachable endpoint is a port where nothing listens."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
from conftest import free_port
from llm_server import LLMServer

from xrayvision.analysis.endpoints import EndpointPool
from xrayvision.config import EndpointSettings
from xrayvision.privacy import loggable_url

LOGGER = "xrayvision.analysis.endpoints"


def _endpoint(url: str, name: str = "pri") -> EndpointSettings:
    return EndpointSettings(name=name, base_url=url, model="medgemma-test", api_key="k", concurrency=1)


@pytest.fixture
async def pools() -> AsyncIterator[list[EndpointPool]]:
    started: list[EndpointPool] = []
    yield started
    for pool in started:
        await pool.stop()


async def _start(pools: list[EndpointPool], *endpoints: EndpointSettings) -> EndpointPool:
    pool = EndpointPool(endpoints, timeout=2, probe_interval=0.05, structured=True)
    pools.append(pool)
    await pool.start()
    return pool


async def _record(caplog: pytest.LogCaptureFixture, level: int, text: str, timeout: float = 30) -> logging.LogRecord:
    """The first record of the endpoint pool at `level` whose message holds `text`, waited for."""
    deadline = time.monotonic() + timeout
    while True:
        for record in caplog.records:
            if record.name == LOGGER and record.levelno == level and text in record.getMessage():
                return record
        assert time.monotonic() < deadline, f"no {logging.getLevelName(level)} record with {text!r}: {caplog.text}"
        await asyncio.sleep(0.02)


async def test_unreachable_endpoint_is_logged_at_start_and_its_recovery_too(
        caplog: pytest.LogCaptureFixture, pools: list[EndpointPool]) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    port = free_port()  # nothing listens here yet
    url = f"http://127.0.0.1:{port}/v1"
    pool = await _start(pools, _endpoint(url))

    started = await _record(caplog, logging.INFO, "checking it")
    assert f"{url}/chat/completions" in started.getMessage()
    assert "primary" in started.getMessage() and "OPENAI_URL_PRIMARY" in started.getMessage()
    down = await _record(caplog, logging.WARNING, "is down")
    assert f"{url}/chat/completions" in down.getMessage()
    assert "cannot connect: connection refused" in down.getMessage()

    status = pool.status()
    assert status["url"] == "" and status["health"] == {"pri": False}
    (entry,) = status["endpoints"]
    assert entry["name"] == "pri" and entry["label"] == "primary"  # the log's word for it, as the badge shows it
    assert entry["url"] == f"{url}/chat/completions" and entry["healthy"] is False
    assert entry["error"] == "cannot connect: connection refused"
    since = dt.datetime.strptime(entry["since"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - since).total_seconds()) < 3600  # a real UTC time, not a monotonic one
    # Later failed probes with the same reason say nothing more.
    probes_logged = sum(r.levelno == logging.WARNING for r in caplog.records if r.name == LOGGER)
    assert probes_logged == 1

    server = LLMServer()
    await server.start(port)  # the model server comes up where the endpoint points
    try:
        up = await _record(caplog, logging.INFO, "is up")
    finally:
        await server.stop()
    assert f"{url}/chat/completions" in up.getMessage() and "primary" in up.getMessage()
    status = pool.status()
    assert status["health"] == {"pri": True} and status["url"] == f"{url}/chat/completions"
    (entry,) = status["endpoints"]
    assert entry["healthy"] is True and entry["error"] is None and entry["since"] is not None


async def test_a_server_that_answers_an_error_is_logged_with_the_status(
        caplog: pytest.LogCaptureFixture, pools: list[EndpointPool]) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with LLMServer(healthy=False) as server:
        pool = await _start(pools, _endpoint(server.base_url))
        down = await _record(caplog, logging.WARNING, "is down")
        assert "HTTP 503 on GET /models" in down.getMessage()
        assert pool.status()["endpoints"][0]["error"].startswith("HTTP 503 on GET /models")

        await server.stop()  # a new reason while down is a change too
        now = await _record(caplog, logging.WARNING, "still down, now: cannot connect: connection refused")
        assert server.base_url in now.getMessage()
        assert pool.status()["endpoints"][0]["error"] == "cannot connect: connection refused"


async def test_a_healthy_endpoint_is_logged_up_after_its_first_probe(
        caplog: pytest.LogCaptureFixture, pools: list[EndpointPool]) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with LLMServer() as server:
        pool = await _start(pools, _endpoint(server.base_url), _endpoint(f"http://127.0.0.1:{free_port()}/v1", "gpu2"))
        await _record(caplog, logging.INFO, "Model endpoint primary")
        await _record(caplog, logging.INFO, "is up")
        down = await _record(caplog, logging.WARNING, "is down")
        assert "Model endpoint gpu2" in down.getMessage()
        names = [(e["name"], e["label"], e["healthy"]) for e in pool.status()["endpoints"]]
        assert names == [("pri", "primary", True), ("gpu2", "gpu2", False)]


async def test_no_endpoint_configured_is_a_warning(caplog: pytest.LogCaptureFixture,
                                                   pools: list[EndpointPool]) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    pool = await _start(pools)
    await _record(caplog, logging.WARNING, "No model endpoint configured")
    assert pool.status() == {"url": "", "health": {}, "endpoints": []}


async def test_a_password_in_the_url_stays_out_of_the_log(caplog: pytest.LogCaptureFixture,
                                                          pools: list[EndpointPool]) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    url = f"http://ana:s3cret-token@127.0.0.1:{free_port()}/v1"
    await _start(pools, _endpoint(url))
    down = await _record(caplog, logging.WARNING, "is down")
    assert "ana:***@127.0.0.1" in down.getMessage()
    assert "s3cret-token" not in caplog.text
    assert loggable_url("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080/v1"


async def test_no_url_with_a_password_leaves_the_pool_status(pools: list[EndpointPool]) -> None:
    """status() feeds admins' live frames: a URL with credentials in it goes out as the log writes it."""
    async with LLMServer() as server:
        up = server.base_url.replace("http://", "http://ops:s3cret@")
        down = f"http://ana:t0ken@127.0.0.1:{free_port()}/v1"
        pool = await _start(pools, _endpoint(up), _endpoint(down, "sec"))
        deadline = time.monotonic() + 30
        while not (pool.status()["health"] == {"pri": True, "sec": False} and pool.status()["endpoints"][1]["error"]):
            assert time.monotonic() < deadline, pool.status()
            await asyncio.sleep(0.02)
        status = pool.status()
    assert "s3cret" not in json.dumps(status) and "t0ken" not in json.dumps(status)
    masked = up.replace("ops:s3cret@", "ops:***@") + "/chat/completions"
    assert status["url"] == masked  # the active endpoint's, as the badge shows it
    assert [(e["label"], e["url"]) for e in status["endpoints"]] == [
        ("primary", masked), ("secondary", down.replace("ana:t0ken@", "ana:***@") + "/chat/completions")]


async def test_an_endpoint_that_does_not_serve_the_configured_model_is_a_warning(
        caplog: pytest.LogCaptureFixture, pools: list[EndpointPool]) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with LLMServer(model="alibayram/medgemma") as server:
        await _start(pools, _endpoint(server.base_url))  # configured: medgemma-test
        up = await _record(caplog, logging.INFO, "is up")
        assert "serving alibayram/medgemma" in up.getMessage()
        wrong = await _record(caplog, logging.WARNING, "not the configured model")
        assert wrong.getMessage() == ("Model endpoint primary serves alibayram/medgemma, not the configured model "
                                      "medgemma-test ([openai] MODEL_NAME)")
    await pools.pop().stop()  # its probes of the stopped server are not this part's business
    async with LLMServer() as right:
        caplog.clear()
        await _start(pools, _endpoint(right.base_url))
        await _record(caplog, logging.INFO, "serving medgemma-test")
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
