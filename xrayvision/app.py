"""build_app(settings): every part wired through typed app keys, each lifetime in one cleanup context; serve()
runs it until SIGINT or SIGTERM."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from . import events
from .analysis.endpoints import EndpointPool
from .analysis.grader import Grader
from .analysis.worker import Worker
from .config import Settings
from .dicom.limits import MIB
from .dicom.receiver import Activity, Receiver, ReceiverConfig
from .dicom.renderer import Renderer
from .fhir import FHIRClient
from .fhir.fetcher import ReportFetcher
from .files import sweep_partial_files
from .keys import BUS, EXECUTOR, FETCHER, GRADER, INGEST, POOL, RECEIVER, RENDERER, SETTINGS, STORE, WORKER
from .memory import lower_thread_priority
from .privacy import loggable_url
from .store import Store, exams, worklist
from .store.instances import Instance, is_radiograph
from .web import actions, api, images, pages, spec, tools
from .web.auth import setup_auth
from .web.errors import error_middleware
from .web.headers import setup_headers
from .web.live import setup_live
from .web.origin import setup_origin
from .web.present import grade_event, report_event
from .web.ratelimit import setup_ratelimit
from .web.server import Runner, quiet_accept_errors

logger = logging.getLogger(__name__)

RENDER_THREADS = 1  # pixels are CPU-bound; one thread leaves the other core to the receiver and the web
SHUTDOWN_TIMEOUT = 10  # seconds open requests get to finish at shutdown


class ListenError(Exception):
    """A port we cannot listen on; the message names the setting, e.g.
    "cannot listen on 127.0.0.1:4010 ([dicom] AE_PORT): address already in use"."""

    def __init__(self, section: str, address: str, port: int, exc: OSError) -> None:
        # A bind address that is not this machine's is the address's fault; anything else, the port's.
        key = "BIND_ADDRESS" if exc.errno == errno.EADDRNOTAVAIL else ("AE_PORT" if section == "dicom"
                                                                       else "DASHBOARD_PORT")
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        super().__init__(f"cannot listen on {address}:{port} ([{section}] {key}): {reason[:1].lower()}{reason[1:]}")


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
        if is_radiograph(instance.sop_class):
            renderer.submit(instance.uid, f"{instance.uid}.dcm")  # analysed or not, a radiograph is shown
        else:  # kept as it came, never rendered: visible now, with its reason
            app[BUS].publish(events.STORED, {"uid": instance.uid})

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
            max_instance_bytes=settings.dicom.max_instance_mb * MIB,
            assoc_timeout=settings.dicom.assoc_timeout,
            max_associations_per_host=settings.dicom.max_associations_per_host,
            max_spool_bytes=settings.dicom.max_spool_mb * MIB,
        ),
        asyncio.get_running_loop(),
        commit=ingest.add,
        activity=activity,
    )
    try:
        receiver.start()
    except OSError as exc:
        await ingest.stop()
        await renderer.stop()
        if exc.filename is not None:  # the image folder, not the socket
            raise
        raise ListenError("dicom", settings.dicom.bind_address, settings.dicom.port, exc) from None
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


async def _reports_ctx(app: web.Application) -> AsyncIterator[None]:
    """FHIR -> store -> text model -> store: radiologists' reports, fetched and graded."""
    settings = app[SETTINGS]
    store, bus = app[STORE], app[BUS]

    async def announce(kind: str, uid: str) -> None:
        row = await worklist.get_exam(store, uid, settings.processing.severity_threshold)
        if row is not None:  # the events carry what the API shows; web/live.py redacts them for users
            bus.publish(kind, (report_event if kind == events.RADREPORT else grade_event)(row, settings))

    grader = Grader(store, app[POOL], bus, settings, lambda uid: announce(events.RADCHECK, uid))
    fetcher = None
    fhir = settings.fhir
    if fhir.url:
        fetcher = ReportFetcher(store, FHIRClient(fhir), bus, settings, lambda uid: announce(events.RADREPORT, uid),
                                periodic=settings.processing.enable_his)
        app[FETCHER] = fetcher
        await fetcher.start()
        logger.info("FHIR server %s (%s flavour): %s", loggable_url(fhir.url), fhir.flavour,
                    f"reports fetched every {fhir.fetch_interval:g} s" if settings.processing.enable_his
                    else "reports fetched only when asked ([processing] ENABLE_HIS is off)")
    elif settings.processing.enable_his:
        logger.warning("[processing] ENABLE_HIS is on but [fhir] FHIR_URL is empty: no reports are fetched")
    app[GRADER] = grader
    await grader.start()  # after the fetcher, whose start cannot leave a grader's task behind if it fails
    yield
    if fetcher is not None:
        await fetcher.stop()
    await grader.stop()


def build_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MIB)
    app[SETTINGS] = settings
    app[BUS] = events.EventBus()
    # In this order, inside the error middleware: rate limits first (floods on /api cost no scrypt), then the
    # origin and JSON checks for writes, then who is asking (which locks out failed logins on every route).
    setup_ratelimit(app)
    setup_origin(app)
    setup_auth(app)
    setup_headers(app)
    app.cleanup_ctx.extend([_store_ctx, _executor_ctx, _analysis_ctx, _reports_ctx, _ingest_ctx])
    setup_live(app)  # after the parts whose events it passes on
    for routes in (api, actions, spec, images, pages, tools):
        routes.setup_routes(app)
    return app


async def serve(settings: Settings) -> None:
    """Start everything, serve until SIGINT or SIGTERM, stop everything. A port that cannot be listened on raises
    ListenError after whatever had started is stopped again."""
    loop = asyncio.get_running_loop()
    quiet_accept_errors(loop)
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    dashboard = settings.dashboard
    runner = Runner(build_app(settings), dashboard, shutdown_timeout=SHUTDOWN_TIMEOUT)
    try:
        await runner.setup()  # the app's start-up: store, analysis, the DICOM receiver
        site = web.TCPSite(runner, dashboard.bind_address, dashboard.port)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError("dashboard", dashboard.bind_address, dashboard.port, exc) from None
        logger.info("Dashboard on http://%s:%d/", dashboard.bind_address, dashboard.port)
        await stopping.wait()
        logger.info("Shutting down")
    finally:
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
