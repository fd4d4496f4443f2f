"""One typed, frozen Settings object, read from the built-in defaults, the config file, local.cfg and
the environment, and validated before anything starts."""
from __future__ import annotations

import configparser
import difflib
import ipaddress
import os
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .clinical.regions import RegionRules

ENV_PREFIX = "XRAYVISION_"
ROLES = ("admin", "user")
# Sections whose keys are free (one entry per user or region); every other section is fixed.
FREE_SECTIONS = ("users", "regions", "questions", "supported_regions")
RETRIEVAL_METHODS = ("C-MOVE", "C-GET")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
QUEUE_ORDERS = ("newest", "oldest")
FHIR_FLAVOURS = ("r4", "his")
# Per-endpoint keys in [openai]: OPENAI_URL_<NAME> and the shared keys with a _<NAME> suffix.
_ENDPOINT_KEY = re.compile(r"^(openai_url|model_name|openai_api_key|concurrency)_([a-z0-9_]+)$")
# The reference's two endpoints keep the short names its WebSocket frames use.
_LEGACY_ENDPOINTS = {"primary": "pri", "secondary": "sec"}
_AE_TITLE_CHARS = re.compile(r"^[\x20-\x5b\x5d-\x7e]+$")  # printable ASCII without backslash


class ConfigError(Exception):
    """The configuration cannot be used; the message names each bad key."""


@dataclass(frozen=True)
class User:
    name: str
    password: str  # plain text or a hash made by `xrayvision hash-password`
    role: str


@dataclass(frozen=True)
class GeneralSettings:
    db_path: Path
    backup_dir: Path
    images_dir: Path
    timezone: zoneinfo.ZoneInfo | None
    log_level: str


@dataclass(frozen=True)
class DicomSettings:
    ae_title: str
    port: int
    bind_address: str
    remote_ae_title: str
    remote_ae_ip: str
    remote_ae_port: int
    retrieval_method: str
    max_pdu: int
    max_associations: int
    store_timeout: float
    max_instance_mb: int
    assoc_timeout: float
    max_associations_per_host: int
    max_spool_mb: int  # MB being spooled to disk at once, all associations together


@dataclass(frozen=True)
class EndpointSettings:
    name: str
    base_url: str  # ".../v1"
    model: str
    api_key: str
    concurrency: int

    @property
    def label(self) -> str:
        """The name shown to people (log and dashboard): "primary", "secondary" or the chosen <NAME>."""
        return next((long for long, short in _LEGACY_ENDPOINTS.items() if short == self.name), self.name)

    @property
    def key(self) -> str:
        """The config key that defines this endpoint."""
        return f"OPENAI_URL_{self.label.upper()}"


@dataclass(frozen=True)
class OpenAISettings:
    url_primary: str
    url_secondary: str
    api_key: str
    model_name: str
    endpoints: tuple[EndpointSettings, ...]
    timeout: float
    probe_interval: float
    structured_output: bool
    temperature: float
    max_tokens: int
    max_attempts: int
    backoff_base: float
    backoff_max: float
    answer_retries: int
    report_max_chars: int  # longest report text the report tools and the grading take


@dataclass(frozen=True)
class DashboardSettings:
    port: int
    bind_address: str
    rate_limit: int  # requests per minute per client on /api, 0 = none
    rate_limit_heavy: int  # the same for the AI endpoints
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    login_failures: int  # failed logins per address or user name within login_window before a lock
    login_window: float  # seconds
    login_lockout: float  # seconds a lock lasts
    header_timeout: float  # seconds for a connection's request headers to arrive
    max_connections_per_host: int  # open HTTP connections per client address (trusted proxies exempt)
    max_connections: int  # open HTTP connections in all


@dataclass(frozen=True)
class NotificationSettings:
    ntfy_url: str


@dataclass(frozen=True)
class FHIRSettings:
    url: str  # '' = no fetching
    username: str
    password: str
    token: str  # Bearer, instead of Basic
    flavour: str  # FHIR_FLAVOURS
    identifier_system: str  # '' = any system
    fetch_interval: float  # seconds
    fetch_batch: int
    lookback_days: int
    max_attempts: int
    match_hours: float
    timeout: float  # seconds per request


@dataclass(frozen=True)
class ProcessingSettings:
    page_size: int
    keep_dicom: bool
    load_dicom: bool
    no_query: bool
    enable_ntfy: bool
    enable_his: bool
    query_interval: int
    severity_threshold: int
    png_max_size: int
    queue_order: str
    retry_cooldown: int
    max_retry_rounds: int
    prior_count: int
    prior_days: int
    age_groups: tuple[int, ...]  # the statistics' age groups: their lower bounds in years, ascending, from 0


