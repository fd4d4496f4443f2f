"""Requests per minute and client (connections.address_key: an IPv6 address's /64) on /api: one limit for the AI
endpoints, another for the rest."""
from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from aiohttp import web

from ..connections import address_key
from ..keys import SETTINGS
from .clients import client_address
from .errors import TooManyRequests

WINDOW = 60.0  # seconds; WINDOW and MAX_CLIENTS are read by setup_ratelimit, so tests may patch them before
SLOT = 1.0  # seconds of requests counted together, see SlidingWindow
MAX_CLIENTS = 4096  # addresses remembered per limit; beyond that the longest-quiet ones are forgotten
HEAVY_PATHS = ("/api/check", "/api/analyse", "/api/translate")


def now() -> float:
    """The limiter's clock; tests patch this."""
    return time.monotonic()


def is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def is_heavy(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in HEAVY_PATHS)


class _Slot:
    __slots__ = ("index", "last", "count")

    def __init__(self, index: int, last: float) -> None:
        self.index = index  # which SLOT-long stretch of the clock
        self.last = last  # time of its latest request
        self.count = 1


class _Client:
    __slots__ = ("slots", "count")

    def __init__(self) -> None:
        self.slots: deque[_Slot] = deque()  # oldest first
        self.count = 0  # sum of the slots' counts


class SlidingWindow:
    """At most `limit` requests per key in any `window` seconds.

    A sliding window rather than a token bucket, so that "60 per minute" means exactly that: a bucket refilled at
    one a second would let a client burst 60 and then go on at one a second, nearly twice the limit in the first
    minute. Each client's requests are counted in SLOT-second slots (not one timestamp per request), so a client
    costs at most window/SLOT slots whatever the limit; a slot expires with its latest request, which makes the
    limit exact and Retry-After at most one slot on the safe side. Refused requests are not counted, so a client
    that keeps knocking gets in again once its old requests age out.

    Memory: clients are kept in order of their latest allowed request; each hit forgets those at the front whose
    requests have all expired (no timer needed), and if more than `max_clients` are still active the longest-quiet
    ones are forgotten too (they merely get a fresh allowance)."""

    def __init__(self, limit: int, window: float, max_clients: int = MAX_CLIENTS) -> None:
        if limit < 1 or window <= 0 or max_clients < 1:
            raise ValueError("limit, window and max_clients must be positive")
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def hit(self, key: str) -> float:
        """Count a request from `key`: 0 if allowed, else the seconds until one would be (not counted)."""
        t = now()
        horizon = t - self.window  # requests at or before this no longer count
        self._forget_idle(horizon)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = _Client()
        slots = client.slots
        while slots and slots[0].last <= horizon:
            client.count -= slots.popleft().count
        if client.count >= self.limit:
            return slots[0].last - horizon
        index = int(t // SLOT)
        if slots and slots[-1].index == index:
            slots[-1].last = t
            slots[-1].count += 1
        else:
            slots.append(_Slot(index, t))
        client.count += 1
        self._clients.move_to_end(key)
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        return 0.0

    def _forget_idle(self, horizon: float) -> None:
        # The front is the client whose latest allowed request is the oldest: once it is still live, all are.
        clients = self._clients
        while clients:
            first = next(iter(clients.values()))
            if first.slots and first.slots[-1].last > horizon:
                return
            clients.popitem(last=False)


@dataclass(frozen=True)
class RateLimits:
    heavy: SlidingWindow | None  # None: no limit
    normal: SlidingWindow | None

    def for_path(self, path: str) -> SlidingWindow | None:
        return self.heavy if is_heavy(path) else self.normal


RATE_LIMITS = web.AppKey("rate_limits", RateLimits)


def _per(window: float) -> str:
    return "per minute" if window == 60 else f"per {window:g} s"


@web.middleware
async def ratelimit_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    path = request.path
    if not is_api(path):  # pages, /images, /static, /ws
        return await handler(request)
    limiter = request.config_dict[RATE_LIMITS].for_path(path)
    if limiter is not None:
        # Keyed as lockout and the connection cap are: an IPv6 client rotating through its /64 is one client.
        wait = limiter.hit(address_key(client_address(request)))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            scope = "for the AI endpoints" if is_heavy(path) else "on the API"
            raise TooManyRequests(
                f"too many requests: {limiter.limit} {_per(limiter.window)} {scope}; try again in {seconds} s",
                {"Retry-After": str(seconds)},
            )
    return await handler(request)


def setup_ratelimit(app: web.Application) -> None:
    """The limits from [dashboard] RATE_LIMIT and RATE_LIMIT_HEAVY (0 = none) and their middleware.

    Call it before setup_auth: the limiter must run before authentication, so that it also throttles password
    guessing (every failed Basic attempt is one more request) and refuses a flood before any scrypt work."""
    dashboard = app[SETTINGS].dashboard
    app[RATE_LIMITS] = RateLimits(
        heavy=SlidingWindow(dashboard.rate_limit_heavy, WINDOW, MAX_CLIENTS) if dashboard.rate_limit_heavy else None,
        normal=SlidingWindow(dashboard.rate_limit, WINDOW, MAX_CLIENTS) if dashboard.rate_limit else None,
    )
    app.middlewares.append(ratelimit_middleware)
