"""An OpenAI-compatible chat server for tests and benchmarks: a test fixture, not a product feature.

It speaks just enough of the OpenAI HTTP API (`GET /v1/models`, `POST /v1/chat/completions`) for the real
`openai.AsyncOpenAI` client, checks that every chat request is well formed (recording, never rejecting, what is
wrong in `problems`), and answers each request per a chosen `Scenario`: a valid JSON finding, prose, out-of-range
numbers, a fenced code block, HTTP 500/400, a hang or a slow answer. `stop()` drops in-flight requests like a
crashed model server; `restart()` brings it back on the same port.

It answers report tasks too (text only, no image): grading a report, translating it, a three-pass critique. The task
is read from the response_format's json_schema name (report_grade, report_translation, report_critique), else from
the key names the system prompt lists; the scenarios apply to them as to images. What a report grades as is set per
test: `grades={"pneumonie": {"pathologic": "yes", "severity": 7, "summary": "pneumonia"}}` (first substring of the
report that matches) or a function of the report text; `translations` likewise. Without a match, a report containing
"normal" or "fără modificări" grades no/0/"normal", any other yes/6/"opacity"; a translation is the text after
"English: ".

In tests:

    server = LLMServer(scenarios=sequence(Scenario.ERROR_500, Scenario.GARBAGE))
    await server.start()
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    ...
    assert server.problems == []
    await server.stop()

Standalone (for a benchmark), until killed:

    python tests/llm_server.py --port 8081 --latency 0.5
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import enum
import json
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from aiohttp import web
from PIL import Image

HOST = "127.0.0.1"
PNG_DATA_URL = "data:image/png;base64,"
ANSWER_KEYS = ("short", "report", "confidence", "severity", "summary")
USAGE = {"prompt_tokens": 812, "completion_tokens": 64, "total_tokens": 876}
DEFAULT_ANSWER: dict[str, Any] = {
    "short": "no", "report": "No acute findings.", "confidence": 90, "severity": 0, "summary": "normal",
}
# Report tasks: the json_schema name, and the key the system prompt names when no response_format is sent.
TASK_SCHEMAS = {"report_grade": "grade", "report_translation": "translate", "report_critique": "critique"}
TASK_KEYS = {"grade": ("pathologic", "severity", "summary"), "translate": ("translation",),
             "critique": ("first_pass", "second_pass", "third_pass", "overall_assessment")}
NORMAL_GRADE = {"pathologic": "no", "severity": 0, "summary": "normal"}
ABNORMAL_GRADE = {"pathologic": "yes", "severity": 6, "summary": "opacity"}
NORMAL_WORDS = ("normal", "fără modificări", "fara modificari")
DEFAULT_CRITIQUE: dict[str, Any] = {
    "first_pass": {"topic": "chest radiograph", "purpose": "screening", "primary_findings": "No acute findings."},
    "second_pass": {"main_points": ["lungs clear"], "supporting_evidence": ["no opacity described"],
                    "conclusions_valid": True},
    "third_pass": {"assumptions": ["adequate inspiration"], "missing_info": ["comparison with priors"],
                   "critique": "Brief but adequate."},
    "overall_assessment": "A short, usable normal report.",
}
GARBAGE_TEXT = ("I have reviewed the radiograph carefully. The cardiac silhouette looks within normal limits and the "
                "lungs appear reasonably clear, but I would recommend clinical correlation and a radiologist's read.")


class Scenario(enum.StrEnum):  # a str and an Enum (ruff UP042 prefers StrEnum to str, Enum)
    VALID = "valid"                # a well-formed JSON answer
    GARBAGE = "garbage"            # prose with no JSON at all
    OUT_OF_RANGE = "out_of_range"  # JSON with severity 14 and confidence 250
    CODE_FENCE = "code_fence"      # the valid JSON in ```json ... ``` with a sentence before and after
    ERROR_500 = "error_500"        # HTTP 500 with an OpenAI-style error body
    TIMEOUT = "timeout"            # sleeps `hang_seconds`, then answers (valid)
    SLOW = "slow"                  # valid, after `slow_seconds`
    BAD_REQUEST = "bad_request"    # HTTP 400 (a 4xx that will not change)


Chooser = Callable[[int, dict], Scenario]


def by_ratio(seed: int, **weights: float) -> Chooser:
    """A chooser drawing scenarios at random with the given weights, e.g. by_ratio(1, error_500=0.3, valid=0.7).

    Deterministic per request number: request n always gets the n-th draw of random.Random(seed), whatever the
    order the requests are asked about."""
    if not weights:
        raise ValueError("by_ratio needs at least one scenario weight")
    population = [Scenario(name) for name in weights]
    values = [float(w) for w in weights.values()]
    if any(w < 0 for w in values) or sum(values) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum: {weights}")
    rng = random.Random(seed)
    draws: list[Scenario] = []

    def choose(n: int, body: dict) -> Scenario:
        while len(draws) < n:
            draws.append(rng.choices(population, values)[0])
        return draws[n - 1]

    return choose


def sequence(*scenarios: Scenario | str) -> Chooser:
    """A chooser giving request n scenarios[n-1], then VALID forever."""
    fixed = [Scenario(s) for s in scenarios]

    def choose(n: int, body: dict) -> Scenario:
        return fixed[n - 1] if 1 <= n <= len(fixed) else Scenario.VALID

    return choose


def _error(status: int, message: str, type_: str, code: str | None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": None, "code": code}},
                             status=status)


def _check_png(url: str) -> str | None:
    """What is wrong with a data: URL that should hold a PNG, or None. Blocking (Pillow): run in a thread."""
    try:
        data = base64.b64decode(url[len(PNG_DATA_URL):], validate=True)
    except (binascii.Error, ValueError) as exc:
        return f"image_url base64 does not decode: {exc}"
    try:
        with Image.open(BytesIO(data)) as image:
            fmt = image.format
            image.verify()
    except Exception as exc:  # Pillow raises many kinds on bad data
        return f"image_url data is not an image Pillow can open: {exc!r}"
    if fmt != "PNG":
        return f"image_url data is {fmt}, not PNG"
    return None


def _check_user_message(message: dict) -> tuple[list[str], str | None]:
    """Problems of one user message and the data: URL to verify (None when there is none to verify)."""
    content = message.get("content")
    if not isinstance(content, list):
        return [f"user message content is {type(content).__name__}, not a list of parts"], None
    problems: list[str] = []
    parts = [p for p in content if isinstance(p, dict)]
    if len(parts) != len(content):
        problems.append("user message content holds a part that is not an object")
    texts = [p for p in parts if p.get("type") == "text"]
    if not texts:
        problems.append("user message has no text part")
    elif not any(isinstance(p.get("text"), str) and p["text"].strip() for p in texts):
        problems.append("user message text part is empty")
    images = [p for p in parts if p.get("type") == "image_url"]
    if not images:
        problems.append("user message has no image_url part")
        return problems, None
    image_url = images[0].get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str):
        problems.append('image_url part is not {"image_url": {"url": str}}')
        return problems, None
    if not url.startswith(PNG_DATA_URL):
        problems.append(f"image_url url does not start with {PNG_DATA_URL!r}: {url[:40]!r}")
        return problems, None
    return problems, url


def task_of(body: dict) -> str:
    """'image', or the report task a chat request asks for: 'grade', 'translate' or 'critique'."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and isinstance(response_format.get("json_schema"), dict):
        name = response_format["json_schema"].get("name")
        if name in TASK_SCHEMAS:
            return TASK_SCHEMAS[name]
    messages = body.get("messages")
    first = messages[0] if isinstance(messages, list) and messages and isinstance(messages[0], dict) else {}
    system = first.get("content") if first.get("role") == "system" else None
    if isinstance(system, str):
        for task, keys in TASK_KEYS.items():
            if f'"{keys[0]}"' in system:
                return task
    return "image"


