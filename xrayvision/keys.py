"""Typed keys for everything the app shares, in one module so that no import circles form.

The value types are named, not imported: importing them would load pynetdicom, openai and numpy for every command,
`hash-password` included. Each key's annotation gives the type checker its value type (the TYPE_CHECKING imports
below); at run time the annotations are never evaluated (`from __future__ import annotations`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from .analysis.endpoints import EndpointPool
    from .analysis.grader import Grader
    from .analysis.worker import Worker
    from .config import Settings, User
    from .dicom.receiver import Receiver
    from .dicom.renderer import Renderer
    from .events import EventBus
    from .fhir.fetcher import ReportFetcher
    from .store import Store
    from .store.exams import Ingest

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
STORE: web.AppKey[Store] = web.AppKey("store")
EXECUTOR: web.AppKey[ThreadPoolExecutor] = web.AppKey("executor")
INGEST: web.AppKey[Ingest] = web.AppKey("ingest")
RENDERER: web.AppKey[Renderer] = web.AppKey("renderer")
RECEIVER: web.AppKey[Receiver] = web.AppKey("receiver")
BUS: web.AppKey[EventBus] = web.AppKey("bus")
POOL: web.AppKey[EndpointPool] = web.AppKey("pool")
WORKER: web.AppKey[Worker] = web.AppKey("worker")
GRADER: web.AppKey[Grader] = web.AppKey("grader")
FETCHER: web.AppKey[ReportFetcher] = web.AppKey("fetcher")  # absent while [fhir] FHIR_URL is empty

USER: web.RequestKey[User] = web.RequestKey("user")
