"""The `xrayvision` command: serve (the default) and hash-password."""
from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import logging
import sys

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xrayvision", description="Real-time radiology triage server")
    parser.add_argument("--version", action="version", version=f"xrayvision {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the server (the default)")
    for p in (parser, serve):
        p.add_argument("--config", metavar="PATH", help="config file (default: ./xrayvision.cfg when present)")
        p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        p.add_argument("--keep-dicom", action=argparse.BooleanOptionalAction, default=None,
                       help="keep .dcm files after rendering")
    hp = sub.add_parser("hash-password", help="print a hashed password for [users]")
    hp.add_argument("--role", choices=["admin", "user"], default="user")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "hash-password":
        password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass("Password: ")
        if not password:
            print("error: empty password", file=sys.stderr)
            return 2
        print(f"{hash_password(password)},{args.role}")
        return 0
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
    logging.basicConfig(level=settings.general.log_level, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    for noisy in ("pynetdicom", "pydicom", "aiohttp.access", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
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
