"""The HTTP server around the app: aiohttp's AppRunner with our limits on each connection.

- Request line and headers: the long-line limit (long filter URLs are legitimate) and a header timeout, handed to
  aiohttp's connection handler the supported way (AppRunner keyword arguments; `run_app(handler_args=...)` is
  refused by aiohttp 3.14, which then drops every setting). aiohttp's keep-alive timer is what closes a connection
  that has not completed its request headers (it runs from the connection's start and after each answer), so
  HEADER_TIMEOUT is that timer: a slow or silent client is closed after it, an idle kept-alive one too.
- Open connections capped per client address (trusted proxies exempt: they carry everyone's) and in all, below
  the process's limit of open files, so that DICOM and the store never run out of descriptors.
- Errors of the HTTP parser (over-long line, unknown method, garbage) answered as our JSON error, without echoing
  the request, and logged once a minute rather than once each with a traceback.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from ..config import DashboardSettings
from ..connections import EXEMPT, HOST, TOTAL, ConnectionCounter, address_key
from ..logthrottle import LogThrottle
from .clients import Network, is_trusted, parse_address
from .errors import error_body, error_response

logger = logging.getLogger(__name__)
_quiet = LogThrottle(logger)

MAX_LINE_SIZE = 32768  # request line: eleven 200-character filters fit; aiohttp's default is 8 KiB
MAX_FIELD_SIZE = 8190  # one header line, aiohttp's default
RETRY_AFTER_CONNECTIONS = 5  # seconds, said to a client refused for holding too many connections


def handler_options(dashboard: DashboardSettings) -> dict[str, Any]:
    """Keyword arguments for aiohttp's connection handler, given through AppRunner."""
    return {
        "keepalive_timeout": dashboard.header_timeout,
        "max_line_size": MAX_LINE_SIZE,
        "max_field_size": MAX_FIELD_SIZE,
    }


class ConnectionLimit:
    """Open connections per client address (connections.address_key: an IPv6 address's /64, as for failed logins),
    and in all; trusted proxies carry everyone's requests, so they are limited by the total only."""

    def __init__(self, per_host: int, total: int, trusted: Sequence[Network]) -> None:
        self.counter = ConnectionCounter(per_host, total)
        self.trusted = trusted

    @property
    def per_host(self) -> int:
        return self.counter.per_key

    @property
    def total(self) -> int:
        return cast(int, self.counter.total)

    def admit(self, peer: str) -> tuple[str | None, str]:
        """(the key the connection is counted under, "") or (None, why it is refused: "host" or "total")."""
        address = parse_address(peer)
        key = EXEMPT if is_trusted(address, self.trusted) else (address_key(str(address)) if address else peer)
        refused = self.counter.admit(key)
        return (None, refused) if refused else (key, "")

    def release(self, key: str) -> None:
        self.counter.release(key)


def _raw_error(status: int, reason: str, message: str, headers: dict[str, str]) -> bytes:
    body = json.dumps(error_body(message)).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json; charset=utf-8",
            f"Content-Length: {len(body)}", "Connection: close", "Cache-Control: no-store",
            *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_REFUSED = {
    HOST: _raw_error(429, "Too Many Requests", "too many open connections from this address",
                       {"Retry-After": str(RETRY_AFTER_CONNECTIONS)}),
    TOTAL: _raw_error(503, "Service Unavailable", "the server has too many open connections; try again shortly",
                        {"Retry-After": str(RETRY_AFTER_CONNECTIONS)}),
}


class _Handler(RequestHandler):
    """aiohttp's connection handler, with the connection cap and JSON parser errors."""

    _counted: str | None = None  # the ConnectionLimit key, while counted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        assert isinstance(manager, _Server)
        peer = transport.get_extra_info("peername")
        peer_text = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        key, why = manager.limit.admit(peer_text)
        if key is None:
            # Refused before aiohttp sees it: answer, close, and leave the manager out of it.
            if why == HOST:
                _quiet.log(f"connections {peer_text}", logging.WARNING, "Refused a connection from %s: it holds %d "
                           "already ([dashboard] MAX_CONNECTIONS_PER_HOST)", peer_text, manager.limit.per_host)
            else:
                _quiet.log("connections", logging.WARNING, "Refused a connection from %s: %d open in all "
                           "([dashboard] MAX_CONNECTIONS)", peer_text, manager.limit.total)
            self._manager = None
            transport.write(_REFUSED[why])  # type: ignore[attr-defined]
            transport.close()
            return
        self._counted = key
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        manager = self._manager
        if self._counted is not None and isinstance(manager, _Server):
            manager.limit.release(self._counted)
            self._counted = None
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            # An error in our own code, which error_middleware did not catch: worth its traceback.
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            text = "internal server error" if status == 500 else "the request took too long"
        else:
            status, text = self._describe(status, exc)
            _quiet.log("bad request", logging.WARNING, "Bad HTTP request from %s: %s",
                       request.remote, type(exc).__name__ if exc else status)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already under way; the connection is closed")
        response = error_response(status, text, {"Cache-Control": "no-store"})
        response.force_close()
        return response

    def _describe(self, status: int, exc: BaseException | None) -> tuple[int, str]:
        """Status and message for a parser error, in our words: the parser's own quote the request."""
        if isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else "?"
            if limit == self.max_line_size and self.max_line_size != self.max_field_size:
                return 414, f"request line longer than {limit} bytes"
            if limit == self.max_field_size:
                return 431, f"request header line longer than {limit} bytes"
            return 400, f"request line or header longer than {limit} bytes"
        if isinstance(exc, BadHttpMethod):
            return 400, "unknown or malformed HTTP method"
        if isinstance(exc, BadStatusLine):
            return 400, "malformed request line"
        if isinstance(exc, HttpProcessingError):
            return 400, "malformed HTTP request"
        return status, "bad request"


class _Server(web.Server):
    """aiohttp's low-level server, making our connection handler."""

    def __init__(self, handler: Any, *, request_factory: Any, handler_cancellation: bool, limit: ConnectionLimit,
                 **handler_kwargs: Any) -> None:
        super().__init__(handler, request_factory=request_factory, handler_cancellation=handler_cancellation,
                         **handler_kwargs)
        self.limit = limit
        self._handler_kwargs = handler_kwargs

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._handler_kwargs)


class Runner(web.AppRunner):
    """AppRunner whose server is a _Server: the app's start-up and clean-up as aiohttp runs them."""

    def __init__(self, app: web.Application, dashboard: DashboardSettings, **kwargs: Any) -> None:
        super().__init__(app, **handler_options(dashboard), **kwargs)
        self.limit = ConnectionLimit(dashboard.max_connections_per_host, dashboard.max_connections,
                                     dashboard.trusted_proxies)

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # runs the app's start-up (cleanup contexts) and freezes it
        options = {k: v for k, v in self._kwargs.items() if k not in ("handler_cancellation",)}
        return _Server(made.request_handler, request_factory=made.request_factory,
                       handler_cancellation=made.handler_cancellation, limit=self.limit, **options)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio reports a failing accept() (out of file descriptors) with a traceback each time it retries, about
    once a second: log it once a minute instead, without the traceback."""
    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "accept" in message:
            _quiet.log(f"loop {message}", logging.ERROR, "%s: %s", message, context.get("exception"))
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
