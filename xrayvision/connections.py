"""Open connections counted per client and in all, for the DICOM port and the HTTP server alike: one host (a
scanner gone wrong, or an attacker) cannot take every slot, and all together cannot take every file descriptor."""
from __future__ import annotations

import ipaddress
import threading
from collections import Counter

HOST = "host"  # why admit() refused: the key holds its share
TOTAL = "total"  # ... or every slot is taken
EXEMPT = ""  # a key not limited per key, only in the total (the HTTP server's trusted proxies)


def address_key(address: str) -> str:
    """Whom an address stands for: an IPv4 address itself, an IPv6 address its /64 (one host or site usually holds
    a whole /64, so counting single addresses would let it rotate through billions)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address


class ConnectionCounter:
    """Open connections per key (an `address_key`), at most `per_key` each and `total` in all (None: no total).
    Thread-safe: the DICOM port counts from pynetdicom's threads, the HTTP server from the event loop."""

    def __init__(self, per_key: int, total: int | None = None) -> None:
        self.per_key = per_key
        self.total = total
        self._open: Counter[str] = Counter()
        self._count = 0
        self._lock = threading.Lock()

    def admit(self, key: str) -> str | None:
        """Count one more connection for `key`: None if admitted, else why not (HOST or TOTAL)."""
        with self._lock:
            if self.total is not None and self._count >= self.total:
                return TOTAL
            if key != EXEMPT and self._open[key] >= self.per_key:
                return HOST
            self._open[key] += 1
            self._count += 1
            return None

    def release(self, key: str) -> None:
        with self._lock:
            if self._open[key] <= 0:
                del self._open[key]
                return  # never admitted (or released twice): nothing to give back
            self._count -= 1
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]

    def held(self, key: str | None = None) -> int:
        """Connections open for `key`, or in all."""
        with self._lock:
            return self._count if key is None else self._open.get(key, 0)
