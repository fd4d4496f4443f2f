"""build_app(settings): every part wired through typed app keys, each lifetime in one cleanup context."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from . import events
from .analysis.endpoints import EndpointPool
from .analysis.worker import Worker
from .config import Settings
from .dicom.metadata import Instance
from .dicom.receiver import Activity, Receiver, ReceiverConfig
from .dicom.renderer import Renderer
from .files import sweep_partial_files
from .keys import BUS, EXECUTOR, INGEST, POOL, RECEIVER, RENDERER, SETTINGS, STORE, WORKER
from .memory import lower_thread_priority
from .store import Store, exams, schema
from .web import actions, api, images, pages, spec
from .web.auth import setup_auth
from .web.errors import error_middleware
from .web.live import setup_live
from .web.origin import setup_origin
from .web.ratelimit import setup_ratelimit

logger = logging.getLogger(__name__)

RENDER_THREADS = 1  # pixels are CPU-bound; one thread leaves the other core to the receiver and the web


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = await Store(app[SETTINGS].general.db_path).open()
    app[STORE] = store
    yield
    await store.close()


async def _executor_ctx(app: web.Application) -> AsyncIterator[None]:
    executor = ThreadPoolExecutor(max_workers=RENDER_THREADS, thread_name_prefix="render",
                                  initializer=lower_thread_priority)
    app[EXECUTOR] = executor
    yield
    executor.shutdown(wait=True, cancel_futures=True)


async def _ingest_ctx(app: web.Application) -> AsyncIterator[None]:
    """Receiver -> store -> renderer: the DICOM half of the flow."""
    settings = app[SETTINGS]
    store = app[STORE]
    activity = Activity()
    renderer = Renderer(
        store,
        settings.general.images_dir,
        app[EXECUTOR],
        max_side=settings.processing.png_max_size,
        keep_dicom=settings.processing.keep_dicom,
        on_rendered=lambda uid: app[BUS].publish(events.STORED, {"uid": uid}),
        receiving=activity.recent,
    )

    def on_new(instance: Instance) -> None:
        if instance.status == schema.QUEUED:
            renderer.submit(instance.uid, f"{instance.uid}.dcm")

    swept = await asyncio.to_thread(sweep_partial_files, settings.general.images_dir)
    if swept:
        logger.info("Removed %d partial file(s) left by an interrupted write", swept)
    ingest = exams.Ingest(store, on_new)
    app[RENDERER] = renderer
    app[INGEST] = ingest
    ingest.start()
    await renderer.start()
    receiver = Receiver(
        ReceiverConfig(
            ae_title=settings.dicom.ae_title,
            address=settings.dicom.bind_address,
            port=settings.dicom.port,
            images_dir=settings.general.images_dir,
            max_pdu=settings.dicom.max_pdu,
            max_associations=settings.dicom.max_associations,
            store_timeout=settings.dicom.store_timeout,
            rules=settings.regions,
            timezone=settings.general.timezone,
            max_instance_bytes=settings.dicom.max_instance_mb * 1024 * 1024,
            assoc_timeout=settings.dicom.assoc_timeout,
            max_associations_per_host=settings.dicom.max_associations_per_host,
        ),
        asyncio.get_running_loop(),
        commit=ingest.add,
        activity=activity,
    )
    receiver.start()
    app[RECEIVER] = receiver
    yield
    # Stop taking images first (shutdown joins pynetdicom's threads, so not in the loop), then drain.
    await asyncio.to_thread(receiver.stop)
    await ingest.stop()
    await renderer.stop()


async def _analysis_ctx(app: web.Application) -> AsyncIterator[None]:
    """Store -> vision model -> store: the analysis half of the flow."""
    settings = app[SETTINGS]
    bus = app[BUS]
    pool = EndpointPool(
        settings.openai.endpoints,
        timeout=settings.openai.timeout,
        probe_interval=settings.openai.probe_interval,
        structured=settings.openai.structured_output,
        on_change=lambda: bus.publish(events.STATE),
    )
    app[POOL] = pool
    await pool.start()
    worker = Worker(app[STORE], pool, bus, settings)
    app[WORKER] = worker
    await worker.start()
    yield
    await worker.stop()
    await pool.stop()


def build_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=1024**2)
    app[SETTINGS] = settings
    app[BUS] = events.EventBus()
    # In this order, inside the error middleware: rate limits first (failed logins count, floods cost no scrypt),
    # then the origin and JSON checks for writes, then who is asking.
    setup_ratelimit(app)
    setup_origin(app)
    setup_auth(app)
    app.cleanup_ctx.extend([_store_ctx, _executor_ctx, _analysis_ctx, _ingest_ctx])
    setup_live(app)  # after the parts whose events it passes on
    for routes in (api, actions, spec, images, pages):
        routes.setup_routes(app)
    return app
