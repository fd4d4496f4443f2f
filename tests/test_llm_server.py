"""The OpenAI-compatible test model server, driven by the real openai.AsyncOpenAI client."""
from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path

import openai
import pytest
from conftest import free_port
from llm_server import DEFAULT_ANSWER, DEFAULT_CRITIQUE, LLMServer, Scenario, by_ratio, sequence
from PIL import Image

from xrayvision.analysis import grading

SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "finding",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "short": {"type": "string", "enum": ["yes", "no"]},
                "report": {"type": "string"},
                "confidence": {"type": "integer"},
                "severity": {"type": "integer"},
                "summary": {"type": "string"},
            },
            "required": ["short", "report", "confidence", "severity", "summary"],
            "additionalProperties": False,
        },
    },
}


def png_bytes() -> bytes:
    buffer = BytesIO()
    Image.new("L", (32, 32), color=128).save(buffer, format="PNG")
    return buffer.getvalue()


def messages(image: bytes | None = None, *, with_image: bool = True) -> list[dict]:
    user: list[dict] = [{"type": "text", "text": "Chest X-ray, PA view. Any acute findings?"}]
    if with_image:
        data = base64.b64encode(png_bytes() if image is None else image).decode()
        user.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}})
    return [{"role": "system", "content": "You are a radiologist. Answer in JSON."},
            {"role": "user", "content": user}]


def client_for(server: LLMServer, timeout: float = 5.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=timeout)


async def ask(client: openai.AsyncOpenAI, server: LLMServer, *, response_format: bool = True, **kwargs):  # type: ignore[no-untyped-def]
    extra = {"response_format": SCHEMA} if response_format else {}
    return await client.chat.completions.create(model=server.model, messages=kwargs.pop("messages", messages()),
                                                **extra, **kwargs)


@pytest.fixture
async def server() -> AsyncIterator[LLMServer]:
    server = LLMServer()
    await server.start()
    yield server
    await server.stop()


async def test_valid_answer_with_response_format(server: LLMServer) -> None:
    async with client_for(server) as client:
        completion = await ask(client, server)
    assert json.loads(completion.choices[0].message.content) == DEFAULT_ANSWER
    assert completion.id == "chatcmpl-1"
    assert completion.model == "medgemma-test"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        812, 64, 876)
    assert server.problems == []
    assert server.chat_count == 1
    assert server.api_keys == ["k"]
    assert server.requests[0]["response_format"] == SCHEMA
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"


async def test_custom_answer_and_models() -> None:
    async with LLMServer(model="other", answer=lambda body: {**DEFAULT_ANSWER, "short": "yes"}) as server:
        async with client_for(server) as client:
            models = await client.models.list()
            assert [m.id for m in models.data] == ["other"]
            completion = await ask(client, server, response_format=False)
    assert json.loads(completion.choices[0].message.content)["short"] == "yes"
    assert server.problems == [] and server.models_count == 1


@pytest.mark.parametrize("kwargs, problem", [
    ({"messages": messages(with_image=False)}, "no image_url part"),
    ({"messages": messages(b"this is not a png")}, "not an image Pillow can open"),
    ({"messages": messages()[1:]}, "first message role is 'user'"),
    ({"model": "gpt-4o"}, "model is 'gpt-4o'"),
])
async def test_malformed_requests_are_recorded_and_still_answered(server: LLMServer, kwargs: dict,
                                                                   problem: str) -> None:
    async with client_for(server) as client:
        if "model" in kwargs:
            completion = await client.chat.completions.create(messages=messages(), **kwargs)
        else:
            completion = await ask(client, server, **kwargs)
    assert json.loads(completion.choices[0].message.content) == DEFAULT_ANSWER
    assert len(server.problems) == 1 and problem in server.problems[0], server.problems
    assert server.problems[0].startswith("request 1: ")


async def test_bad_response_format_is_recorded(server: LLMServer) -> None:
    schema = json.loads(json.dumps(SCHEMA))
    del schema["json_schema"]["schema"]["properties"]["severity"]
    schema["json_schema"]["schema"]["required"].remove("severity")
    async with client_for(server) as client:
        await client.chat.completions.create(model=server.model, messages=messages(), response_format=schema)
        await client.chat.completions.create(model=server.model, messages=messages(),
                                             response_format={"type": "json_object"})
    assert len(server.problems) == 2
    assert "miss ['severity']" in server.problems[0]
    assert server.problems[1].startswith("request 2: response_format is not of type json_schema")


