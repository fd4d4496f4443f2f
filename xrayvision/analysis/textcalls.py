"""Report tasks (grade, translate, critique) through the endpoint pool, with the image worker's policy (calls.py):
health, failover, retries with backoff, and answers validated and asked again with the reason. Every request made is
returned as a Call, usable or not, for the caller to store."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..config import Settings
from . import calls, grading, prompts
from .endpoints import Endpoint, EndpointPool

T = TypeVar("T")
SLOT_WAIT = 30.0  # seconds a tool waits for a free slot on a healthy endpoint (images may hold them all)


@dataclass(frozen=True)
class Call:
    """One request to a model, as the caller stores it."""

    kind: str  # 'grade' | 'translate' | 'critique'
    model: str  # as the response names it (the configured name when there was no response)
    endpoint: str  # the endpoint's name
    prompt_version: str
    latency_ms: int
    raw: str | None  # the answer's text, None when none came
    tokens_in: int | None
    tokens_out: int | None
    error: str | None  # None: a usable answer


class NoModel(Exception):
    """No healthy model endpoint right now. `calls`: what was asked before that (a translation), for storing."""

    def __init__(self, reason: str, calls: list[Call] | None = None) -> None:
        super().__init__(reason)
        self.calls = calls or []


class TaskFailed(Exception):
    """The task got no usable answer (passing failures or invalid answers exhausted, or a refused request)."""

    def __init__(self, reason: str, calls: list[Call], *, transient: bool = True, unreachable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.calls = calls
        self.transient = transient  # False: the endpoint refused the request (a 4xx); asking again will not help
        self.unreachable = unreachable  # True: no model could be reached; False: one answered, but not usably


@dataclass(frozen=True)
class Result(Generic[T]):
    answer: T
    calls: list[Call]


@dataclass(frozen=True)
class Graded:
    grade: grading.Grade
    text_en: str | None  # the translation, when the report was not in English
    calls: list[Call]


@dataclass(frozen=True)
class _Task(Generic[T]):
    kind: str
    system: str
    parse: Callable[[str | None], T]
    response_format: dict[str, Any]


GRADE = _Task("grade", grading.GRADE_PROMPT, grading.parse_grade, grading.GRADE_FORMAT)
TRANSLATE = _Task("translate", grading.TRANSLATION_PROMPT, grading.parse_translation, grading.TRANSLATION_FORMAT)
CRITIQUE = _Task("critique", grading.CRITIQUE_PROMPT, grading.parse_critique, grading.CRITIQUE_FORMAT)


def _call(kind: str, attempt: calls.Attempt) -> Call:
    response = attempt.response
    usage = response.usage if response is not None else None
    return Call(kind=kind, model=(response.model if response is not None else "") or attempt.endpoint.settings.model,
                endpoint=attempt.endpoint.name, prompt_version=grading.GRADING_PROMPT_VERSION,
                latency_ms=round(attempt.latency * 1000), raw=attempt.text,
                tokens_in=getattr(usage, "prompt_tokens", None), tokens_out=getattr(usage, "completion_tokens", None),
                error=attempt.error)


async def _slot(pool: EndpointPool, *, wait: bool) -> Endpoint:
    if wait:
        return await pool.acquire()
    if not any(e.healthy for e in pool.endpoints):
        raise NoModel("no model endpoint is available" if pool.endpoints else "no model endpoint is configured")
    try:
        async with asyncio.timeout(SLOT_WAIT):  # not wait_for, which may lose a slot taken as it times out (3.11)
            return await pool.acquire()
    except TimeoutError:
        raise NoModel("every model endpoint is busy or went down") from None


async def _run(pool: EndpointPool, settings: Settings, task: _Task[T], text: str, *, wait: bool) -> Result[T]:
    holder: list[Endpoint | None] = [await _slot(pool, wait=wait)]
    attempts: list[calls.Attempt] = []
    question = calls.Question(messages=grading.messages(task.system, text), parse=task.parse,
                              response_format=task.response_format, retry_prompt=prompts.RETRY_PROMPT,
                              subject=f"Report {task.kind}")
    try:
        answered = await calls.ask_until_valid(pool, settings.openai, holder, question, attempts)
    except calls.Failed as exc:
        raise TaskFailed(exc.reason, [_call(task.kind, a) for a in attempts], transient=exc.transient,
                         unreachable=exc.unreachable) from None
    finally:
        if holder[0] is not None:
            await pool.release(holder[0])
    return Result(answered.answer, [_call(task.kind, a) for a in attempts])


def _capped(settings: Settings, text: str) -> str:
    return text.strip()[:settings.openai.report_max_chars]


async def translate(pool: EndpointPool, settings: Settings, text: str, *, wait: bool) -> Result[grading.Translation]:
    return await _run(pool, settings, TRANSLATE, _capped(settings, text), wait=wait)


async def critique(pool: EndpointPool, settings: Settings, text: str, *, wait: bool) -> Result[grading.Critique]:
    return await _run(pool, settings, CRITIQUE, _capped(settings, text), wait=wait)


async def grade_report(pool: EndpointPool, settings: Settings, text: str, *, wait: bool) -> Graded:
    """The grade of a report (its first report_max_chars characters), translated to English first when it is not in
    English (grading.is_english: a local check, no call); the English text is graded. wait=False: NoModel at once
    when no endpoint is healthy."""
    text = _capped(settings, text)
    made: list[Call] = []
    text_en = None
    if not grading.is_english(text):
        try:
            translated = await translate(pool, settings, text, wait=wait)
        except TaskFailed as exc:
            raise TaskFailed(f"translation failed: {exc.reason}", exc.calls, transient=exc.transient,
                             unreachable=exc.unreachable) from None
        made += translated.calls
        text_en = translated.answer.translation
    try:
        graded = await _run(pool, settings, GRADE, text_en or text, wait=wait)
    except NoModel as exc:
        raise NoModel(str(exc), made) from None
    except TaskFailed as exc:
        raise TaskFailed(exc.reason, made + exc.calls, transient=exc.transient,
                         unreachable=exc.unreachable) from None
    return Graded(graded.answer, text_en, made + graded.calls)
