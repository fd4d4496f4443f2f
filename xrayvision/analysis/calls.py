"""One question to the model through the endpoint pool, with the policy every task shares (image findings and report
grading alike): a passing failure (timeout, connection, 5xx, 429) marks the endpoint down and moves to a healthy one
after a jittered backoff, at most `max_attempts` times; a 4xx other than 429 is final; an answer that does not
validate is asked for again, `answer_retries` times, with the reason told to the model."""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import openai
from openai.types.chat import ChatCompletion

from ..config import OpenAISettings
from .answers import InvalidAnswer
from .endpoints import Endpoint, EndpointPool

logger = logging.getLogger(__name__)

TRANSIENT = (openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError)
T = TypeVar("T")


class Transient(Exception):
    """A failure that another try, or another endpoint, may not have."""


class Permanent(Exception):
    """A failure that will not change by asking again (a 4xx other than 429)."""


class Failed(Exception):
    """The question got no usable answer; `reason` says why in an operator's words (no patient data). `transient`:
    asking later may help; `unreachable`: no model could be reached (else one answered, but not usably)."""

    def __init__(self, reason: str, *, transient: bool, unreachable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.unreachable = unreachable


@dataclass(frozen=True)
class Attempt:
    """One request as it went: which endpoint, how long, what came back, and why it was not usable (None: it was)."""

    endpoint: Endpoint
    latency: float  # seconds
    response: ChatCompletion | None
    error: str | None

    @property
    def text(self) -> str | None:
        response = self.response
        return response.choices[0].message.content if response is not None and response.choices else None


@dataclass(frozen=True)
class Answered(Generic[T]):
    response: ChatCompletion
    answer: T
    endpoint: Endpoint  # the endpoint that gave it (the slot the caller still holds)
    latency: float  # seconds, of the request that gave it


@dataclass(frozen=True)
class Question(Generic[T]):
    """What to ask and how to read the answer."""

    messages: list[dict[str, Any]]
    parse: Callable[[str | None], T]  # raises InvalidAnswer with the reason the model is told
    response_format: dict[str, Any]  # sent to endpoints that take JSON-schema answers
    retry_prompt: str  # with {reason}
    subject: str  # for the log, e.g. "Analysis of <uid>"; never patient data


def message(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        text = body.get("message") or (body.get("error") or {}).get("message") if body else None
        return str(text or exc.message)[:200]
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "cannot connect"
    return str(exc)[:200]


async def ask(pool: EndpointPool, settings: OpenAISettings, endpoint: Endpoint, messages: list[dict[str, Any]],
              response_format: dict[str, Any]) -> ChatCompletion:
    """One request; Transient or Permanent on failure (a passing failure marks the endpoint down)."""
    extra: dict[str, Any] = {}
    if endpoint.structured:
        extra["response_format"] = response_format
    try:
        # The client's plain POST (its documented way to send a body as it is): the same auth, timeout and
        # errors as chat.completions.create, without re-walking a multi-megabyte message to transform it.
        return await endpoint.client.post("/chat/completions", cast_to=ChatCompletion, body={
            "model": endpoint.settings.model, "messages": messages, "temperature": settings.temperature,
            "max_tokens": settings.max_tokens, **extra})
    except openai.BadRequestError as exc:
        if endpoint.structured and "response_format" in str(exc):
            # This server cannot do JSON-schema answers: plain instructions from now on, and ask again at once.
            logger.info("Endpoint %s refuses response_format; using plain instructions", endpoint.label)
            endpoint.structured = False
            return await ask(pool, settings, endpoint, messages, response_format)
        raise Permanent(f"HTTP {exc.status_code}: {message(exc)}") from exc
    except TRANSIENT as exc:
        if not isinstance(exc, openai.RateLimitError):
            await pool.mark_down(endpoint, message(exc))
        raise Transient(message(exc)) from exc
    except openai.APIStatusError as exc:
        raise Permanent(f"HTTP {exc.status_code}: {message(exc)}") from exc


async def failover(pool: EndpointPool, settings: OpenAISettings, holder: list[Endpoint | None],
                   failures: int) -> bool:
    """Back off, then take a slot on a healthy endpoint, preferring another one. False if none came in time."""
    delay = min(settings.backoff_max, settings.backoff_base * 2 ** (failures - 1))
    await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter, so that retries do not arrive together
    old = holder[0]
    holder[0] = None
    if old is not None:
        await pool.release(old)
    try:
        async with asyncio.timeout(max(delay, pool.probe_interval * 2, 1.0)):  # not wait_for: see tasks.wait_event
            holder[0] = await pool.acquire(avoid=old)
    except TimeoutError:
        return False
    return True


async def ask_until_valid(pool: EndpointPool, settings: OpenAISettings, holder: list[Endpoint | None],
                          question: Question[T], attempts: list[Attempt] | None = None) -> Answered[T]:
    """Ask on the endpoint in holder[0] (a slot the caller took and releases; failover may change or lose it) until
    an answer validates; Failed when the policy gives up. Every request is appended to `attempts` when given."""
    messages = question.messages
    answer_problems = 0
    transient = 0
    log = attempts if attempts is not None else []
    while True:
        endpoint = holder[0]
        assert endpoint is not None
        started = time.perf_counter()
        try:
            response = await ask(pool, settings, endpoint, messages, question.response_format)
        except Permanent as exc:
            log.append(Attempt(endpoint, time.perf_counter() - started, None, str(exc)))
            raise Failed(f"model endpoint refused the request: {exc}", transient=False) from None
        except Transient as exc:
            log.append(Attempt(endpoint, time.perf_counter() - started, None, str(exc)))
            transient += 1
            logger.warning("%s on %s failed (%d/%d): %s", question.subject, endpoint.label, transient,
                           settings.max_attempts, exc)
            if transient >= settings.max_attempts:
                raise Failed(f"model unavailable after {transient} tries: {exc}", transient=True,
                             unreachable=True) from None
            if not await failover(pool, settings, holder, transient):
                raise Failed(f"no model endpoint available: {exc}", transient=True, unreachable=True) from None
            continue
        latency = time.perf_counter() - started
        text = response.choices[0].message.content if response.choices else None
        try:
            answer = question.parse(text)
        except InvalidAnswer as exc:
            log.append(Attempt(endpoint, latency, response, f"invalid answer: {exc}"))
            answer_problems += 1
            logger.warning("%s: invalid answer from %s (%d/%d): %s", question.subject, endpoint.label,
                           answer_problems, settings.answer_retries + 1, exc)
            if answer_problems > settings.answer_retries:
                raise Failed(f"invalid answer from the model: {exc}", transient=True) from None
            messages = [*messages, {"role": "assistant", "content": text or ""},
                        {"role": "user", "content": question.retry_prompt.format(reason=exc)}]
            continue
        log.append(Attempt(endpoint, latency, response, None))
        return Answered(response, answer, endpoint, latency)
