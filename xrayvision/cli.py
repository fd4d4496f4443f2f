"""The `xrayvision` command: serve (the default) and hash-password."""
from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import logging
import sys
from pathlib import Path

from . import __version__, memory
from .config import ConfigError, Settings, load_settings
from .web.auth import hash_password, weak_users

logger = logging.getLogger("xrayvision")


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> list[str]:
    """Reasons not to start: a network-facing web server while a user keeps a well-known password."""
    problems = []
    weak = weak_users(settings.users)
    if weak and not _is_loopback(settings.dashboard.bind_address):
        problems.append(
            f"[dashboard] BIND_ADDRESS {settings.dashboard.bind_address} is not loopback while [users] "
            f"{', '.join(weak)} keep a well-known password; set a strong one (xrayvision hash-password)"
        )
    return problems


# What an operator needs before reading any file: where settings come from, and the ports.
EPILOG = f"""\
configuration, each overriding the one before:
  built-in defaults  {Path(__file__).with_name("defaults.cfg")} (every key, with its meaning)
  ./xrayvision.cfg   in the working directory, or the file given by --config PATH
  local.cfg          beside that file (keep site secrets here)
  environment        XRAYVISION_<SECTION>_<KEY>, e.g. XRAYVISION_DICOM_AE_PORT=11112; a key that starts with its
                     section's name may drop it: XRAYVISION_DASHBOARD_PORT is [dashboard] DASHBOARD_PORT

ports, by default (loopback only; BIND_ADDRESS = 0.0.0.0 in [dicom] or [dashboard] listens on the network):
  DICOM, AE XRAYVISION   4010                        [dicom] AE_PORT              XRAYVISION_DICOM_AE_PORT
  dashboard and /api     8000                        [dashboard] DASHBOARD_PORT   XRAYVISION_DASHBOARD_PORT
  vision model (called)  http://127.0.0.1:8080/v1    [openai] OPENAI_URL_PRIMARY  XRAYVISION_OPENAI_URL_PRIMARY

Users go in [users] as `name = password,role`; make the password part with `xrayvision hash-password`.
"""

HASH_HELP = """\
Print a line for [users]: `scrypt$...,ROLE`, to put after `name =`. On a terminal it asks for the password twice
(the two must match) without echoing it; otherwise it reads one line from standard input, e.g.
`printf '%s\\n' 'the password' | xrayvision hash-password --role admin`.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xrayvision", description="Real-time radiology triage server: a DICOM "
                                     "receiver, a vision-LLM analysis queue, a live dashboard and a JSON API.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"xrayvision {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the server (the default)", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    for p in (parser, serve):
        p.add_argument("--config", metavar="PATH", help="config file (default: ./xrayvision.cfg when present)")
        p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        p.add_argument("--keep-dicom", action=argparse.BooleanOptionalAction, default=None,
                       help="keep .dcm files after rendering")
    hp = sub.add_parser("hash-password", help="print a hashed password for [users]", description=HASH_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    hp.add_argument("--role", choices=["admin", "user"], default="user", help="the role after the hash (default: user)")
    return parser


def _read_password() -> str | None:
    """The password to hash, or None when the person gave up or the two entries differ (already said why)."""
    try:
        if not sys.stdin.isatty():
            line = sys.stdin.readline()
            if not line:
                print("xrayvision: no password on standard input (pipe one line in, or run this on a terminal)",
                      file=sys.stderr)
                return None
            return line.rstrip("\r\n")
        first = getpass.getpass("Password: ")
        if first and getpass.getpass("Again: ") != first:
            print("xrayvision: the two passwords differ; nothing printed", file=sys.stderr)
            return None
        return first
    except EOFError:  # Ctrl-D at a prompt
        print("\nxrayvision: no password given", file=sys.stderr)
        return None


def _hash_password(role: str) -> int:
    try:
        password = _read_password()
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback, the shell's usual code
        print("\nxrayvision: interrupted", file=sys.stderr)
        return 130
    if password is None:
        return 1
    if not password:
        print("xrayvision: error: empty password", file=sys.stderr)
        return 2
    print(f"{hash_password(password)},{role}")
    return 0


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    # Libraries' per-request chatter (every HTTP request of the model client, every association) stays below INFO;
    # our own lines say what happened. httpx2/httpcore2 are the names newer openai releases log under.
    for noisy in ("pynetdicom", "pydicom", "aiohttp.access", "aiosqlite", "openai", "httpx", "httpcore", "httpx2",
                  "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "hash-password":
        return _hash_password(args.role)
    overrides: dict[str, dict[str, str]] = {}
    if args.keep_dicom is not None:
        overrides.setdefault("processing", {})["keep_dicom"] = str(args.keep_dicom)
    if args.log_level:
        overrides.setdefault("general", {})["log_level"] = args.log_level
    try:
        settings = load_settings(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"xrayvision: configuration error: {exc}", file=sys.stderr)
        return 2
    problems = check_exposure(settings)
    if problems:
        print("xrayvision: refusing to start: " + "; ".join(problems), file=sys.stderr)
        return 2
    setup_logging(settings.general.log_level)
    for warning in settings.warnings:
        logger.warning("Config: %s", warning)
    if not settings.users:
        logger.warning("No [users] configured: every web request will be refused")
    logger.info("XRayVision %s: config from %s", __version__, ", ".join(settings.source) or "built-in defaults")
    from .app import ListenError, serve  # imported late so that `hash-password` starts fast

    memory.limit_arenas()
    try:
        asyncio.run(serve(settings))
    except ListenError as exc:
        print(f"xrayvision: {exc}", file=sys.stderr)
        return 1
    return 0
