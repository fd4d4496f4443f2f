"""The fetch loop: every [fhir] FETCH_INTERVAL, the final reports of done exams that have none yet, oldest first,
at most FETCH_BATCH a round. Each exam's tries back off and stop at MAX_ATTEMPTS ('missing'); a server that cannot
answer ends the round and costs no exam a try. A person's POST /api/getrad tries one exam again at once."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import events, timeutil
from ..clinical.cnp import parse_cnp
from ..config import Settings
from ..store import Store, reports
from ..tasks import cancel_and_wait, wait_event
from . import FHIRClient, FHIRError, FoundReport, NotFound, ReportQuery, find_report

logger = logging.getLogger(__name__)

MAX_ASKED = 4  # tries asked for by people (POST /api/getrad) running at once; more wait their turn
MAX_TEXT = 200_000  # characters of a report kept; grading reads the first [openai] REPORT_MAX_CHARS of them
Announce = Callable[[str], Awaitable[None]]  # publishes the radreport event of an exam whose report was stored


@dataclass
class Round:
    tried: int = 0
    found: int = 0
    missing: int = 0  # exams given up on in this round
    stopped: str = ""  # why the round ended early: the server could not answer


def report_query(row: sqlite3.Row, zone: dt.tzinfo | None) -> ReportQuery:
    birthdate = None
    if row["birthdate"]:
        with contextlib.suppress(ValueError):
            birthdate = dt.date.fromisoformat(row["birthdate"])
    return ReportQuery(
        uid=row["uid"], cnp=row["cnp"], cnp_valid=parse_cnp(row["cnp"]) is not None, his_id=row["his_id"] or "",
        name=row["name"] or "", birthdate=birthdate, sex=row["sex"] or "O", created=timeutil.from_store(row["created"]),
        modality=row["modality"] or "", region=row["region"] or "", request_id=row["request"] or "", zone=zone,
    )


def _stored(found: FoundReport) -> reports.Report:
    return reports.Report(
        report_id=found.report_id, request_id=found.request_id, patient_id=found.patient_id, text=found.text[:MAX_TEXT],
        radiologist=found.radiologist, justification=found.justification, issued=found.issued, type=found.type,
        status=found.status,
    )


class ReportFetcher:
    def __init__(self, store: Store, client: FHIRClient, bus: events.EventBus, settings: Settings,
                 announce: Announce, *, periodic: bool) -> None:
        self.store = store
        self.client = client
        self.bus = bus
        self.settings = settings
        self.announce = announce
        self.periodic = periodic  # [processing] ENABLE_HIS: rounds by themselves; /api/getrad works either way
        self.next_round: dt.datetime | None = None
        self.last_round: Round | None = None
        self._wake = asyncio.Event()
        self._busy: set[str] = set()  # exams being tried now, by the round or by a person
        self._task: asyncio.Task[None] | None = None
        self._tries: set[asyncio.Task[None]] = set()
        self._asked = asyncio.Semaphore(MAX_ASKED)

    async def start(self) -> None:
        await self.client.start()
        if self.periodic:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="fhir-fetch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, *self._tries)
        await self.client.stop()

    def status(self) -> dict[str, Any]:
        """For the frames: the client's health, whether rounds run, when the next one is."""
        return {**self.client.status(), "enabled": self.periodic,
                "next_fetch": self.next_round.strftime("%Y-%m-%dT%H:%M:%SZ") if self.next_round else None}

    # --- the rounds ---------------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        interval = self.settings.fhir.fetch_interval
        while True:
            self._wake.clear()  # before the round: a wake-up during it brings the next one forward
            try:
                await self.round()
            except Exception:  # the outer edge of this task: log, and try again next round
                logger.exception("FHIR fetch round failed")
            self.next_round = timeutil.utc_now() + dt.timedelta(seconds=interval)
            self.bus.publish(events.STATE)
            await wait_event(self._wake, interval)

    def wake(self) -> None:
        """Run the next round now (when rounds run by themselves)."""
        self._wake.set()

    async def round(self) -> Round:
        fhir = self.settings.fhir
        was = self.client.status()["reachable"]
        result = Round()
        rows = await reports.due(self.store, lookback_days=fhir.lookback_days, limit=fhir.fetch_batch)
        if not rows:  # nothing to ask: the health shown still comes from an answer of this round
            await self.client.probe()
        for row in rows:
            if row["uid"] in self._busy:
                continue
            outcome = await self._try(row)
            if isinstance(outcome, FHIRError):
                result.stopped = str(outcome)
                break
            result.tried += 1
            if outcome == "found":
                result.found += 1
            elif outcome == "missing":
                result.missing += 1
        self.last_round = result
        if result.tried or result.stopped:
            logger.info("FHIR round: %d exam(s) tried, %d report(s) found, %d given up%s", result.tried,
                        result.found, result.missing, f"; stopped: {result.stopped}" if result.stopped else "")
        if self.client.status()["reachable"] != was:
            self.bus.publish(events.STATE)
        return result

    async def fetch_now(self, uid: str) -> bool:
        """POST /api/getrad: forget the exam's earlier tries and try it at once, in the background.
        False if there is no such exam."""
        if not await reports.restart(self.store, uid):
            return False
        if uid not in self._busy:  # already being tried: that try reads the fresh start
            self._busy.add(uid)  # now, so that neither a second request nor a round tries it meanwhile
            task = asyncio.get_running_loop().create_task(self._try_one(uid), name=f"getrad-{uid}")
            self._tries.add(task)
            task.add_done_callback(self._tries.discard)
        return True

    async def _try_one(self, uid: str) -> None:
        try:
            async with self._asked:
                row = await reports.query(self.store, uid)
                if row is not None:
                    outcome = await self._try(row)
                    if isinstance(outcome, FHIRError):
                        logger.warning("Report for %s asked for, but the FHIR server could not answer: %s", uid,
                                       outcome)
        except Exception:
            logger.exception("Fetching the report of %s failed", uid)
        finally:
            self._busy.discard(uid)
            self.bus.publish(events.STATE)

    async def _try(self, row: sqlite3.Row) -> str | FHIRError:
        """One try for one exam: 'found', 'seeking' (not yet; tried again later), 'missing' (given up), or the
        FHIRError that says the server could not answer (no try counted)."""
        uid = row["uid"]
        fhir = self.settings.fhir
        self._busy.add(uid)
        try:
            query = dataclasses.replace(report_query(row, self.settings.general.timezone),
                                        taken_reports=await reports.taken_elsewhere(self.store, uid))
            try:
                outcome = await find_report(self.client, query, fhir)
            except FHIRError as exc:
                if exc.server_down:
                    return exc
                outcome = NotFound(reason=str(exc))
            except Exception as exc:  # an answer nobody foresaw: this exam's try, so one exam cannot stall every round
                logger.exception("Unexpected answer while looking for the report of %s", uid)
                outcome = NotFound(reason=f"unexpected answer: {type(exc).__name__}")
            if isinstance(outcome, FoundReport):
                if await reports.save_found(self.store, uid, _stored(outcome)):
                    logger.info("Report for %s found (%s)", uid, outcome.status)
                    await self.announce(uid)
                return "found"
            attempts, state = await reports.record_miss(
                self.store, uid, outcome.reason, request_id=outcome.request_id, patient_id=outcome.patient_id,
                max_attempts=fhir.max_attempts, interval=fhir.fetch_interval)
            if state == "missing":
                logger.info("No report for %s after %d tries (%s); POST /api/getrad asks again", uid, attempts,
                            outcome.reason)
            else:
                logger.debug("No report for %s yet (try %d): %s", uid, attempts, outcome.reason)
            return state
        finally:
            self._busy.discard(uid)