async def test_each_scenario() -> None:
    chooser = sequence(Scenario.GARBAGE, Scenario.OUT_OF_RANGE, Scenario.CODE_FENCE, Scenario.ERROR_500,
                       "bad_request", Scenario.SLOW)
    async with LLMServer(scenarios=chooser, slow_seconds=0.2) as server, client_for(server) as client:
        garbage = (await ask(client, server)).choices[0].message.content
        assert "{" not in garbage and garbage
        out = json.loads((await ask(client, server)).choices[0].message.content)
        assert (out["severity"], out["confidence"]) == (14, 250)
        fenced = (await ask(client, server)).choices[0].message.content
        assert "```json" in fenced and not fenced.startswith("```")
        inner = fenced.split("```json", 1)[1].split("```", 1)[0]
        assert json.loads(inner) == DEFAULT_ANSWER
        with pytest.raises(openai.InternalServerError) as crashed:
            await ask(client, server)
        assert crashed.value.status_code == 500 and "crashed" in crashed.value.message
        with pytest.raises(openai.BadRequestError) as bad:
            await ask(client, server)
        assert bad.value.body["type"] == "invalid_request_error"
        started = time.monotonic()
        slow = await ask(client, server)
        assert time.monotonic() - started >= 0.2
        assert json.loads(slow.choices[0].message.content) == DEFAULT_ANSWER
        after = await ask(client, server)
        assert json.loads(after.choices[0].message.content) == DEFAULT_ANSWER
    assert server.problems == []
    assert server.scenario_log == [Scenario.GARBAGE, Scenario.OUT_OF_RANGE, Scenario.CODE_FENCE, Scenario.ERROR_500,
                                   Scenario.BAD_REQUEST, Scenario.SLOW, Scenario.VALID]


async def test_timeout_and_stop_interrupts_the_hang() -> None:
    server = LLMServer(scenarios=sequence(Scenario.TIMEOUT))
    await server.start()
    try:
        async with client_for(server, timeout=0.5) as client:
            with pytest.raises(openai.APITimeoutError):
                await ask(client, server)
    finally:
        started = time.monotonic()
        await server.stop()
    assert time.monotonic() - started < 1.5


async def test_latency() -> None:
    async with LLMServer(latency=0.2) as server, client_for(server) as client:
        started = time.monotonic()
        await ask(client, server)
        assert time.monotonic() - started >= 0.2


async def test_response_format_refused() -> None:
    async with LLMServer(accept_response_format=False) as server, client_for(server) as client:
        with pytest.raises(openai.BadRequestError, match="response_format is not supported"):
            await ask(client, server)
        completion = await ask(client, server, response_format=False)
    assert json.loads(completion.choices[0].message.content) == DEFAULT_ANSWER
    assert server.problems == [] and server.chat_count == 2


async def test_stop_drops_inflight_and_restart_answers_on_the_same_port(server: LLMServer) -> None:
    server.scenarios = sequence(Scenario.VALID, Scenario.TIMEOUT)
    async with client_for(server) as client:
        await ask(client, server)  # leaves a keep-alive connection in the client's pool
        hanging = asyncio.create_task(ask(client, server))
        while server.chat_count < 2:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await server.stop()
        with pytest.raises(openai.APIConnectionError):
            await hanging
        assert time.monotonic() - started < 1.5
        with pytest.raises(openai.APIConnectionError):
            await ask(client, server)
        port = server.port
        await server.restart()
        assert server.port == port
        completion = await ask(client, server)
    assert json.loads(completion.choices[0].message.content) == DEFAULT_ANSWER
    assert server.chat_count == 3 and server.problems == []


async def test_unhealthy() -> None:
    async with LLMServer(healthy=False) as server, client_for(server) as client:
        with pytest.raises(openai.InternalServerError) as down:
            await client.models.list()
        assert down.value.status_code == 503
        with pytest.raises(openai.InternalServerError):
            await ask(client, server)
        server.healthy = True
        assert [m.id for m in (await client.models.list()).data] == [server.model]
        await ask(client, server)
    assert server.scenario_log == [Scenario.VALID]


def test_choosers() -> None:
    first = by_ratio(1, error_500=0.3, garbage=0.2, valid=0.5)
    second = by_ratio(1, error_500=0.3, garbage=0.2, valid=0.5)
    drawn = [first(n, {}) for n in range(1, 301)]
    assert [second(n, {}) for n in range(300, 0, -1)] == drawn[::-1]  # per request number, not call order
    counts = {s: drawn.count(s) for s in set(drawn)}
    assert set(counts) == {Scenario.ERROR_500, Scenario.GARBAGE, Scenario.VALID}
    assert counts[Scenario.VALID] > counts[Scenario.ERROR_500] > counts[Scenario.GARBAGE]
    assert drawn != [by_ratio(2, error_500=0.3, garbage=0.2, valid=0.5)(n, {}) for n in range(1, 301)]
    with pytest.raises(ValueError):
        by_ratio(1, nonsense=1.0)
    chooser = sequence(Scenario.ERROR_500, "garbage")
    assert [chooser(n, {}) for n in (1, 2, 3, 4)] == [Scenario.ERROR_500, Scenario.GARBAGE, Scenario.VALID,
                                                      Scenario.VALID]


