"""A repeated log line at most once per interval and key, with a count of the ones left out, so that a flood of
failures (bad requests, refused connections, locked logins) cannot grow the log with one line each."""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

INTERVAL = 60.0  # seconds
MAX_KEYS = 1024  # keys remembered; beyond that the oldest are forgotten (they merely log again)


def now() -> float:
    """The throttle's clock; tests patch this."""
    return time.monotonic()


class LogThrottle:
    """Thread-safe (the DICOM port logs from pynetdicom's threads); remembers at most `max_keys` keys."""

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL, max_keys: int = MAX_KEYS) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._seen: OrderedDict[str, list[float | int]] = OrderedDict()  # key -> [time logged, left out since]
        self._lock = threading.Lock()

    def log(self, key: str, level: int, message: str, *args: object) -> bool:
        """Log `message` unless a line with this key was logged less than `interval` ago; True if logged."""
        t = now()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and t - seen[0] < self.interval:
                seen[1] += 1
                return False
            if seen is not None and seen[1]:
                message += " (%d more like this in the last %d s)"
                args = (*args, seen[1], round(t - seen[0]))
            self._seen[key] = [t, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
        self.logger.log(level, message, *args)  # outside the lock: a slow handler does not serialise the callers
        return True