@dataclass(frozen=True)
class Settings:
    general: GeneralSettings
    users: Mapping[str, User]
    dicom: DicomSettings
    openai: OpenAISettings
    dashboard: DashboardSettings
    notifications: NotificationSettings
    fhir: FHIRSettings
    processing: ProcessingSettings
    regions: RegionRules
    questions: Mapping[str, str]
    supported_regions: frozenset[str]
    source: tuple[str, ...] = field(default=())  # files read, for the start-up log
    warnings: tuple[str, ...] = field(default=())


def _defaults_text() -> str:
    return resources.files("xrayvision").joinpath("defaults.cfg").read_text(encoding="utf-8")


def _parser() -> configparser.ConfigParser:
    # No interpolation: passwords and URLs may hold '%'.
    return configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None, strict=False)


def load_settings(
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, str]] | None = None,
    base_dir: Path | None = None,
) -> Settings:
    """Read defaults, then the config file (given, or ./xrayvision.cfg when present), then local.cfg
    beside it, then XRAYVISION_<SECTION>_<KEY> variables, then `overrides` (used by tests and the CLI)."""
    environ = os.environ if environ is None else environ
    base_dir = Path.cwd() if base_dir is None else base_dir
    defaults = _parser()
    defaults.read_string(_defaults_text(), source="defaults.cfg")
    merged = _parser()
    merged.read_dict({s: dict(defaults[s]) for s in defaults.sections()})
    sources: list[str] = []
    errors: list[str] = []
    origins: dict[tuple[str, str], str] = {}  # (section, key) -> where its value came from, for error messages

    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"--config: file not found: {path}")
    else:
        path = base_dir / "xrayvision.cfg"
    files = [path, path.parent / "local.cfg"]
    for file in files:
        if not file.is_file():
            continue
        extra = _parser()
        try:
            extra.read(file, encoding="utf-8")
        except configparser.Error as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        _merge(merged, extra, defaults, str(file), errors, origins)
        sources.append(str(file))

    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        section, key = _split_env_name(name[len(ENV_PREFIX):], defaults)
        if section is None:
            errors.append(f"{name}: no such section (expected {ENV_PREFIX}<SECTION>_<KEY>)"
                          + _env_section_hint(name[len(ENV_PREFIX):], defaults))
            continue
        # The section need not be said twice: XRAYVISION_DASHBOARD_PORT is [dashboard] DASHBOARD_PORT.
        long_key = f"{section}_{key}"
        if key not in defaults[section] and (long_key in defaults[section]
                                             or section == "openai" and _ENDPOINT_KEY.match(long_key)):
            key = long_key
        env = _parser()
        env.read_dict({section: {key: value}})
        _merge(merged, env, defaults, name, errors, origins)  # each variable is named in its own errors
    if overrides:
        extra = _parser()
        extra.read_dict(overrides)
        _merge(merged, extra, defaults, "overrides", errors, origins)
    if errors:
        raise ConfigError("; ".join(errors))
    return _build(merged, base_dir, tuple(sources), origins)


def _split_env_name(rest: str, defaults: configparser.ConfigParser) -> tuple[str | None, str]:
    lowered = rest.lower()
    # Longest section first, since section names may hold underscores (supported_regions).
    for section in sorted(defaults.sections(), key=len, reverse=True):
        if lowered.startswith(section + "_"):
            return section, lowered[len(section) + 1:]
    return None, ""


def _env_section_hint(rest: str, defaults: configparser.ConfigParser) -> str:
    """ " (did you mean XRAYVISION_DICOM_AE_PORT?)" for XRAYVISION_DICON_AE_PORT, or nothing."""
    parts = rest.lower().split("_")
    for cut in range(len(parts) - 1, 0, -1):  # the longest plausible section first (supported_regions)
        hint = difflib.get_close_matches("_".join(parts[:cut]), defaults.sections(), n=1, cutoff=0.8)
        if hint:
            return f" (did you mean {ENV_PREFIX}{hint[0].upper()}_{'_'.join(parts[cut:]).upper()}?)"
    return ""


