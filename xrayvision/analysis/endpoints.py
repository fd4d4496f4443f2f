"""The pool of OpenAI-compatible endpoints: health probes, a concurrency limit per endpoint, and work routed only to
healthy ones. An endpoint that fails in the middle of a request is marked down at once and probed again. Each
endpoint's URL is logged at start, and its state after the first probe and on every change, with the reason."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import openai

from ..config import EndpointSettings
from ..privacy import loggable_url
from ..tasks import cancel_and_wait, wait_event
from ..timeutil import utc_now

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0  # seconds for GET /models; a probe never waits as long as an analysis may


@dataclass
class Endpoint:
    settings: EndpointSettings
    client: openai.AsyncOpenAI
    structured: bool  # send response_format; turned off for good if the endpoint refuses it
    healthy: bool = False
    in_flight: int = 0
    last_error: str = ""  # the latest failure's reason while unhealthy, else ""
    since: dt.datetime | None = None  # when the state last changed; None until the first probe answered
    served: tuple[str, ...] = ()  # the model names its latest successful probe listed

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def label(self) -> str:
        """The name people see, in the log as on the dashboard's badge."""
        return self.settings.label

    @property
    def chat_url(self) -> str:
        return f"{self.settings.base_url}/chat/completions"

    @property
    def free(self) -> bool:
        return self.healthy and self.in_flight < self.settings.concurrency


