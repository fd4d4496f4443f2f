"""The pool of OpenAI-compatible endpoints: health probes, a concurrency limit per endpoint, and work routed only to
healthy ones. An endpoint that fails in the middle of a request is marked down at once and probed again."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import openai

from ..config import EndpointSettings
from ..tasks import cancel_and_wait

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0  # seconds for GET /models; a probe never waits as long as an analysis may


@dataclass
class Endpoint:
    settings: EndpointSettings
    client: openai.AsyncOpenAI
    structured: bool  # send response_format; turned off for good if the endpoint refuses it
    healthy: bool = False
    in_flight: int = 0
    last_error: str = ""
    last_change: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.settings.name

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
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._probe_now.wait(), timeout=self.probe_interval)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(e) for e in self.endpoints))

    async def _probe(self, endpoint: Endpoint) -> None:
        try:
            await endpoint.client.models.list(timeout=min(PROBE_TIMEOUT, self.probe_interval * 4 + 1))
        except (TimeoutError, openai.OpenAIError) as exc:
            await self._set_health(endpoint, False, _reason(exc))
        else:
            await self._set_health(endpoint, True, "")

    async def _set_health(self, endpoint: Endpoint, healthy: bool, reason: str) -> None:
        if endpoint.healthy == healthy:
            endpoint.last_error = reason or endpoint.last_error
            return
        endpoint.healthy, endpoint.last_error, endpoint.last_change = healthy, reason, time.monotonic()
        if healthy:
            logger.info("Model endpoint %s (%s) is up", endpoint.name, endpoint.settings.base_url)
        else:
            logger.warning("Model endpoint %s (%s) is down: %s", endpoint.name, endpoint.settings.base_url, reason)
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
        """For the dashboard: the active endpoint's URL and each endpoint's health."""
        active = self.active or next((e for e in self.endpoints if e.healthy), None)
        return {
            "url": f"{active.settings.base_url}/chat/completions" if active else "",
            "health": {e.name: e.healthy for e in self.endpoints},
        }


def _reason(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "cannot connect"
    return type(exc).__name__