def _merge(target, extra, defaults, origin: str, errors: list[str],
           origins: dict[tuple[str, str], str] | None = None) -> None:
    for section in extra.sections():
        if not defaults.has_section(section):
            hint = difflib.get_close_matches(section, defaults.sections(), n=1)
            errors.append(f"{origin}: unknown section [{section}]" + (f" (did you mean [{hint[0]}]?)" if hint else ""))
            continue
        for key, value in extra[section].items():
            endpoint_key = section == "openai" and _ENDPOINT_KEY.match(key)
            if section not in FREE_SECTIONS and key not in defaults[section] and not endpoint_key:
                hint = (difflib.get_close_matches(key, list(defaults[section]), n=1)
                        or difflib.get_close_matches(f"{section}_{key}", list(defaults[section]), n=1))
                if hint and origin.startswith(ENV_PREFIX):  # a variable is answered with a variable's name
                    short = hint[0].removeprefix(f"{section}_")  # XRAYVISION_DASHBOARD_PORT, not ..._DASHBOARD_PORT
                    hint = [f"{ENV_PREFIX}{section.upper()}_{short.upper()}"]
                errors.append(
                    f"{origin}: unknown key [{section}] {key}" + (f" (did you mean {hint[0]}?)" if hint else "")
                )
                continue
            target[section][key] = value
            if origins is not None:
                origins[(section, key)] = origin


