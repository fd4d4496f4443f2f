"""The grading loop: each fetched radiologist's report is graded by a model (pathologic or not, severity, a short
diagnosis; translated first when not in English), through the same endpoint pool as the images. The grade goes
beside the report, never over the AI's own answer; every call is stored. Grading that gives up leaves the report
ungraded (so the exam is not reviewed by it) until POST /api/getrad asks again."""
from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable

from .. import events, timeutil
from ..config import Settings
from ..store import Store, reports
from ..tasks import cancel_and_wait, wait_event
from .endpoints import EndpointPool
from .textcalls import Call, TaskFailed, grade_report

logger = logging.getLogger(__name__)

IDLE_POLL = 60.0  # seconds: a safety net; a stored report wakes the grader at once
Announce = Callable[[str], Awaitable[None]]  # publishes the radcheck event of a graded exam


def _record(call: Call) -> reports.CallRecord:
    return reports.CallRecord(kind=call.kind, model=call.model, endpoint=call.endpoint,
                              prompt_version=call.prompt_version, latency_ms=call.latency_ms, raw=call.raw,
                              tokens_in=call.tokens_in, tokens_out=call.tokens_out, error=call.error)


class Grader:
    def __init__(self, store: Store, pool: EndpointPool, bus: events.EventBus, settings: Settings,
                 announce: Announce) -> None:
        self.store = store
        self.pool = pool
        self.bus = bus
        self.settings = settings
        self.announce = announce
        self._wake = asyncio.Event()
        self._grading: dict[str, asyncio.Task[None]] = {}
        self._resting: dict[str, dt.datetime] = {}  # reports no model could be reached for, and until when they wait
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] = lambda: None

    async def start(self) -> None:
        if not self.pool.endpoints:  # nothing could grade; fetched reports wait, ungraded, for a configured model
            logger.warning("No model endpoint configured: radiologists' reports are kept but not graded")
            return
        self._unsubscribe = self.bus.subscribe(self._on_event)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="grading")

    async def stop(self) -> None:
        self._unsubscribe()
        await cancel_and_wait(self._task, *self._grading.values())

    def _on_event(self, event: events.Event) -> None:
        if event.name in (events.RADREPORT, events.STATE):
            self._wake.set()

    @property
    def limit(self) -> int:
        """Reports graded at once: half of what the endpoints take (at least one), so a backlog of reports never
        holds every slot while radiographs wait for triage."""
        return max(1, self.pool.total_concurrency // 2)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            free = self.limit - len(self._grading)
            now = timeutil.utc_now()
            self._resting = {uid: until for uid, until in self._resting.items() if until > now}
            if free > 0:
                try:
                    rows = await reports.ungraded(self.store, free, exclude=(*self._grading, *self._resting))
                except Exception:
                    logger.exception("Could not read the reports waiting for grading")
                    rows = []
                for row in rows:
                    task = asyncio.get_running_loop().create_task(self._grade(row["uid"], row["text"]),
                                                                  name=f"grade-{row['uid']}")
                    self._grading[row["uid"]] = task
                    task.add_done_callback(functools.partial(self._done, row["uid"]))
            await wait_event(self._wake, IDLE_POLL)

    def _done(self, uid: str, _task: asyncio.Task[None]) -> None:
        self._grading.pop(uid, None)
        self._wake.set()

    async def _grade(self, uid: str, text: str) -> None:
        try:
            graded = await grade_report(self.pool, self.settings, text, wait=True)
        except asyncio.CancelledError:
            raise
        except TaskFailed as exc:
            if exc.unreachable:  # no model answered: the report waits, ungraded, and is tried again after a rest
                wait = self.settings.processing.retry_cooldown
                logger.warning("Grading the report of %s: no model could be reached (%s); trying again in %d s", uid,
                               exc.reason, wait)
                self._resting[uid] = timeutil.utc_now() + dt.timedelta(seconds=wait)
                await reports.add_calls(self.store, uid, [_record(c) for c in exc.calls])
                return
            logger.warning("Grading the report of %s failed: %s", uid, exc.reason)
            await reports.save_grade_failure(self.store, uid, text, exc.reason, [_record(c) for c in exc.calls])
            self.bus.publish(events.STATE)
            return
        except Exception as exc:  # the outer edge of this task: never leave a report claimed for ever
            logger.exception("Grading the report of %s failed unexpectedly", uid)
            await reports.save_grade_failure(self.store, uid, text, f"internal error: {type(exc).__name__}", [])
            self.bus.publish(events.STATE)
            return
        grade = graded.grade
        used = next((c for c in reversed(graded.calls) if c.kind == "grade" and c.error is None), None)
        record = reports.GradeRecord(
            positive=1 if grade.pathologic == "yes" else 0, severity=grade.severity, summary=grade.summary,
            text_en=graded.text_en, model=used.model if used else "", endpoint=used.endpoint if used else "",
            prompt_version=used.prompt_version if used else "", latency_ms=used.latency_ms if used else -1)
        if await reports.save_grade(self.store, uid, text, record, [_record(c) for c in graded.calls]):
            logger.info("Report of %s graded: %s, severity %d", uid,
                        "pathologic" if record.positive else "not pathologic", record.severity)
            await self.announce(uid)
