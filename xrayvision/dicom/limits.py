"""What one peer may cost the DICOM port: the PDU sizes we read, the time it has to ask for an association, and how
many connections one calling address may hold. The port is unauthenticated, so each limit is checked before the cost
is paid (no buffer of a declared size before the size is judged, no slot for a host over its share)."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

PDU_HEADER = 6  # type, reserved, 4-byte length
# Any PDU before the association is accepted: an A-ASSOCIATE-RQ proposing every storage class is some tens of KiB.
REQUEST_PDU_CEILING = 1 * MIB
# What we advertise, and enforce, when MAX_PDU is 0: large enough that a PDU costs nothing in calls, small enough
# that a peer cannot make us hold much per association. Peers fragment to it (dcmtk sends 128 KiB PDUs anyway).
DEFAULT_PDU_CEILING = 4 * MIB
# A PDU body longer than this (possible only with a larger MAX_PDU) is read in pieces of this size.
READ_PIECE = 16 * MIB
# A DIMSE command set is a few hundred bytes; this is far past any real one.
COMMAND_CEILING = 64 * KIB
# Room for the PDV item headers: peers differ on whether the maximum length counts them.
PDU_SLACK = 4 * KIB

# DUL states (PS3.8 9.2) in which no association exists yet: idle (pynetdicom may read the first bytes before it
# has processed the connection event), awaiting the A-ASSOCIATE-RQ, or awaiting our answer to it.
REQUEST_STATES = frozenset({"Sta1", "Sta2", "Sta3"})


@dataclass(frozen=True)
class PduLimits:
    max_pdu: int  # what we advertise (never 0: see DEFAULT_PDU_CEILING)
    assoc_timeout: float  # seconds from the connection to a complete A-ASSOCIATE-RQ
    idle_timeout: float | None  # seconds a started PDU may stall once associated

    @classmethod
    def from_config(cls, max_pdu: int, assoc_timeout: float, idle_timeout: float | None) -> PduLimits:
        return cls(max_pdu or DEFAULT_PDU_CEILING, assoc_timeout, idle_timeout)

    def largest(self, requesting: bool) -> int:
        """The longest PDU body (the header's length field) we read, before or once associated."""
        return REQUEST_PDU_CEILING if requesting else self.max_pdu + PDU_SLACK


class ConnectionGuard:
    """Open connections per calling address, so that one host (a scanner gone wrong, or an attacker) cannot take
    every association slot."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def admit(self, host: str) -> bool:
        with self._lock:
            if self._open[host] >= self.per_host:
                return False
            self._open[host] += 1
            return True

    def release(self, host: str) -> None:
        with self._lock:
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]

    def count(self, host: str) -> int:
        with self._lock:
            return self._open[host]


class Throttle:
    """Log a repeated refusal once a minute per (kind, host), saying how many were not logged, so that a flood of
    connections cannot flood the log."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, host: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last, skipped = self._last.get((kind, host), (-self.interval, 0))
            if now - last < self.interval:
                self._last[(kind, host)] = (last, skipped + 1)
                return
            self._last[(kind, host)] = (now, 0)
            if len(self._last) > 10_000:  # forget the quiet ones rather than grow with every address seen
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
        if skipped:
            message += " (%d more like it in the last minute)"
            args = (*args, skipped)
        self.logger.warning(message, *args)
