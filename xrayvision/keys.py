"""Typed keys for everything the app shares, in one module so that no import circles form."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from .analysis.endpoints import EndpointPool
from .analysis.worker import Worker
from .config import Settings, User
from .dicom.receiver import Receiver
from .dicom.renderer import Renderer
from .events import EventBus
from .store import Store
from .store.exams import Ingest

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
INGEST = web.AppKey("ingest", Ingest)
RENDERER = web.AppKey("renderer", Renderer)
RECEIVER = web.AppKey("receiver", Receiver)
BUS = web.AppKey("bus", EventBus)
POOL = web.AppKey("pool", EndpointPool)
WORKER = web.AppKey("worker", Worker)

USER = web.RequestKey("user", User)
