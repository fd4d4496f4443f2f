"""The in-process event bus: a state change is committed first, then published here; the WebSocket hub, the
notifiers and the analysis worker subscribe. Events carry increasing ids and the latest are kept for replay."""
from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

logger = logging.getLogger(__name__)

# Event names: the seed's WebSocket table, plus the ones of our own.
PROCESSING_START: Final = "processing_start"
NEW_EXAM: Final = "new_exam"
ERROR: Final = "error"
IGNORE: Final = "ignore"
REQUEUE: Final = "requeue"
RADREVIEW: Final = "radreview"
RADREPORT: Final = "radreport"
RADCHECK: Final = "radcheck"
STORED: Final = "stored"  # a received exam is visible: rendered, or stored as one that is never analysed
STATE: Final = "state"  # something the dashboard shows changed (queue size, endpoint health); no payload needed

# Every kind the bus carries; each has its redaction for the `user` role in web/live.py.
KINDS: Final = (PROCESSING_START, NEW_EXAM, ERROR, IGNORE, REQUEUE, RADREVIEW, RADREPORT, RADCHECK, STORED, STATE)

HISTORY: Final = 1000


@dataclass(frozen=True)
class Event:
    id: int
    name: str
    payload: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0


Subscriber = Callable[[Event], None]


class EventBus:
    """Publishing is synchronous and never waits on a subscriber: subscribers only enqueue or set flags."""

    def __init__(self, history: int = HISTORY) -> None:
        self._ids = itertools.count(1)
        self._subscribers: list[Subscriber] = []
        self._history: collections.deque[Event] = collections.deque(maxlen=history)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber) if subscriber in self._subscribers else None

    def publish(self, name: str, payload: dict[str, Any] | None = None) -> Event:
        event = Event(next(self._ids), name, payload or {}, time.time())
        self._history.append(event)
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:  # one broken subscriber must not stop the others or the publisher
                logger.exception("Event subscriber failed on %s", name)
        return event

    def since(self, last_id: int) -> list[Event]:
        """Events after `last_id` still held, oldest first (for a client that reconnects)."""
        return [e for e in self._history if e.id > last_id]

    @property
    def last_id(self) -> int:
        return self._history[-1].id if self._history else 0
