"""HTTP Basic auth against [users]: plain or scrypt-hashed passwords, compared in constant time."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping

from aiohttp import web

from ..config import User
from ..keys import SETTINGS, USER
from .errors import Unauthorized

REALM = "XRayVision"
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = frozenset({"/favicon.ico"})
# scrypt cost: about 50 ms per check here; results are cached per process, so only the first request pays.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
WELL_KNOWN_PASSWORDS = frozenset({"admin", "administrator", "password", "user", "xrayvision", "changeme", "secret",
                                  "123456", "12345678", "hipocrate", "radiolog", "doctor"})


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def verify_password(stored: str, offered: str) -> bool:
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


def weak_users(users: Mapping[str, User]) -> list[str]:
    """Users whose password is stored in plain text and is a well-known one (or their own name)."""
    return sorted(
        u.name for u in users.values()
        if not u.password.startswith("scrypt$") and u.password.lower() in WELL_KNOWN_PASSWORDS | {u.name.lower()}
    )


class Authenticator:
    def __init__(self, users: Mapping[str, User]) -> None:
        self.users = users
        self._verified: dict[tuple[str, bytes], User] = {}

    def check(self, header: str | None) -> User:
        if not header or not header.startswith("Basic "):
            raise Unauthorized("authentication required", {"WWW-Authenticate": f'Basic realm="{REALM}"'})
        try:
            name, sep, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name, sep, password = "", "", ""
        # configparser lower-cases keys, so user names are case-insensitive.
        user = self.users.get(name.lower()) if sep else None
        key = (name.lower(), hashlib.sha256(password.encode()).digest())
        if user is not None and (self._verified.get(key) is user or verify_password(user.password, password)):
            if len(self._verified) > 1024:
                self._verified.clear()
            self._verified[key] = user
            return user
        raise Unauthorized("invalid credentials", {"WWW-Authenticate": f'Basic realm="{REALM}"'})


@web.middleware
async def auth_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    authenticator: Authenticator = request.app[AUTHENTICATOR]
    request[USER] = authenticator.check(request.headers.get("Authorization"))
    return await handler(request)


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)


def setup_auth(app: web.Application) -> None:
    app[AUTHENTICATOR] = Authenticator(app[SETTINGS].users)
    app.middlewares.append(auth_middleware)
