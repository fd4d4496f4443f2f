"""HTTP Basic auth against [users]: plain or scrypt-hashed passwords, checked in a worker thread with the same
scrypt work whoever is named, and failed logins locked out per client address and per user name (web.lockout)."""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict
from collections.abc import Mapping

from aiohttp import web

from ..config import User
from ..connections import address_key
from ..keys import SETTINGS, USER
from ..logthrottle import LogThrottle
from .clients import client_address
from .errors import ServiceUnavailable, TooManyRequests, Unauthorized
from .lockout import Lockout

logger = logging.getLogger(__name__)

REALM = "XRayVision"
CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}"'}
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = frozenset({"/favicon.ico"})
# scrypt cost: about 50 ms per check here; verified credentials are cached per process, so only the first request
# of a browser pays.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# Checks running at once (the machine's cores; each is CPU-bound and holds 16 MB), and waiting at most.
VERIFY_CONCURRENCY = 2
VERIFY_QUEUE = 32
CACHE_SIZE = 1024  # verified credentials remembered, the least recently used forgotten first
WELL_KNOWN_PASSWORDS = frozenset({"admin", "administrator", "password", "user", "xrayvision", "changeme", "secret",
                                  "123456", "12345678", "hipocrate", "radiolog", "doctor"})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


# What unknown users (and users with a plain-text password) are checked against, so that a wrong password costs
# the same time whether or not the user exists. Random, so that no password matches it.
DUMMY_HASH = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(secrets.token_bytes(16))}${_b64(secrets.token_bytes(32))}"


def verify_password(stored: str, offered: str) -> bool:
    """Blocking (scrypt): call it from a worker thread."""
    if stored.startswith("scrypt$"):
        try:
            _, n, r, p, salt, digest = stored.split("$")
            expected = base64.b64decode(digest)
            got = hashlib.scrypt(offered.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                 dklen=len(expected))
        except (ValueError, binascii.Error):
            return False
        return hmac.compare_digest(got, expected)
    return hmac.compare_digest(stored.encode(), offered.encode())


def check_password(user: User | None, offered: str) -> bool:
    """One scrypt for every check: the user's own hash, or the dummy one for unknown and plain-text users."""
    if user is not None and user.password.startswith("scrypt$"):
        return verify_password(user.password, offered)
    verify_password(DUMMY_HASH, offered)
    return user is not None and verify_password(user.password, offered)


def weak_users(users: Mapping[str, User]) -> list[str]:
    """Users whose password is stored in plain text and is a well-known one (or their own name)."""
    return sorted(
        u.name for u in users.values()
        if not u.password.startswith("scrypt$") and u.password.lower() in WELL_KNOWN_PASSWORDS | {u.name.lower()}
    )


def parse_basic(header: str) -> tuple[str, str] | None:
    """(name, password) from an Authorization header of the Basic scheme (any case, RFC 9110), else None."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    return (name, password) if sep else (name, "")


class Authenticator:
    def __init__(self, users: Mapping[str, User], lockout: Lockout) -> None:
        self.users = users
        self.lockout = lockout
        # Verified credentials by an HMAC under a secret of this process: the table never holds anything a
        # password could be guessed from offline.
        self._secret = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, User] = OrderedDict()
        self._slots = asyncio.Semaphore(VERIFY_CONCURRENCY)
        self._waiting = 0
        self._quiet = LogThrottle(logger)

    @property
    def waiting(self) -> int:
        """Password checks running or queued."""
        return self._waiting

    def cache_key(self, name: str, password: str) -> bytes:
        message = f"{len(name)}:{name}:{password}".encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    async def authenticate(self, request: web.Request) -> User:
        address = client_address(request)
        header = request.headers.get("Authorization")
        credentials = parse_basic(header) if header else None
        # configparser lower-cases keys, so user names are case-insensitive.
        name = credentials[0].lower() if credentials else None
        if refusal := self.lockout.refusal(address, name):
            seconds = max(1, round(refusal.retry_after))
            whom = f"from {address}" if refusal.scope == "address" else f"as user {name!r}"
            # One line a minute per lock, whatever the attempts (and the names tried at a locked address).
            subject = address_key(address) if refusal.scope == "address" else name
            self._quiet.log(f"locked {refusal.scope} {subject}", logging.WARNING,
                            "Refused a login attempt %s: locked for another %d s", whom, seconds)
            what = "this address" if refusal.scope == "address" else "this user"
            raise TooManyRequests(f"too many failed logins for {what}; try again in {seconds} s",
                                  {"Retry-After": str(seconds)})
        if credentials is None:
            raise Unauthorized("authentication required", CHALLENGE)
        password = credentials[1]
        user = self.users.get(name)
        key = self.cache_key(name, password)
        if user is not None and self._verified.get(key) is user:
            self._verified.move_to_end(key)
            self.lockout.succeeded(address, name)  # the same browser may now come from another address
            return user
        if await self._check(user, password):
            self._verified[key] = user
            while len(self._verified) > CACHE_SIZE:
                self._verified.popitem(last=False)
            self.lockout.succeeded(address, name)
            return user
        shown = name[:64]  # the name is the client's text; the password is never logged
        logger.warning("Failed login from %s as %r", address, shown)
        for scope in self.lockout.failed(address, name):
            whom = f"address {address}" if scope == "address" else f"user {shown!r}"
            logger.warning("Login locked for %s for %d s: %d failed logins within %d s", whom,
                           self.lockout.addresses.lockout, self.lockout.addresses.limit, self.lockout.addresses.window)
        raise Unauthorized("invalid credentials", CHALLENGE)

    async def _check(self, user: User | None, password: str) -> bool:
        """check_password in a worker thread, a bounded number at once: the loop never runs scrypt."""
        if self._waiting >= VERIFY_QUEUE:
            raise ServiceUnavailable("too many logins at once; try again in a moment", {"Retry-After": "1"})
        self._waiting += 1
        try:
            async with self._slots:
                return await asyncio.to_thread(check_password, user, password)
        finally:
            self._waiting -= 1


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)


@web.middleware
async def auth_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    request[USER] = await request.app[AUTHENTICATOR].authenticate(request)
    return await handler(request)


def setup_auth(app: web.Application) -> None:
    dashboard = app[SETTINGS].dashboard
    lockout = Lockout(dashboard.login_failures, dashboard.login_window, dashboard.login_lockout)
    app[AUTHENTICATOR] = Authenticator(app[SETTINGS].users, lockout)
    app.middlewares.append(auth_middleware)
