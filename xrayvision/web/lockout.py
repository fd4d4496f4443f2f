"""Failed logins counted per client address and per user name; too many within a window lock the key for a while.

A locked address gets 429 for every request. A locked user name gets 429 from every address except the ones this
user has recently logged in from: an attacker spreading guesses over many addresses stops getting answers, while
the real user at a familiar workstation keeps working (the idea of the "smart lockout" of the big identity
providers). Nothing here is persisted: a restart forgets locks and familiar addresses alike."""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from ..connections import address_key

MAX_KEYS = 8192  # addresses or user names tracked per table; the longest-quiet are forgotten beyond that
FAMILIAR_TTL = 30 * 86400.0  # seconds an address stays familiar to a user after a successful login
FAMILIAR_PER_USER = 64  # familiar addresses kept per user, the most recent


def now() -> float:
    """The lockout's clock; tests patch this."""
    return time.monotonic()


class _Entry:
    __slots__ = ("failures", "locked_until")

    def __init__(self) -> None:
        self.failures: deque[float] = deque()  # times of the failures still in the window, oldest first
        self.locked_until = 0.0


class FailureTable:
    """At most `limit` failures per key in any `window` seconds; the failure that reaches it locks the key for
    `lockout` seconds (attempts during a lock neither count nor extend it), after which the key starts afresh."""

    def __init__(self, limit: int, window: float, lockout: float, max_keys: int = MAX_KEYS) -> None:
        self.limit = limit
        self.window = window
        self.lockout = lockout
        self.max_keys = max_keys
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def locked(self, key: str) -> float:
        """Seconds left of this key's lock, 0 when it is not locked."""
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        left = entry.locked_until - now()
        return left if left > 0 else 0.0

    def fail(self, key: str) -> bool:
        """Count a failure; True when it starts a lock."""
        t = now()
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
        if entry.locked_until > t:
            return False
        failures = entry.failures
        while failures and failures[0] <= t - self.window:
            failures.popleft()
        failures.append(t)
        if len(failures) < self.limit:
            return False
        failures.clear()
        entry.locked_until = t + self.lockout
        return True


@dataclass(frozen=True)
class Refusal:
    scope: str  # "address" or "user"
    retry_after: float  # seconds


class Lockout:
    def __init__(self, limit: int, window: float, lockout: float, max_keys: int = MAX_KEYS) -> None:
        self.addresses = FailureTable(limit, window, lockout, max_keys)
        self.users = FailureTable(limit, window, lockout, max_keys)
        self._familiar: dict[str, OrderedDict[str, float]] = {}  # user -> address -> last successful login

    def refusal(self, address: str, user: str | None) -> Refusal | None:
        """Why an attempt from `address` (as `user`, when it names one) is refused now, or None."""
        if wait := self.addresses.locked(address_key(address)):
            return Refusal("address", wait)
        if user is not None and (wait := self.users.locked(user)) and not self.familiar(user, address):
            return Refusal("user", wait)
        return None

    def failed(self, address: str, user: str) -> list[str]:
        """Count a failed login; the scopes ("address", "user") whose lock it starts."""
        started = []
        if self.addresses.fail(address_key(address)):
            started.append("address")
        if self.users.fail(user):
            started.append("user")
        return started

    def succeeded(self, address: str, user: str) -> None:
        addresses = self._familiar.setdefault(user, OrderedDict())
        addresses[address] = now()
        addresses.move_to_end(address)
        while len(addresses) > FAMILIAR_PER_USER:
            addresses.popitem(last=False)

    def familiar(self, user: str, address: str) -> bool:
        when = self._familiar.get(user, {}).get(address)
        return when is not None and now() - when < FAMILIAR_TTL
