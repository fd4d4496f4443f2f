"""The report tools over HTTP, through the whole app (build_app) and the real openai client against
tests/llm_server.py: the seed's shapes, 400, 413, 429 on the 11th call, 503 without a model, 502 for garbage."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import ADMIN, READER, basic, fake_clock, make_settings
from llm_server import DEFAULT_CRITIQUE, GARBAGE_TEXT, LLMServer, Scenario

from xrayvision.app import build_app
from xrayvision.keys import POOL
from xrayvision.web import ratelimit

FAST = {"timeout": "2", "probe_interval": "0.05", "backoff_base": "0.01", "backoff_max": "0.05",
        "max_attempts": "2", "answer_retries": "1", "model_name": "medgemma-test", "openai_api_key": "test-key",
        "report_max_chars": "200"}
TOOLS = ("/api/check", "/api/analyse", "/api/translate")
PNEUMONIA = "Opacitate alveolară bazal dreaptă, aspect de pneumonie. SCD libere."


async def _client(aiohttp_client, tmp_path: Path, server: LLMServer | None, **dashboard: str):  # type: ignore
    settings = make_settings(tmp_path, {"openai": {**FAST, "openai_url_primary": server.base_url if server else ""},
                                        "dashboard": {"rate_limit": "0", **dashboard}})
    client = await aiohttp_client(build_app(settings))
    pool = client.server.app[POOL]
    async with asyncio.timeout(30):  # the first probe has answered
        while any(e.since is None for e in pool.endpoints):
            await asyncio.sleep(0.01)
    return client


async def _post(client, path: str, body: object, user=ADMIN):  # type: ignore[no-untyped-def]
    resp = await client.post(path, json=body, headers=basic(user))
    return resp.status, await resp.json(), resp.headers


async def test_each_tool_answers_in_the_seeds_shape(aiohttp_client, tmp_path: Path) -> None:
    grades = {"pneumonia": {"pathologic": "yes", "severity": 7, "summary": "Pneumonia"}}
    translations = {"pneumonie": "Alveolar opacity at the right base, looks like pneumonia. Costophrenic angles clear."}
    async with LLMServer(grades=grades, translations=translations) as server:
        client = await _client(aiohttp_client, tmp_path, server)
        status, body, _ = await _post(client, "/api/check", {"report": PNEUMONIA}, READER)
        assert (status, body) == (200, {"pathologic": "yes", "severity": 7, "summary": "pneumonia"})
        assert server.task_log == ["translate", "grade"]  # Romanian: translated, then the translation graded
        status, body, _ = await _post(client, "/api/translate", {"report": PNEUMONIA})
        assert (status, body) == (200, {"translation": translations["pneumonie"]})
        status, body, _ = await _post(client, "/api/analyse", {"report": "Normal chest."})
        assert (status, body) == (200, DEFAULT_CRITIQUE)
        status, body, _ = await _post(client, "/api/check", {"report": "Normal chest radiograph."})
        assert (status, body) == (200, {"pathologic": "no", "severity": 0, "summary": "normal"})
        assert server.task_log[3:] == ["critique", "grade"] and server.problems == []


@pytest.mark.parametrize("body", [{}, {"report": ""}, {"report": " \n\t "}, {"report": 7}, {"report": None}])
async def test_a_missing_or_empty_report_is_400(aiohttp_client, tmp_path: Path, body: dict) -> None:
    async with LLMServer() as server:
        client = await _client(aiohttp_client, tmp_path, server)
        for path in TOOLS:
            status, answer, _ = await _post(client, path, body)
            assert status == 400 and "report" in answer["error"], (path, answer)
        assert server.chat_count == 0


async def test_a_report_over_report_max_chars_is_413(aiohttp_client, tmp_path: Path) -> None:
    async with LLMServer() as server:
        client = await _client(aiohttp_client, tmp_path, server)
        for path in TOOLS:
            status, answer, _ = await _post(client, path, {"report": "x" * 201})
            assert (status, answer) == (413, {"error": "report: longer than 200 characters"}), path
        assert server.chat_count == 0
        status, _, _ = await _post(client, "/api/translate", {"report": "x" * 200})
        assert status == 200


async def test_the_eleventh_call_in_a_minute_is_429(aiohttp_client, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    clock = fake_clock(monkeypatch, ratelimit)  # the minute does not pass while the test runs
    async with LLMServer() as server:
        client = await _client(aiohttp_client, tmp_path, server, rate_limit_heavy="10")
        for n in range(10):
            status, _, _ = await _post(client, TOOLS[n % 3], {"report": "Normal chest."})
            assert status == 200, n
        status, body, headers = await _post(client, "/api/check", {"report": "Normal chest."})
        assert status == 429 and "error" in body and int(headers["Retry-After"]) >= 1
        assert server.chat_count == 10
        resp = await client.get("/api/exams", headers=basic(ADMIN))  # other routes keep their own limit
        assert resp.status == 200
        clock.t += ratelimit.WINDOW
        status, _, _ = await _post(client, "/api/translate", {"report": "Normal chest."})
        assert status == 200


async def test_without_a_model_the_tools_answer_503_at_once(aiohttp_client, tmp_path: Path) -> None:
    async with LLMServer(healthy=False) as server:
        client = await _client(aiohttp_client, tmp_path, server)
        for path in TOOLS:
            status, body, headers = await _post(client, path, {"report": "Normal chest."})
            assert status == 503 and body["error"].startswith("no model available"), (path, body)
            assert int(headers["Retry-After"]) >= 1
        assert server.chat_count == 0  # nobody waited for the model to come back
    (tmp_path / "none").mkdir()
    client = await _client(aiohttp_client, tmp_path / "none", None)
    status, body, _ = await _post(client, "/api/check", {"report": "Normal chest."})
    assert (status, body) == (503, {"error": "no model available: no model endpoint is configured"})


async def test_garbage_from_the_model_is_502_and_an_unreachable_model_503(aiohttp_client, tmp_path: Path) -> None:
    async with LLMServer(scenarios=lambda n, body: Scenario.GARBAGE) as server:
        client = await _client(aiohttp_client, tmp_path, server)
        for path in TOOLS:
            status, body, _ = await _post(client, path, {"report": "Normal chest."})
            assert status == 502, (path, body)
            assert body == {"error": "the model gave no usable answer: invalid answer from the model: no JSON object "
                                     "in the answer"}
        assert server.chat_count == 6  # each asked twice (answer_retries = 1), the reason told the second time
        assert GARBAGE_TEXT in str(server.requests[1]["messages"])
    async with LLMServer(scenarios=lambda n, body: Scenario.ERROR_500) as server:
        (tmp_path / "down").mkdir()
        client = await _client(aiohttp_client, tmp_path / "down", server)
        status, body, _ = await _post(client, "/api/analyse", {"report": "Normal chest."})
        assert status == 503 and "model unavailable after 2 tries" in body["error"], body
