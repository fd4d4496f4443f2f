"""What one peer may cost the DICOM port: the PDU sizes we read, the time it has to ask for an association or to send
a PDU, and how many connections one calling address, and all of them, may hold. The port is unauthenticated, so each
limit is checked before the cost is paid (no buffer of a declared size before the size is judged, no slot for a host
over its share)."""
from __future__ import annotations

import contextlib
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..connections import HOST, TOTAL, ConnectionCounter, address_key

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

# Seconds, once associated: a PDU must arrive whole within this of its first byte (a peer trickling a byte at a time
# cannot hold its slot), and an association that sends nothing for this long is aborted (pynetdicom's network
# timeout). Also how long the peer has to read our answers.
PDU_TIMEOUT = 60.0
# Connections in all, asking or associated: each costs two threads and a file descriptor, and the HTTP server's
# MAX_CONNECTIONS (512) plus these stay below the usual limit of 1,024 open files.
CONNECTION_CEILING = 384

# DUL states (PS3.8 9.2) in which no association exists yet: idle (pynetdicom may read the first bytes before it
# has processed the connection event), awaiting the A-ASSOCIATE-RQ, or awaiting our answer to it.
REQUEST_STATES = frozenset({"Sta1", "Sta2", "Sta3"})


@dataclass(frozen=True)
class PduLimits:
    max_pdu: int  # what we advertise (never 0: see DEFAULT_PDU_CEILING)
    assoc_timeout: float  # seconds from the connection to a complete A-ASSOCIATE-RQ
    pdu_timeout: float  # seconds a PDU has, from its first byte, to arrive whole once associated

    @classmethod
    def from_config(cls, max_pdu: int, assoc_timeout: float, pdu_timeout: float = PDU_TIMEOUT) -> PduLimits:
        return cls(max_pdu or DEFAULT_PDU_CEILING, assoc_timeout, pdu_timeout)

    def largest(self, requesting: bool) -> int:
        """The longest PDU body (the header's length field) we read, before or once associated."""
        return REQUEST_PDU_CEILING if requesting else self.max_pdu + PDU_SLACK


class Admission:
    """Who may hold a DICOM connection, in two phases, counted per calling host (connections.address_key):

    - asking: connected, no complete A-ASSOCIATE-RQ yet. At most half of MAX_ASSOCIATIONS in all and
      MAX_ASSOCIATIONS_PER_HOST per host; a connection over its host's share is closed at once. When every asking
      slot is taken, the oldest asking connection of the host holding the most is closed to make room (a real peer
      sends its request within milliseconds, so idle connections from a few addresses cannot keep it out).
    - associated: the request arrived. At most MAX_ASSOCIATIONS in all and MAX_ASSOCIATIONS_PER_HOST per host;
      over either, the request is answered A-ASSOCIATE-RJ (transient, local limit exceeded), so a PACS retries.

    Connections in all (both phases, and those being rejected) stay under CONNECTION_CEILING. Thread-safe."""

    def __init__(self, max_associations: int, per_host: int) -> None:
        asking = max(1, max_associations // 2)
        self.total = min(max_associations + asking, CONNECTION_CEILING)
        self.asking = ConnectionCounter(min(per_host, asking), asking)
        self.associated = ConnectionCounter(min(per_host, max_associations), max_associations)
        self._connections = ConnectionCounter(self.total, self.total)
        self._waiting: dict[str, OrderedDict[socket.socket, None]] = {}  # per host, oldest first
        self._phase: dict[socket.socket, tuple[str, str]] = {}  # connection -> (host key, "asking" | "associated")
        self._lock = threading.Lock()

    def connect(self, conn: socket.socket, host: str) -> str | None:
        """A new connection: None if admitted (asking), else why not (connections.HOST or TOTAL)."""
        key = address_key(host)
        victim = None
        with self._lock:
            if self.asking.held(key) >= self.asking.per_key:
                return HOST  # before any room is made: a host over its share displaces no one
            if self._connections.admit(key):
                return TOTAL
            why = self.asking.admit(key)
            if why == TOTAL and (victim := self._victim(key)) is not None:
                self._forget(victim)
                why = self.asking.admit(key)
            if why:
                self._connections.release(key)
                return why
            self._waiting.setdefault(key, OrderedDict())[conn] = None
            self._phase[conn] = (key, "asking")
        if victim is not None:
            with contextlib.suppress(OSError):
                victim.shutdown(socket.SHUT_RDWR)  # its threads see the connection end and give their slot back
        return None

    def requested(self, conn: socket.socket) -> str | None:
        """The connection's A-ASSOCIATE-RQ arrived: None if it may be associated, else why not."""
        with self._lock:
            entry = self._phase.get(conn)
            if entry is None or entry[1] != "asking":
                return TOTAL  # closed to make room while its request arrived
            key = entry[0]
            self._unwait(conn, key)
            self.asking.release(key)
            why = self.associated.admit(key)
            self._phase[conn] = (key, "associated" if why is None else "rejected")
            return why

    def closed(self, conn: socket.socket) -> None:
        """The connection ended, in whatever phase; safe to call twice."""
        with self._lock:
            entry = self._phase.get(conn)
            if entry is not None:
                self._forget(conn)

    def held(self) -> int:
        return self._connections.held()

    def _victim(self, key: str) -> socket.socket | None:
        """The oldest asking connection of the host holding the most of them, if it holds more than `key`."""
        mine = len(self._waiting.get(key, ()))
        busiest = max(self._waiting, key=lambda k: len(self._waiting[k]), default=None)
        if busiest is None or len(self._waiting[busiest]) <= mine:
            return None
        return next(iter(self._waiting[busiest]))

    def _forget(self, conn: socket.socket) -> None:
        key, phase = self._phase.pop(conn)
        if phase == "asking":
            self._unwait(conn, key)
            self.asking.release(key)
        elif phase == "associated":
            self.associated.release(key)
        self._connections.release(key)

    def _unwait(self, conn: socket.socket, key: str) -> None:
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.pop(conn, None)
            if not waiting:
                del self._waiting[key]
