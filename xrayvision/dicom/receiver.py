"""The Storage SCP. pynetdicom runs it in its own threads; an instance is acknowledged only once its file is on
disk and its row is committed, and nothing slower (rendering, analysis) happens before the answer."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from ..clinical.regions import RegionRules
from ..files import write_atomically
from ..store.instances import Committed, Instance
from .incoming import IncomingError, read_incoming
from .metadata import MetadataError, describe

logger = logging.getLogger(__name__)

# Storage service statuses (PS3.4 B.2.3); named so no handler returns a bare number.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH = 0xA900  # a required attribute (an identifying UID) is missing or malformed
STATUS_CANNOT_UNDERSTAND = 0xC210


class Activity:
    """When the receiver last took an instance, so that background work steps aside while a burst arrives."""

    def __init__(self) -> None:
        self.last = 0.0  # a float assignment is atomic: set from pynetdicom threads, read on the loop

    def touch(self) -> None:
        self.last = time.monotonic()

    def recent(self, within: float) -> bool:
        return time.monotonic() - self.last < within


@dataclass(frozen=True)
class ReceiverConfig:
    ae_title: str
    address: str
    port: int
    images_dir: Path
    max_pdu: int
    max_associations: int
    store_timeout: float
    rules: RegionRules
    timezone: object  # tzinfo or None


class Receiver:
    """Owns the AE and its server thread; bridges each C-STORE to the event loop that owns the store."""

    def __init__(
        self,
        config: ReceiverConfig,
        loop: asyncio.AbstractEventLoop,
        commit: Callable[[Instance, str], Awaitable[Committed]],
        activity: Activity | None = None,
    ) -> None:
        self.config = config
        self.loop = loop
        self.commit = commit
        self.ae = AE(ae_title=config.ae_title)
        self.ae.maximum_pdu_size = config.max_pdu
        self.ae.maximum_associations = config.max_associations
        self.ae.network_timeout = 60
        self.ae.dimse_timeout = 60
        self.ae.add_supported_context(Verification)
        # Every storage class in every transfer syntax: what we cannot analyse we still keep, never refuse.
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server: ThreadedAssociationServer | None = None
        self.activity = activity or Activity()

    def start(self) -> None:
        self.config.images_dir.mkdir(parents=True, exist_ok=True)
        handlers = [(evt.EVT_C_STORE, handle_store, [self]), (evt.EVT_C_ECHO, _handle_echo)]
        # start_server(block=False), with our request handler: make the threaded server, serve it in a thread.
        self.server = self.ae.make_server(
            (self.config.address, self.config.port), evt_handlers=handlers,
            server_class=ThreadedAssociationServer, request_handler=_RequestHandler,
        )
        self.ae._servers.append(self.server)  # as start_server does, so that shutdown finds it
        threading.Thread(target=self.server.serve_forever, name="dicom-acceptor", daemon=True).start()
        logger.info("DICOM receiver %s listening on %s:%d", self.config.ae_title, self.config.address, self.port)

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.config.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.ae.shutdown()

    def call(self, coro: Awaitable[Committed]) -> Committed:
        """Run a store coroutine on the loop from a pynetdicom thread and wait for its answer."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout=self.config.store_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise


class _BulkSocket(AssociationSocket):
    """pynetdicom reads a PDU 4 KiB at a time, copying as it goes: 2,500 calls for a 10 MB radiograph. This reads
    straight into one buffer of the PDU's size, as much as the kernel holds per call."""

    def recv(self, nr_bytes: int) -> bytearray:
        assert self.socket is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        done = 0
        while done < nr_bytes:
            count = self.socket.recv_into(view[done:])
            if not count:  # the peer closed: hand back what arrived, as pynetdicom does
                del view
                del buffer[done:]
                return buffer
            done += count
        return buffer


class _RequestHandler(RequestHandler):
    def _create_association(self):  # type: ignore[no-untyped-def]
        assoc = super()._create_association()
        assoc.dul.socket.__class__ = _BulkSocket  # same object and state; only recv differs
        return assoc


def _handle_echo(event: evt.Event) -> int:
    return STATUS_SUCCESS


def handle_store(event: evt.Event, receiver: Receiver) -> int:
    """EVT_C_STORE. Runs in the association's thread; every path answers with a real status."""
    receiver.activity.touch()
    peer = f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"
    try:
        # Decoding is lazy and may fail on any element, so all of it stays inside this try.
        incoming = read_incoming(event.request.DataSet, event.file_meta)
        instance = describe(incoming.dataset, receiver.config.rules, receiver.config.timezone,  # type: ignore[arg-type]
                            pixels=incoming.pixels)
    except (MetadataError, IncomingError) as exc:
        logger.warning("Refused an instance from %s: %s", peer, exc)
        return STATUS_DATASET_DOES_NOT_MATCH
    except Exception as exc:
        logger.warning("Refused an instance from %s: cannot decode the dataset (%s)", peer, type(exc).__name__)
        logger.debug("Decode failure detail", exc_info=True)
        return STATUS_CANNOT_UNDERSTAND

    path = receiver.config.images_dir / f"{instance.uid}.dcm"
    try:
        write_atomically(path, incoming.buffers)
    except Exception:
        logger.exception("Could not write %s", path.name)
        return STATUS_OUT_OF_RESOURCES
    try:
        committed = receiver.call(receiver.commit(instance, path.name))
    except Exception:
        # The file stays: if the commit did land after all, the row needs it; if not, a re-send overwrites it.
        logger.exception("Could not commit %s", instance.uid)
        return STATUS_OUT_OF_RESOURCES
    if not committed.keep_file:
        path.unlink(missing_ok=True)  # a re-send of an exam that no longer keeps its .dcm
    receiver.activity.touch()
    logger.info("Received %s (%s) from %s%s", instance.uid, getattr(event.request.AffectedSOPClassUID, "name", "?"),
                peer, "" if committed.new else ", already stored")
    return STATUS_SUCCESS