def test_standalone() -> None:
    port = free_port()
    script = Path(__file__).with_name("llm_server.py")
    process = subprocess.Popen([sys.executable, str(script), "--port", str(port), "--latency", "0.01"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.strip() == f"listening on http://127.0.0.1:{port}/v1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
            assert json.load(response)["data"][0]["id"] == "medgemma-test"
    finally:
        process.terminate()
        _, err = process.communicate(timeout=5)
    assert process.returncode == 0, err
    assert "0 chat requests, 0 problems" in err


# --- report tasks ---------------------------------------------------------------------------------------------------

def report_request(task: str, text: str, *, structured: bool = True) -> dict:
    """A report task as the app sends it (xrayvision.analysis.grading's prompts and schemas)."""
    system, response_format = {"grade": (grading.GRADE_PROMPT, grading.GRADE_FORMAT),
                               "translate": (grading.TRANSLATION_PROMPT, grading.TRANSLATION_FORMAT),
                               "critique": (grading.CRITIQUE_PROMPT, grading.CRITIQUE_FORMAT)}[task]
    return {"messages": grading.messages(system, text), **({"response_format": response_format} if structured else {})}


async def answer_to(client: openai.AsyncOpenAI, server: LLMServer, task: str, text: str, **kwargs) -> str:  # type: ignore
    completion = await client.chat.completions.create(model=server.model, **report_request(task, text, **kwargs))
    return completion.choices[0].message.content or ""


async def test_report_tasks_are_recognised_and_answered_by_default(server: LLMServer) -> None:
    async with client_for(server) as client:
        assert json.loads(await answer_to(client, server, "grade", "Radiografie: fără modificări.")) == \
            {"pathologic": "no", "severity": 0, "summary": "normal"}
        assert json.loads(await answer_to(client, server, "grade", "Opacity right base.", structured=False)) == \
            {"pathologic": "yes", "severity": 6, "summary": "opacity"}
        assert json.loads(await answer_to(client, server, "translate", "Cord normal.")) == \
            {"translation": "English: Cord normal."}
        assert json.loads(await answer_to(client, server, "critique", "Normal.", structured=False)) == \
            DEFAULT_CRITIQUE
        await ask(client, server)  # an image request is still one
    assert server.task_log == ["grade", "grade", "translate", "critique", "image"]
    assert server.problems == []


async def test_report_answers_are_set_per_test() -> None:
    grades = {"pneumonie": {"pathologic": "yes", "severity": 7, "summary": "pneumonia"}}
    async with LLMServer(grades=grades, translations=lambda text: "Pneumonia." if "pneumonie" in text else None,
                         critique={**DEFAULT_CRITIQUE, "overall_assessment": "Thin."}) as server, \
            client_for(server) as client:
        assert json.loads(await answer_to(client, server, "grade", "Aspect de PNEUMONIE bazal drept.")) == \
            grades["pneumonie"]
        assert json.loads(await answer_to(client, server, "grade", "Normal heart.")) == \
            {"pathologic": "no", "severity": 0, "summary": "normal"}  # no match: the default
        assert json.loads(await answer_to(client, server, "translate", "pneumonie")) == {"translation": "Pneumonia."}
        assert json.loads(await answer_to(client, server, "translate", "cord")) == {"translation": "English: cord"}
        assert json.loads(await answer_to(client, server, "critique", "x"))["overall_assessment"] == "Thin."
    assert server.problems == []


async def test_scenarios_apply_to_report_tasks() -> None:
    chooser = sequence(Scenario.GARBAGE, Scenario.OUT_OF_RANGE, Scenario.OUT_OF_RANGE, Scenario.OUT_OF_RANGE,
                       Scenario.CODE_FENCE, Scenario.ERROR_500)
    async with LLMServer(scenarios=chooser) as server, client_for(server) as client:
        assert "{" not in await answer_to(client, server, "grade", "Normal.")
        assert json.loads(await answer_to(client, server, "grade", "Normal."))["severity"] == 14
        assert json.loads(await answer_to(client, server, "translate", "Normal.")) == {"translation": ""}
        critique = json.loads(await answer_to(client, server, "critique", "Normal."))
        assert critique["second_pass"]["conclusions_valid"] == "perhaps"
        fenced = await answer_to(client, server, "translate", "Normal.")
        assert json.loads(fenced.split("```json", 1)[1].split("```", 1)[0]) == {"translation": "English: Normal."}
        with pytest.raises(openai.InternalServerError):
            await answer_to(client, server, "critique", "Normal.")
    assert server.problems == []


async def test_malformed_report_requests_are_recorded(server: LLMServer) -> None:
    schema = json.loads(json.dumps(grading.GRADE_FORMAT))
    del schema["json_schema"]["schema"]["properties"]["summary"]
    schema["json_schema"]["schema"]["required"].remove("summary")
    async with client_for(server) as client:
        await client.chat.completions.create(model=server.model, response_format=schema,
                                             messages=grading.messages(grading.GRADE_PROMPT, "Normal."))
        await client.chat.completions.create(model=server.model, messages=[
            {"role": "system", "content": grading.TRANSLATION_PROMPT}, {"role": "user", "content": ""}])
    assert len(server.problems) == 2, server.problems
    assert server.problems[0].startswith("request 1: response_format schema properties miss ['summary']")
    assert server.problems[1] == "request 2: translate request: the first user message is not a non-empty text"