class _Reader:
    """Typed access to the merged file that records every bad value instead of stopping at the first."""

    def __init__(self, parser: configparser.ConfigParser, base_dir: Path,
                 origins: Mapping[tuple[str, str], str] | None = None) -> None:
        self.parser = parser
        self.base_dir = base_dir
        self.origins = origins or {}
        self.errors: list[str] = []

    def str(self, section: str, key: str) -> str:
        return self.parser[section].get(key, "").strip()

    def _bad(self, section: str, key: str, why: str) -> None:
        origin = self.origins.get((section, key.lower()))
        where = f" (from {origin})" if origin and origin != "overrides" else ""
        self.errors.append(f"[{section}] {key.upper()}{where}: {why}")

    def _number(self, section: str, key: str, low: Any, high: Any, kind: type, noun: str) -> Any:
        raw = self.str(section, key)
        try:
            value = kind(raw)
        except ValueError:
            self._bad(section, key, f"{raw!r} is not {noun}")
            return low
        if not low <= value <= high:
            self._bad(section, key, f"{value} is outside {low}..{high}")
        return value

    def int(self, section: str, key: str, low: int, high: int) -> int:
        return self._number(section, key, low, high, int, "a whole number")

    def float(self, section: str, key: str, low: float, high: float) -> float:
        return self._number(section, key, low, high, float, "a number")

    def bool(self, section: str, key: str) -> bool:
        raw = self.str(section, key).lower()
        if raw in configparser.ConfigParser.BOOLEAN_STATES:
            return configparser.ConfigParser.BOOLEAN_STATES[raw]
        self._bad(section, key, f"{raw!r} is not true or false")
        return False

    def port(self, section: str, key: str) -> int:
        return self.int(section, key, 1, 65535)

    def path(self, section: str, key: str) -> Path:
        raw = self.str(section, key)
        if not raw:
            self._bad(section, key, "must not be empty")
        path = Path(raw).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def address(self, section: str, key: str) -> str:
        raw = self.str(section, key)
        if raw in ("", "localhost"):
            return raw or "127.0.0.1"
        try:
            ipaddress.ip_address(raw)
        except ValueError:
            self._bad(section, key, f"{raw!r} is not an IP address")
        return raw

    def age_groups(self, section: str, key: str) -> tuple[int, ...]:
        raw = self.str(section, key)
        try:
            bounds = tuple(int(part) for part in raw.split(",") if part.strip())
        except ValueError:
            self._bad(section, key, f"{raw!r} is not a list of whole numbers such as 0, 2, 6, 18, 65")
            return (0,)
        if not bounds or bounds[0] != 0 or any(b <= a for a, b in zip(bounds, bounds[1:])) or bounds[-1] > 150:
            self._bad(section, key, f"{raw!r}: the groups' lower bounds in years must start at 0 and rise, up to 150")
            return (0,)
        return bounds

    def networks(self, section: str, key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        found = []
        for item in (part.strip() for part in self.str(section, key).split(",")):
            if not item:
                continue
            try:
                found.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self._bad(section, key, f"{item!r} is not an address or network")
        return tuple(found)

    def choice(self, section: str, key: str, choices: tuple[str, ...], upper: bool = True) -> str:
        raw = self.str(section, key)
        value = raw.upper() if upper else raw
        if value not in choices:
            self._bad(section, key, f"{raw!r} is not one of {', '.join(choices)}")
        return value

    def ae_title(self, section: str, key: str) -> str:
        raw = self.str(section, key)
        if not raw:
            self._bad(section, key, "must not be empty")
        elif len(raw) > 16:
            self._bad(section, key, f"{raw!r} is longer than 16 characters")
        elif not _AE_TITLE_CHARS.match(raw):
            self._bad(section, key, f"{raw!r} holds a backslash or a non-printable character")
        return raw

    def url(self, section: str, key: str) -> str:
        raw = self.str(section, key)
        if raw and not re.match(r"^https?://[^\s/]+", raw):
            self._bad(section, key, f"{raw!r} is not an http(s) URL")
        return raw.rstrip("/")


def base_url(url: str) -> str:
    """The client's base URL from either form the reference accepted: ".../v1" or ".../v1/chat/completions"."""
    url = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


def _endpoints(r: _Reader) -> tuple[EndpointSettings, ...]:
    section = r.parser["openai"]
    urls = {key[len("openai_url_"):]: key for key in section if key.startswith("openai_url_")}
    found = []
    for suffix, key in urls.items():
        url = r.url("openai", key)
        if not url:
            continue
        model = r.str("openai", f"model_name_{suffix}") or r.str("openai", "model_name")
        concurrency_key = f"concurrency_{suffix}" if f"concurrency_{suffix}" in section else "concurrency"
        found.append(EndpointSettings(
            name=_LEGACY_ENDPOINTS.get(suffix, suffix),
            base_url=base_url(url),
            model=model,
            api_key=r.str("openai", f"openai_api_key_{suffix}") or r.str("openai", "openai_api_key"),
            concurrency=r.int("openai", concurrency_key, 1, 256),
        ))
        if not model:
            r._bad("openai", f"model_name_{suffix}", "no model name for this endpoint (nor a shared MODEL_NAME)")
    # Primary first, then secondary, then the others by name: the order health is shown in.
    order = {"pri": 0, "sec": 1}
    return tuple(sorted(found, key=lambda e: (order.get(e.name, 2), e.name)))


def _build(parser: configparser.ConfigParser, base_dir: Path, sources: tuple[str, ...],
           origins: Mapping[tuple[str, str], str] | None = None) -> Settings:
    r = _Reader(parser, base_dir, origins)
    tz_name = r.str("general", "timezone")
    timezone = None
    if tz_name:
        try:
            timezone = zoneinfo.ZoneInfo(tz_name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            r._bad("general", "timezone", f"{tz_name!r} is not a known time zone")
    general = GeneralSettings(
        db_path=r.path("general", "xrayvision_db_path"),
        backup_dir=r.path("general", "xrayvision_backup_dir"),
        images_dir=r.path("general", "images_dir"),
        timezone=timezone,
        log_level=r.choice("general", "log_level", LOG_LEVELS),
    )
    users: dict[str, User] = {}
    for name, value in parser["users"].items():
        password, sep, role = value.strip().rpartition(",")
        role = role.strip().lower()
        if not sep or not password:
            r._bad("users", name, "expected 'password,role'")
        elif role not in ROLES:
            r._bad("users", name, f"unknown role {role!r} (expected {' or '.join(ROLES)})")
        else:
            users[name] = User(name=name, password=password, role=role)
    dicom = DicomSettings(
        ae_title=r.ae_title("dicom", "ae_title"),
        port=r.port("dicom", "ae_port"),
        bind_address=r.address("dicom", "bind_address"),
        remote_ae_title=r.ae_title("dicom", "remote_ae_title"),
        remote_ae_ip=r.str("dicom", "remote_ae_ip"),
        remote_ae_port=r.port("dicom", "remote_ae_port"),
        retrieval_method=r.choice("dicom", "retrieval_method", RETRIEVAL_METHODS),
        max_pdu=r.int("dicom", "max_pdu", 0, 2**32 - 1),
        max_associations=r.int("dicom", "max_associations", 1, 1000),
        store_timeout=r.float("dicom", "store_timeout", 1, 3600),
        max_instance_mb=r.int("dicom", "max_instance_mb", 1, 1024 * 1024),
        assoc_timeout=r.float("dicom", "assoc_timeout", 0.1, 3600),
        max_associations_per_host=r.int("dicom", "max_associations_per_host", 1, 1000),
        max_spool_mb=r.int("dicom", "max_spool_mb", 1, 1024 * 1024),
    )
    if 0 < dicom.max_pdu < 4096:
        r._bad("dicom", "max_pdu", f"{dicom.max_pdu} is too small (0 for no limit, or at least 4096)")
    openai = OpenAISettings(
        url_primary=r.url("openai", "openai_url_primary"),
        url_secondary=r.url("openai", "openai_url_secondary"),
        api_key=r.str("openai", "openai_api_key"),
        model_name=r.str("openai", "model_name"),
        endpoints=_endpoints(r),
        timeout=r.float("openai", "timeout", 0.1, 3600),
        probe_interval=r.float("openai", "probe_interval", 0.05, 3600),
        structured_output=r.bool("openai", "structured_output"),
        temperature=r.float("openai", "temperature", 0, 2),
        max_tokens=r.int("openai", "max_tokens", 16, 32768),
        max_attempts=r.int("openai", "max_attempts", 1, 20),
        backoff_base=r.float("openai", "backoff_base", 0, 600),
        backoff_max=r.float("openai", "backoff_max", 0, 3600),
        answer_retries=r.int("openai", "answer_retries", 0, 10),
        report_max_chars=r.int("openai", "report_max_chars", 100, 1_000_000),
    )
    dashboard = DashboardSettings(
        port=r.port("dashboard", "dashboard_port"),
        bind_address=r.address("dashboard", "bind_address"),
        rate_limit=r.int("dashboard", "rate_limit", 0, 1_000_000),
        rate_limit_heavy=r.int("dashboard", "rate_limit_heavy", 0, 1_000_000),
        trusted_proxies=r.networks("dashboard", "trusted_proxies"),
        login_failures=r.int("dashboard", "login_failures", 1, 1_000_000),
        login_window=r.float("dashboard", "login_window", 1, 86400),
        login_lockout=r.float("dashboard", "login_lockout", 1, 7 * 86400),
        header_timeout=r.float("dashboard", "header_timeout", 0.1, 3600),
        max_connections_per_host=r.int("dashboard", "max_connections_per_host", 1, 100_000),
        max_connections=r.int("dashboard", "max_connections", 1, 1_000_000),
    )
    notifications = NotificationSettings(ntfy_url=r.url("notifications", "ntfy_url"))
    fhir = FHIRSettings(
        url=r.url("fhir", "fhir_url").rstrip("/"), username=r.str("fhir", "fhir_username"),
        password=r.str("fhir", "fhir_password"), token=r.str("fhir", "fhir_token"),
        flavour=r.choice("fhir", "fhir_flavour", FHIR_FLAVOURS, upper=False),
        identifier_system=r.str("fhir", "identifier_system"),
        fetch_interval=r.float("fhir", "fetch_interval", 1, 86400),
        fetch_batch=r.int("fhir", "fetch_batch", 1, 1000),
        lookback_days=r.int("fhir", "lookback_days", 1, 3650),
        max_attempts=r.int("fhir", "max_attempts", 1, 100),
        match_hours=r.float("fhir", "match_hours", 1, 24 * 31),
        timeout=r.float("fhir", "timeout", 1, 600),
    )
    processing = ProcessingSettings(
        page_size=r.int("processing", "page_size", 1, 500),
        keep_dicom=r.bool("processing", "keep_dicom"),
        load_dicom=r.bool("processing", "load_dicom"),
        no_query=r.bool("processing", "no_query"),
        enable_ntfy=r.bool("processing", "enable_ntfy"),
        enable_his=r.bool("processing", "enable_his"),
        query_interval=r.int("processing", "query_interval", 10, 86400),
        severity_threshold=r.int("processing", "severity_threshold", 1, 10),
        png_max_size=r.int("processing", "png_max_size", 64, 8192),
        queue_order=r.choice("processing", "queue_order", QUEUE_ORDERS, upper=False),
        retry_cooldown=r.int("processing", "retry_cooldown", 0, 7 * 86400),
        max_retry_rounds=r.int("processing", "max_retry_rounds", 0, 1000),
        prior_count=r.int("processing", "prior_count", 0, 20),
        prior_days=r.int("processing", "prior_days", 0, 3650),
        age_groups=r.age_groups("processing", "age_groups"),
    )
    questions = {k: v.strip() for k, v in parser["questions"].items() if v.strip()}
    supported = set()
    for key in parser["supported_regions"]:
        if r.bool("supported_regions", key):
            supported.add(key)
    regions = RegionRules.from_mapping(dict(parser["regions"]), supported)  # an exam's status is decided on arrival
    if r.errors:
        raise ConfigError("; ".join(r.errors))
    warnings = tuple(
        f"[supported_regions] {name}: no [regions] rule produces this region, so it is never analysed"
        for name in sorted(supported - set(regions.regions()))
    )
    return Settings(
        general=general,
        users=users,
        dicom=dicom,
        openai=openai,
        dashboard=dashboard,
        notifications=notifications,
        fhir=fhir,
        processing=processing,
        regions=regions,
        questions=questions,
        supported_regions=frozenset(supported),
        source=sources,
        warnings=warnings,
    )