def report_text(body: dict) -> str:
    """The report in a report task: the first user message's text, inside its triple quotes when it has them."""
    for message in body.get("messages") or ():
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            text = str(content or "")
            start, end = text.find('"""'), text.rfind('"""')
            return text[start + 3:end].strip() if 0 <= start < end else text.strip()
    return ""


def _lookup(table: Mapping[str, Any] | Callable[[str], Any] | None, text: str) -> Any:
    if table is None:
        return None
    if callable(table):
        return table(text)
    return next((value for key, value in table.items() if key.lower() in text.lower()), None)


def _check_response_format(response_format: Any, keys: tuple[str, ...] = ANSWER_KEYS) -> list[str]:
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return [f"response_format is not of type json_schema: {str(response_format)[:80]}"]
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        return ["response_format.json_schema is not an object"]
    problems = []
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        problems.append("response_format.json_schema.name is not a non-empty string")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        return [*problems, "response_format.json_schema.schema is not an object"]
    if schema.get("type") != "object":
        problems.append('response_format schema "type" is not "object"')
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        problems.append('response_format schema has no "properties" object')
    else:
        missing = [k for k in keys if k not in properties]
        if missing:
            problems.append(f"response_format schema properties miss {missing}")
    required = schema.get("required")
    if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
        problems.append('response_format schema has no "required" list of names')
    elif isinstance(properties, dict) and (unknown := [k for k in required if k not in properties]):
        problems.append(f"response_format schema requires unknown properties {unknown}")
    return problems