class EndpointPool:
    def __init__(self, endpoints: Iterable[EndpointSettings], *, timeout: float, probe_interval: float,
                 structured: bool, on_change: Callable[[], None] = lambda: None) -> None:
        self.endpoints = [
            Endpoint(
                settings=e,
                # Retries are ours (backoff, another endpoint), so the client's own are off.
                client=openai.AsyncOpenAI(base_url=e.base_url, api_key=e.api_key or "none", timeout=timeout,
                                          max_retries=0),
                structured=structured,
            )
            for e in endpoints
        ]
        self.probe_interval = probe_interval
        self.on_change = on_change
        self._changed = asyncio.Condition()
        self._probe_now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.active: Endpoint | None = None  # the endpoint that took the latest request

    @property
    def total_concurrency(self) -> int:
        return sum(e.settings.concurrency for e in self.endpoints)

    async def start(self) -> None:
        if not self.endpoints:
            logger.warning("No model endpoint configured ([openai] OPENAI_URL_PRIMARY is empty): exams stay queued")
        for e in self.endpoints:
            logger.info("Model endpoint %s ([openai] %s): %s, model %s, %d at once; checking it", e.label,
                        e.settings.key, loggable_url(e.chat_url), e.settings.model, e.settings.concurrency)
        # The first probe runs in the task: a model server that does not answer must not delay the start.
        self._task = asyncio.get_running_loop().create_task(self._probe_loop(), name="llm-probe")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for endpoint in self.endpoints:
            await endpoint.client.close()

    async def _probe_loop(self) -> None:
        while True:
            self._probe_now.clear()
            await self.probe_all()
            await wait_event(self._probe_now, self.probe_interval)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(e) for e in self.endpoints))

    async def _probe(self, endpoint: Endpoint) -> None:
        try:
            page = await endpoint.client.models.list(timeout=min(PROBE_TIMEOUT, self.probe_interval * 4 + 1))
        except (TimeoutError, openai.OpenAIError) as exc:
            await self._set_health(endpoint, False, _reason(exc))
        else:
            endpoint.served = tuple(str(getattr(m, "id", "")) for m in getattr(page, "data", None) or ())
            await self._set_health(endpoint, True, "")

    async def _set_health(self, endpoint: Endpoint, healthy: bool, reason: str) -> None:
        first = endpoint.since is None  # endpoints start unhealthy: the first failure is news too
        url = loggable_url(endpoint.chat_url)
        if not first and endpoint.healthy == healthy:
            if not healthy and reason and reason != endpoint.last_error:
                endpoint.last_error = reason
                logger.warning("Model endpoint %s (%s) is still down, now: %s", endpoint.label, url, reason)
                self.on_change()
            return
        endpoint.healthy, endpoint.last_error, endpoint.since = healthy, "" if healthy else reason, utc_now()
        if healthy:
            served = ", ".join(endpoint.served[:5]) or "no model named"
            logger.info("Model endpoint %s (%s) is up, serving %s", endpoint.label, url, served)
            if endpoint.served and endpoint.settings.model not in endpoint.served:
                # Ollama and vLLM refuse a model they do not serve (an exam error for each); llama.cpp's server
                # answers with whatever it has loaded.
                logger.warning("Model endpoint %s serves %s, not the configured model %s ([openai] MODEL_NAME)",
                               endpoint.label, served, endpoint.settings.model)
        else:
            logger.warning("Model endpoint %s (%s) is down: %s; exams wait in the queue until an endpoint answers",
                           endpoint.label, url, reason)
        async with self._changed:
            self._changed.notify_all()
        self.on_change()

    async def mark_down(self, endpoint: Endpoint, reason: str) -> None:
        """A request failed in a way that says the server is unwell: stop routing to it and probe it at once."""
        await self._set_health(endpoint, False, reason)
        self._probe_now.set()

    def _pick(self, avoid: Endpoint | None) -> Endpoint | None:
        free = [e for e in self.endpoints if e.free]
        if avoid is not None and any(e is not avoid for e in free):
            free = [e for e in free if e is not avoid]
        # The least busy, relative to what it can take; ties go to the configured order (primary first).
        return min(free, key=lambda e: e.in_flight / e.settings.concurrency, default=None)

    async def acquire(self, avoid: Endpoint | None = None) -> Endpoint:
        """Wait for a healthy endpoint with a free slot and take the slot (prefer another than `avoid`)."""
        async with self._changed:
            while (endpoint := self._pick(avoid)) is None:
                await self._changed.wait()
            endpoint.in_flight += 1
            self.active = endpoint
            return endpoint

    async def release(self, endpoint: Endpoint) -> None:
        async with self._changed:
            endpoint.in_flight -= 1
            self._changed.notify_all()

    def status(self) -> dict[str, Any]:
        """For the dashboard: the active endpoint's URL, each endpoint's health by name (the API contract), and
        each endpoint's label (the log's word for it), URL, state, last error while unhealthy and since when.
        URLs go out without their password, as in the log: admins' frames and the API must not carry one."""
        active = self.active or next((e for e in self.endpoints if e.healthy), None)
        return {
            "url": loggable_url(active.chat_url) if active else "",
            "health": {e.name: e.healthy for e in self.endpoints},
            "endpoints": [
                {"name": e.name, "label": e.label, "url": loggable_url(e.chat_url), "healthy": e.healthy,
                 "error": (e.last_error or None) if not e.healthy else None,
                 "since": e.since.strftime("%Y-%m-%dT%H:%M:%SZ") if e.since else None}
                for e in self.endpoints
            ],
        }


def _reason(exc: BaseException) -> str:
    """Why a probe failed, in words an operator can act on."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("message") or (body.get("error") or {}).get("message") if body else None
        return f"HTTP {exc.status_code} on GET /models" + (f": {str(detail)[:200]}" if detail else "")
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        # The root cause says which: refused (nothing listens there), name not known, unreachable network...
        root: BaseException = exc
        while (nxt := root.__cause__ or root.__context__) is not None:
            root = nxt
        if isinstance(root, OSError) and root.errno:
            # A positive errno has the system's words; getaddrinfo's negative ones carry their own.
            text = os.strerror(root.errno) if root.errno > 0 else str(root.strerror)
            return f"cannot connect: {text.lower()}"
        return "cannot connect" + (f": {root}"[:200] if root is not exc and str(root) else "")
    return type(exc).__name__
