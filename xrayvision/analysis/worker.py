"""The analysis worker: claims queued exams, asks a healthy endpoint, validates the answer, stores it, announces it.
Every path ends an exam `done`, `error` (with its reason) or `ignore`; none is left `processing`."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from collections import deque
from pathlib import Path
from typing import Any

from .. import events, timeutil
from ..config import Settings
from ..privacy import initials
from ..store import Store, queue, verdict
from ..tasks import cancel_and_wait, wait_event
from . import calls, prompts
from .answers import parse_answer
from .endpoints import Endpoint, EndpointPool

logger = logging.getLogger(__name__)

IDLE_POLL = 5.0  # seconds: a safety net for wake-ups; new work normally wakes the worker at once
TIMINGS_KEPT = 200  # latencies kept for the dashboard's average, minimum and maximum


def _read_png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


class Worker:
    def __init__(self, store: Store, pool: EndpointPool, bus: events.EventBus, settings: Settings) -> None:
        self.store = store
        self.pool = pool
        self.bus = bus
        self.settings = settings
        self.processing: dict[str, str] = {}  # uid -> patient initials, for the dashboard
        self.latencies: deque[float] = deque(maxlen=TIMINGS_KEPT)  # seconds
        self._wake = asyncio.Event()
        self._retry_scheduled = asyncio.Event()  # a new retry time may be sooner than the one the reviver waits for
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._unsubscribe = lambda: None

    # --- lifetime ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if await queue.reset_interrupted(self.store):
            logger.info("Exams interrupted in analysis are queued again")
        self._unsubscribe = self.bus.subscribe(self._on_event)
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._run(), name="analysis"),
                       loop.create_task(self._revive_loop(), name="analysis-retry")]

    async def stop(self) -> None:
        self._unsubscribe()
        await cancel_and_wait(*self._loops, *self._tasks)
        # What was in flight goes back to the queue for the next start.
        await queue.reset_interrupted(self.store)

    def wake(self) -> None:
        self._wake.set()

    def _on_event(self, event: events.Event) -> None:
        if event.name in (events.STORED, events.REQUEUE, events.STATE):
            self.wake()

    # --- the queue --------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            endpoint = await self.pool.acquire()
            self._wake.clear()  # before the claim, so work queued after it is not missed
            try:
                claimed = await queue.claim(self.store, self.settings.processing.queue_order)
            except Exception:
                await self.pool.release(endpoint)
                logger.exception("Could not claim an exam")
                await asyncio.sleep(IDLE_POLL)
                continue
            if claimed is None:
                await self.pool.release(endpoint)
                await wait_event(self._wake, IDLE_POLL)
                continue
            task = asyncio.get_running_loop().create_task(self._analyse(claimed, endpoint), name=claimed.uid)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _revive_loop(self) -> None:
        """Exams that failed for a passing reason go back to the queue when their cool-down ends."""
        while True:
            try:
                revived = await queue.revive_due(self.store)
                if revived:
                    logger.info("%d exam(s) queued again after their cool-down", len(revived))
                    self.wake()
                due = await queue.next_retry(self.store)
            except Exception:
                logger.exception("Could not revive failed exams")
                due = None
            wait = IDLE_POLL * 12
            if due is not None:
                wait = min(wait, max(0.05, (timeutil.from_store(due) - timeutil.utc_now()).total_seconds() + 0.01))
            self._retry_scheduled.clear()
            await wait_event(self._retry_scheduled, wait)

    # --- one exam ---------------------------------------------------------------------------------------------
    async def _analyse(self, claimed: queue.Claimed, endpoint: Endpoint) -> None:
        uid = claimed.uid
        holder: list[Endpoint | None] = [endpoint]  # the slot we hold; failover may change it or lose it
        try:
            await self._analyse_exam(claimed, holder)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the outer edge of this task: never leave the exam 'processing'
            logger.exception("Analysis of %s failed unexpectedly", uid)
            await self._fail(claimed, f"internal error: {type(exc).__name__}", transient=True)
        finally:
            self.processing.pop(uid, None)
            if holder[0] is not None:
                await self.pool.release(holder[0])
            self.bus.publish(events.STATE)

    async def _analyse_exam(self, claimed: queue.Claimed, holder: list[Endpoint | None]) -> None:
        uid = claimed.uid
        exam = await queue.context(self.store, uid)
        if exam is None:
            return  # deleted meanwhile
        self.processing[uid] = initials(exam["name"])
        self.bus.publish(events.PROCESSING_START, {"uid": uid, "patient": initials(exam["name"]),
                                                   "region": exam["region"]})
        # Decided when the exam was stored; asked again, since the configuration may have changed since.
        reason = self.settings.regions.not_analysed(exam["region"])
        if reason:
            if await queue.ignore(self.store, uid, reason):
                logger.info("Analysis of %s: ignored (%s)", uid, reason)
                self.bus.publish(events.IGNORE, {"uid": uid, "reason": reason})
            return
        question = calls.Question(messages=await self._messages(exam), parse=parse_answer,
                                  response_format=prompts.RESPONSE_FORMAT, retry_prompt=prompts.RETRY_PROMPT,
                                  subject=f"Analysis of {uid}")
        try:
            answered = await calls.ask_until_valid(self.pool, self.settings.openai, holder, question)
        except calls.Failed as exc:
            await self._fail(claimed, exc.reason, transient=exc.transient)
            return
        response, answer, endpoint, latency = (answered.response, answered.answer, answered.endpoint,
                                               answered.latency)
        usage = response.usage
        stored = await queue.finish(self.store, uid, queue.AIReport(
            text=answer.report, positive=answer.positive, confidence=answer.confidence, severity=answer.severity,
            summary=answer.summary, model=response.model or endpoint.settings.model, endpoint=endpoint.name,
            prompt_version=prompts.PROMPT_VERSION, latency_ms=round(latency * 1000),
            tokens_in=getattr(usage, "prompt_tokens", None), tokens_out=getattr(usage, "completion_tokens", None),
        ))
        if stored:
            self.latencies.append(latency)
            threshold = self.settings.processing.severity_threshold
            logger.info("Analysis of %s: done on %s in %.1f s (%s, severity %d, confidence %d)", uid, endpoint.label,
                        latency, "positive" if answer.severity >= threshold else "negative", answer.severity,
                        answer.confidence)
            reviewed = verdict.radiologist_verdict(exam["verdict"], exam["rad_severity"], threshold) is not None
            self.bus.publish(events.NEW_EXAM, {"uid": uid, "positive": verdict.ai_positive(answer.severity, threshold),
                                               "reviewed": reviewed, "severity": answer.severity})

    async def _messages(self, exam: Any) -> list[dict[str, Any]]:
        settings = self.settings
        prior_rows = await queue.priors(self.store, exam["cnp"], exam["region"], exam["created"], exam["uid"],
                                        settings.processing.prior_days, settings.processing.prior_count)
        earlier_row = await queue.latest_answer(self.store, exam["uid"])
        earlier = None
        if earlier_row is not None:
            # Wrong only when the radiologist's verdict (a manual review outranks the graded report) disagrees.
            threshold = settings.processing.severity_threshold
            judged = None
            truth = verdict.radiologist_verdict(exam["verdict"], exam["rad_severity"], threshold)
            said = verdict.ai_positive(earlier_row["severity"], threshold)
            if truth is not None and said is not None and truth != said:
                judged = "abnormal" if truth else "normal"
            earlier = prompts.EarlierReading(earlier_row["text"], earlier_row["summary"], earlier_row["severity"],
                                             judged)
        text = prompts.user_prompt(
            question=settings.questions.get(exam["region"]),
            region=exam["region"], projection=exam["projection"], age=exam["age"], sex=exam["sex"],
            clinical=exam["justification"],
            priors=[prompts.Prior(r["created"], r["summary"], r["text"], r["severity"]) for r in prior_rows],
            earlier=earlier,
        )
        # Not the render executor: an analysis must not wait behind a radiograph being rendered.
        png = await asyncio.to_thread(_read_png, settings.general.images_dir / exam["image"])
        return prompts.messages(text, png)

    async def _fail(self, claimed: queue.Claimed, reason: str, *, transient: bool) -> None:
        retry_at = None
        if transient and claimed.attempts <= self.settings.processing.max_retry_rounds:
            retry_at = timeutil.utc_now() + dt.timedelta(seconds=self.settings.processing.retry_cooldown)
        if await queue.fail(self.store, claimed.uid, reason, retry_at):
            logger.warning("Analysis of %s: error (%s)%s", claimed.uid, reason,
                           f"; queued again at {timeutil.to_store(retry_at)} UTC" if retry_at else "")
            self.bus.publish(events.ERROR, {"uid": claimed.uid, "reason": reason})
            if retry_at is not None:
                self._retry_scheduled.set()

    # --- for the dashboard ------------------------------------------------------------------------------------
    def timings(self) -> dict[str, float]:
        if not self.latencies:
            return {"avg_latency": 0.0, "min_latency": 0.0, "max_latency": 0.0}
        return {"avg_latency": round(sum(self.latencies) / len(self.latencies), 3),
                "min_latency": round(min(self.latencies), 3), "max_latency": round(max(self.latencies), 3)}