@dataclass
class LLMServer:
    model: str = "medgemma-test"
    latency: float = 0.0                          # seconds added before every chat answer
    scenarios: Chooser | None = None              # (scenario request number from 1, body) -> Scenario; None: VALID
    answer: Callable[[dict], dict] | None = None  # builds the valid answer from the request; None: DEFAULT_ANSWER
    accept_response_format: bool = True           # False: 400 when a request has response_format
    healthy: bool = True                          # False: /v1/models and chat answer 503
    hang_seconds: float = 30.0                    # TIMEOUT: how long before answering anyway
    slow_seconds: float = 2.0                     # SLOW: how long before answering
    echo_problems: bool = False                   # also print each problem to stderr (standalone use)
    grades: Mapping[str, dict] | Callable[[str], dict | None] | None = None  # report substring -> grade
    translations: Mapping[str, str] | Callable[[str], str | None] | None = None  # report substring -> English
    critique: dict | None = None                  # the critique answer; None: DEFAULT_CRITIQUE
    requests: list[dict] = field(default_factory=list)   # every chat request body (parsed JSON), in order
    problems: list[str] = field(default_factory=list)    # every well-formedness problem found
    api_keys: list[str] = field(default_factory=list)    # the bearer key of every chat request that had one
    scenario_log: list[Scenario] = field(default_factory=list)  # the scenario each chat request was answered with
    task_log: list[str] = field(default_factory=list)  # the task of each chat request: 'image', 'grade', ...
    models_count: int = 0                         # GET /v1/models requests received
    port: int = field(default=0, init=False)
    base_url: str = field(default="", init=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)
    _inflight: set[tuple[asyncio.Task | None, Any]] = field(default_factory=set, init=False, repr=False)

    @property
    def chat_count(self) -> int:
        """Chat requests received (whatever they were answered with)."""
        return len(self.requests)

    @property
    def running(self) -> bool:
        return self._runner is not None

    # --- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1:port (0: a free port); sets self.port and self.base_url."""
        if self._runner is not None:
            raise RuntimeError(f"already listening on {self.base_url}")
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v1/models", self._tracked(self._models))
        app.router.add_post("/v1/chat/completions", self._tracked(self._chat))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        try:
            site = web.TCPSite(runner, HOST, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        self.base_url = f"http://{HOST}:{self.port}/v1"

    async def stop(self) -> None:
        """Close the listening socket and drop every in-flight request (clients see a connection error)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()  # no new connections from here on
        await self._abort_inflight()
        await runner.cleanup()  # closes idle keep-alive connections; shutdown_timeout bounds any straggler
        await self._abort_inflight()

    async def restart(self) -> None:
        """Start again on the same port (stopping first if running), like a model server coming back."""
        if not self.port:
            raise RuntimeError("restart() needs a server that was started before")
        await self.stop()
        await self.start(self.port)

    async def __aenter__(self) -> LLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _tracked(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request) -> web.StreamResponse:
            entry = (asyncio.current_task(), request.transport)
            self._inflight.add(entry)
            try:
                return await handler(request)
            finally:
                self._inflight.discard(entry)
        return run

    async def _abort_inflight(self) -> None:
        tasks = []
        for task, transport in list(self._inflight):
            if transport is not None:
                transport.abort()
            if task is not None and not task.done():
                task.cancel()
                tasks.append(task)
        self._inflight.clear()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    # --- endpoints -------------------------------------------------------------------------------------------------

    def _unavailable(self) -> web.Response:
        return _error(503, "the model server is unavailable (simulated)", "server_error", "service_unavailable")

    async def _models(self, request: web.Request) -> web.Response:
        self.models_count += 1
        if not self.healthy:
            return self._unavailable()
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "test"}]})

    def _problem(self, n: int, text: str) -> None:
        message = f"request {n}: {text}"
        self.problems.append(message)
        if self.echo_problems:
            print(f"problem: {message}", file=sys.stderr, flush=True)

    async def _chat(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            body, error = {"_unparsed": raw[:1000].decode("utf-8", "replace")}, f"body is not JSON: {exc}"
        else:
            error = None if isinstance(body, dict) else f"body is {type(body).__name__}, not an object"
            if not isinstance(body, dict):
                body = {"_unparsed": body}
        self.requests.append(body)
        self.task_log.append(task_of(body))
        n = len(self.requests)
        if error:
            self._problem(n, error)
        await self._check(n, request, body)

        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if not self.healthy:
            return self._unavailable()
        if "response_format" in body and not self.accept_response_format:
            return _error(400, "response_format is not supported", "invalid_request_error", "unsupported_parameter")

        scenario = Scenario.VALID
        if self.scenarios is not None:
            scenario = Scenario(self.scenarios(len(self.scenario_log) + 1, body))
        self.scenario_log.append(scenario)
        if scenario is Scenario.ERROR_500:
            return _error(500, "the model crashed while generating (simulated)", "server_error", None)
        if scenario is Scenario.BAD_REQUEST:
            return _error(400, "the request is invalid for this model (simulated)", "invalid_request_error",
                          "invalid_value")
        if scenario is Scenario.TIMEOUT:
            await asyncio.sleep(self.hang_seconds)
        elif scenario is Scenario.SLOW:
            await asyncio.sleep(self.slow_seconds)
        return web.json_response(self._completion(n, self._content(scenario, body)))

    def report_answer(self, task: str, body: dict) -> dict:
        """The valid answer to a report task."""
        text = report_text(body)
        if task == "grade":
            grade = _lookup(self.grades, text)
            if grade is None:
                grade = NORMAL_GRADE if any(w in text.lower() for w in NORMAL_WORDS) else ABNORMAL_GRADE
            return dict(grade)
        if task == "translate":
            translation = _lookup(self.translations, text)
            return {"translation": f"English: {text}" if translation is None else translation}
        return json.loads(json.dumps(self.critique or DEFAULT_CRITIQUE))

    def _content(self, scenario: Scenario, body: dict) -> str:
        if scenario is Scenario.GARBAGE:
            return GARBAGE_TEXT
        task = task_of(body)
        if task != "image":
            valid = self.report_answer(task, body)
        else:
            valid = dict(self.answer(body)) if self.answer is not None else dict(DEFAULT_ANSWER)
        if scenario is Scenario.OUT_OF_RANGE:
            if task == "translate":
                return json.dumps({"translation": ""})
            if task == "critique":
                return json.dumps({**valid, "second_pass": {**valid["second_pass"], "conclusions_valid": "perhaps"}})
            return json.dumps({**valid, "severity": 14, "confidence": 250})
        if scenario is Scenario.CODE_FENCE:
            return ("Here is my structured assessment of the radiograph:\n\n```json\n"
                    f"{json.dumps(valid, indent=2)}\n```\n\nPlease confirm with a radiologist.")
        return json.dumps(valid)

    def _completion(self, n: int, content: str) -> dict:
        return {
            "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": dict(USAGE),
        }

    # --- well-formedness -------------------------------------------------------------------------------------------

    async def _check(self, n: int, request: web.Request, body: dict) -> None:
        """Record in self.problems whatever is wrong with chat request n; never rejects."""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:].strip():
            self.api_keys.append(auth[7:].strip())
        else:
            self._problem(n, f"no 'Authorization: Bearer <key>' header (got {auth[:20]!r})")
        if "_unparsed" in body:
            return
        if body.get("model") != self.model:
            self._problem(n, f"model is {body.get('model')!r}, not {self.model!r}")
        if body.get("stream"):
            self._problem(n, "stream is set; this server answers only non-streaming requests")
        task = task_of(body)
        if "response_format" in body:
            for text in _check_response_format(body["response_format"], TASK_KEYS.get(task, ANSWER_KEYS)):
                self._problem(n, text)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            self._problem(n, "messages is not a non-empty list")
            return
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            self._problem(n, "a message is not an object with a string role")
            messages = [m for m in messages if isinstance(m, dict)]
        first = messages[0] if messages else {}
        if first.get("role") != "system":
            self._problem(n, f"first message role is {first.get('role')!r}, not 'system'")
        elif not isinstance(first.get("content"), str) or not first["content"].strip():
            self._problem(n, "system message content is not a non-empty string")
        users = [m for m in messages if m.get("role") == "user"]
        if not users:
            self._problem(n, "no user message")
            return
        if task != "image":
            # A report task is text only: the report in the first user message.
            content = users[0].get("content")
            if not isinstance(content, str) or not content.strip():
                self._problem(n, f"{task} request: the first user message is not a non-empty text")
            elif not report_text(body):
                self._problem(n, f"{task} request: the report text is empty")
            return
        # A request is fine when some user message holds a text part and a PNG; otherwise report the last one.
        found: list[str] = []
        for message in reversed(users):
            problems, url = _check_user_message(message)
            if url is not None:
                png_problem = await asyncio.to_thread(_check_png, url)
                if png_problem:
                    problems.append(png_problem)
            if not problems:
                return
            found = found or problems
        for text in found:
            self._problem(n, text)


# --- standalone ----------------------------------------------------------------------------------------------------

def _parse_weights(text: str) -> dict[str, float]:
    weights = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        weights[name.strip()] = float(value)
    return weights


def _always(scenario: Scenario) -> Chooser:
    def choose(n: int, body: dict) -> Scenario:
        return scenario
    return choose


async def _serve(args: argparse.Namespace) -> None:
    chooser: Chooser | None = None
    if args.ratio:
        chooser = by_ratio(args.seed, **_parse_weights(args.ratio))
    elif args.scenario:
        chooser = _always(Scenario(args.scenario))
    server = LLMServer(model=args.model, latency=args.latency, scenarios=chooser,
                       accept_response_format=not args.no_response_format, slow_seconds=args.slow_seconds,
                       hang_seconds=args.hang_seconds, echo_problems=True)
    await server.start(args.port)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    print(f"listening on {server.base_url}", flush=True)
    try:
        await done.wait()
    finally:
        await server.stop()
        print(f"{server.chat_count} chat requests, {len(server.problems)} problems", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible test model server (loopback only)")
    parser.add_argument("--port", type=int, default=8081, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added before every chat answer")
    parser.add_argument("--model", default="medgemma-test")
    parser.add_argument("--scenario", choices=[s.value for s in Scenario], help="answer every request so")
    parser.add_argument("--ratio", help="random scenarios by weight, e.g. error_500=0.3,garbage=0.2,valid=0.5")
    parser.add_argument("--seed", type=int, default=1, help="seed for --ratio")
    parser.add_argument("--no-response-format", action="store_true", help="answer 400 to response_format")
    parser.add_argument("--slow-seconds", type=float, default=2.0)
    parser.add_argument("--hang-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
