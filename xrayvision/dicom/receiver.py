"""The Storage SCP. pynetdicom runs it in its own threads; an instance is acknowledged only once its file is on
disk and its row is committed, and nothing slower (rendering, analysis) happens before the answer."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import select
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from ..clinical.regions import RegionRules
from ..connections import HOST
from ..files import write_atomically
from ..logthrottle import LogThrottle
from ..store.instances import Committed, Instance
from . import spool
from .incoming import (
    Incoming,
    IncomingError,
    InflatedTooLarge,
    Inflation,
    part10_header,
    read_incoming,
    read_spooled,
)
from .limits import (
    COMMAND_CEILING,
    MIB,
    PDU_HEADER,
    PDU_TIMEOUT,
    READ_PIECE,
    REQUEST_STATES,
    Admission,
    PduLimits,
)
from .metadata import MetadataError, describe
from .spool import Intake, SpoolBudget

logger = logging.getLogger(__name__)
_quiet = LogThrottle(logger)

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
    # The values, and their defaults, come from [dicom] (defaults.cfg); nothing is defaulted twice.
    max_instance_bytes: int  # MAX_INSTANCE_MB
    assoc_timeout: float  # seconds a connection has to send its A-ASSOCIATE-RQ
    max_associations_per_host: int
    max_spool_bytes: int  # MAX_SPOOL_MB: bytes being spooled to disk at once, all associations together


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
        self.limits = PduLimits.from_config(config.max_pdu, config.assoc_timeout, PDU_TIMEOUT)
        self.ae.maximum_pdu_size = self.limits.max_pdu  # never 0 ("no limit"): what we read must be bounded
        self.admission = Admission(config.max_associations, config.max_associations_per_host)
        # Admission counts associations (pynetdicom would count every connection, asking or not, against them).
        # pynetdicom's own count is of live threads, which includes connections just closed to make room and not yet
        # gone: twice the total keeps its check from ever refusing what Admission admitted.
        self.ae.maximum_associations = 2 * self.admission.total
        self.ae.network_timeout = PDU_TIMEOUT
        self.ae.dimse_timeout = PDU_TIMEOUT
        # The DUL's ARTIM timer and the wait for the A-ASSOCIATE-RQ both follow acse_timeout.
        self.ae.acse_timeout = config.assoc_timeout
        self.ae.add_supported_context(Verification)
        # Every storage class in every transfer syntax: what we cannot analyse we still keep, never refuse.
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server: _Server | None = None
        self.activity = activity or Activity()
        self.spool_budget = SpoolBudget(config.max_spool_bytes)

    def start(self) -> None:
        self.config.images_dir.mkdir(parents=True, exist_ok=True)
        handlers = [(evt.EVT_C_STORE, handle_store, [self]), (evt.EVT_C_ECHO, _handle_echo),
                    (evt.EVT_REQUESTED, _handle_requested, [self])]
        # start_server(block=False), with our request handler: make the threaded server, serve it in a thread.
        server = cast(_Server, self.ae.make_server(
            (self.config.address, self.config.port), evt_handlers=handlers,  # type: ignore[arg-type]
            server_class=_Server, request_handler=_RequestHandler,
        ))
        server.receiver = self
        self.ae._servers.append(server)  # as start_server does, so that shutdown finds it
        threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
        self.server = server
        logger.info("DICOM receiver %s listening on %s:%d", self.config.ae_title, self.config.address, self.port)

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.config.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.ae.shutdown()

    def inflation(self) -> Inflation:
        """How a deflated dataset is inflated: to MAX_INSTANCE_MB at most, in memory while it is small and then in
        an unnamed temporary file in the images folder (gone with its handle, even if we are killed), counted in
        the spool budget."""
        folder = self.config.images_dir
        return Inflation(self.config.max_instance_bytes,
                         lambda: cast(BinaryIO, tempfile.SpooledTemporaryFile(max_size=spool.SPOOL_ABOVE, dir=folder)),
                         self.spool_budget)

    def call(self, coro: Awaitable[Committed]) -> Committed:
        """Run a store coroutine on the loop from a pynetdicom thread and wait for its answer."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout=self.config.store_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise


class _Server(ThreadedAssociationServer):
    receiver: Receiver

    def verify_request(self, request, client_address) -> bool:  # type: ignore[no-untyped-def]
        """Refused connections are closed at once, before they cost a thread (see limits.Admission)."""
        host = client_address[0]
        why = self.receiver.admission.connect(request, host)
        if why is None:
            return True
        if why == HOST:
            _quiet.log(f"per-host {host}", logging.WARNING, "Closed a DICOM connection from %s: it already holds %d "
                       "awaiting their association request (MAX_ASSOCIATIONS_PER_HOST)", host,
                       self.receiver.admission.asking.per_key)
        else:
            _quiet.log("total", logging.WARNING, "Closed a DICOM connection from %s: %d connections open in all "
                       "(MAX_ASSOCIATIONS)", host, self.receiver.admission.total)
        return False

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started (out of threads): the slot admitted above is not taken
            self.receiver.admission.closed(request)
            raise


class _BulkSocket(AssociationSocket):
    """Reads a PDU as pynetdicom asks for it (its 6-byte header, then its body), with three differences:
    the body goes straight into one buffer, as much as the kernel holds per call (pynetdicom copies 4 KiB at a
    time: 2,500 calls for a 10 MB radiograph); the length the header declares is judged before anything is
    allocated (PduLimits); and a connection must finish its A-ASSOCIATE-RQ within ASSOC_TIMEOUT of connecting,
    however slowly it trickles bytes, and once associated each PDU within PDU_TIMEOUT of its first byte."""

    _limits: PduLimits
    _opened: float
    _header_next: bool
    _refused: bool
    _pdu_deadline = 0.0

    _associated = False  # once true, the request phase's deadline and ceiling no longer apply

    def adopt(self, limits: PduLimits) -> None:
        self._limits, self._opened, self._header_next, self._refused = limits, time.monotonic(), True, False

    def _state(self) -> str:
        state = self.assoc.dul.state_machine.current_state
        if state not in REQUEST_STATES:
            self._associated = True
        return state

    def _requesting(self) -> bool:
        return self._state() in REQUEST_STATES and not self._associated

    @property
    def ready(self) -> bool:
        if self._refused:
            return False
        if not self.assoc.dimse.msg_queue.empty():
            # Backpressure: a whole message still waits for its handler, so the next one stays in the peer's TCP
            # buffers, not in ours (a peer pipelining C-STOREs cannot queue them in memory). Waiting on ourselves
            # does not count against the peer's idle time. (C-MOVE/C-GET SCPs would need reads here; we are none.)
            self.assoc.dul._idle_timer.restart()
            return False
        return self._readable()

    def _readable(self) -> bool:
        """AssociationSocket.ready with poll() rather than select(), which fails for a descriptor past 1023."""
        if not hasattr(select, "poll"):
            return super().ready
        if self.socket is None or self._is_connected is False:
            return False
        try:
            poller = select.poll()
            poller.register(self.socket, select.POLLIN)
            return bool(poller.poll(0))  # also true on hang-up or error: the read then sees the connection end
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed, as pynetdicom does
            return False

    def recv(self, nr_bytes: int) -> bytearray:
        if not self._header_next:
            self._header_next = True
            return self._read(nr_bytes)
        self._pdu_deadline = time.monotonic() + self._limits.pdu_timeout  # ready() saw its first byte
        header = self._read(nr_bytes)
        if len(header) != PDU_HEADER:
            return header  # pynetdicom treats a short header as the connection closing
        pdu_type, _, length = struct.unpack(">BBL", header)
        if not 0x01 <= pdu_type <= 0x07:
            return header  # pynetdicom aborts without reading a body
        largest = self._limits.largest(requesting=self._requesting())
        if length > largest:
            self._refuse(f"sent a PDU of {length} bytes (we take at most {largest})")
            self._gone()
            return bytearray()
        self._header_next = False
        return header

    def _read(self, nr_bytes: int) -> bytearray:
        if nr_bytes <= READ_PIECE:
            return self._read_into(nr_bytes)
        # Only with a MAX_PDU set above READ_PIECE: memory follows what arrives, not what was declared.
        pieces, remaining = [], nr_bytes
        while remaining:
            piece = self._read_into(min(remaining, READ_PIECE))
            pieces.append(piece)
            if len(piece) < min(remaining, READ_PIECE):
                break
            remaining -= len(piece)
        return bytearray().join(pieces)

    def _read_into(self, nr_bytes: int) -> bytearray:
        assert self.socket is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        done = 0
        try:
            while done < nr_bytes:
                self._arm_timeout()
                count = self.socket.recv_into(view[done:])
                if not count:  # the peer closed: hand back what arrived, as pynetdicom does
                    break
                done += count
        except TimeoutError:
            self._refuse("sent no complete association request within ASSOC_TIMEOUT" if self._requesting()
                         else f"sent no complete PDU within {self._limits.pdu_timeout:g} s")
        except OSError:
            pass  # reset by the peer: the short read below tells pynetdicom the connection is gone
        del view
        if done < nr_bytes:
            del buffer[done:]
            self._gone()
        elif self.socket is not None and not self._refused:
            self.socket.settimeout(self._limits.pdu_timeout)  # our answer to a late request gets the full time
        return buffer

    def _gone(self) -> None:
        """The connection ended. If no A-ASSOCIATE-RQ has arrived, pynetdicom's acceptor thread would wait for one
        until ASSOC_TIMEOUT all the same, holding its slot; an empty primitive is its "timed out" (so it stops now)."""
        if self._state() in ("Sta1", "Sta2") and not self._associated:
            self.assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]

    def _arm_timeout(self) -> None:
        assert self.socket is not None
        if self._requesting():
            self.socket.settimeout(max(0.001, self._opened + self._limits.assoc_timeout - time.monotonic()))
        else:
            self.socket.settimeout(max(0.001, self._pdu_deadline - time.monotonic()))

    def _refuse(self, why: str) -> None:
        """Abort (PS3.8 9.3.8: A-ABORT, invalid PDU parameter value) and close; pynetdicom sees a closed
        connection and ends the association."""
        host = self.assoc.requestor.address
        _quiet.log(f"pdu {host}", logging.WARNING, "Aborted a DICOM connection from %s: it %s", host, why)
        self._refused = True
        sock, self._header_next = self.socket, True
        if sock is None:
            return
        abort = A_ABORT_RQ()
        abort.source, abort.reason_diagnostic = 0x02, 0x06
        with contextlib.suppress(OSError):
            sock.settimeout(1)  # a peer that does not read must not hold us
            sock.sendall(abort.encode())
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


class _IntakeDIMSE(DIMSEServiceProvider):
    """Each message's dataset is received into an Intake (memory, then a spool file, then refused), and its
    command set may not grow past COMMAND_CEILING (pynetdicom would collect fragments of one without end)."""

    _receiver: Receiver
    _command_bytes = 0

    def receive_primitive(self, primitive):  # type: ignore[no-untyped-def]
        if self.message is None:
            message = DIMSEMessage()
            receiver = self._receiver
            message.data_set = Intake(receiver.config.images_dir, receiver.config.max_instance_bytes,
                                      lambda: _spool_header(message, self.assoc), budget=receiver.spool_budget)
            self.message = message
            self._command_bytes = 0
        self._command_bytes += sum(len(data) - 1 for _, data in primitive.presentation_data_value_list
                                   if data and data[0] & 1)
        if self._command_bytes > COMMAND_CEILING:
            host = self.assoc.requestor.address
            _quiet.log(f"command {host}", logging.WARNING, "Aborted a DICOM association from %s: a command set over "
                       "%d bytes", host, COMMAND_CEILING)
            self.dul.event_queue.put("Evt19")  # invalid PDU data: pynetdicom sends A-ABORT and closes
            return
        super().receive_primitive(primitive)


def _spool_header(message: DIMSEMessage, assoc: Association) -> bytes:
    """The file meta that event.file_meta will give the handler, made from the same command set and context."""
    command = message.command_set
    context = assoc._accepted_cx[cast(int, message.context_id)]
    return part10_header(create_file_meta(sop_class_uid=command.AffectedSOPClassUID,
                                          sop_instance_uid=command.AffectedSOPInstanceUID,
                                          transfer_syntax=context.transfer_syntax[0]))


class _TrackedAssociation(Association):
    """Gives the connection's slot back, and drops a half-received dataset, whichever way the association ends."""

    _admission: Admission
    _connection: socket.socket

    def run(self) -> None:
        try:
            super().run()
        finally:
            message = self.dimse.message
            if message is not None and isinstance(message.data_set, Intake):
                message.data_set.discard()
            self._admission.closed(self._connection)


class _RequestHandler(RequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            super().handle()
        except BaseException:
            self.server.receiver.admission.closed(self.request)
            raise

    def _create_association(self):  # type: ignore[no-untyped-def]
        receiver = self.server.receiver
        assoc = super()._create_association()
        # Same objects and state; only the methods above differ.
        assoc.__class__ = _TrackedAssociation
        assoc._admission, assoc._connection = receiver.admission, self.request
        assoc.dul.socket.__class__ = _BulkSocket
        assoc.dul.socket.adopt(receiver.limits)
        assoc.dimse.__class__ = _IntakeDIMSE
        assoc.dimse._receiver = receiver
        return assoc


def _handle_requested(event: evt.Event, receiver: Receiver) -> None:
    """EVT_REQUESTED: the A-ASSOCIATE-RQ arrived. Over MAX_ASSOCIATIONS or the host's share, answer
    A-ASSOCIATE-RJ (rejected-transient, presentation layer: local limit exceeded) as pynetdicom itself would."""
    assoc = cast(_TrackedAssociation, event.assoc)
    why = receiver.admission.requested(assoc._connection)
    if why is None:
        return
    host = assoc.requestor.address
    if why == HOST:
        _quiet.log(f"rejected {host}", logging.WARNING, "Rejected a DICOM association from %s: it already holds %d "
                   "(MAX_ASSOCIATIONS_PER_HOST)", host, receiver.admission.associated.per_key)
    else:
        _quiet.log("rejected", logging.WARNING, "Rejected a DICOM association from %s: %d open in all "
                   "(MAX_ASSOCIATIONS)", host, receiver.config.max_associations)
    assoc.acse.send_reject(0x02, 0x03, 0x02)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def _handle_echo(event: evt.Event) -> int:
    return STATUS_SUCCESS


def handle_store(event: evt.Event, receiver: Receiver) -> int:
    """EVT_C_STORE. Runs in the association's thread; every path answers with a real status."""
    receiver.activity.touch()
    data = cast(C_STORE, event.request).DataSet
    intake = data if isinstance(data, Intake) else None
    try:
        return _store(event, receiver, intake)
    finally:
        if intake is not None:
            intake.discard()  # nothing left once kept; a refused or failed spool file goes


def _store(event: evt.Event, receiver: Receiver, intake: Intake | None) -> int:
    peer = f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"
    if intake is not None and intake.refused:
        if intake.over_budget:
            logger.warning("Refused an instance from %s: spooling it would pass MAX_SPOOL_MB (%d) for all "
                           "instances arriving at once", peer, receiver.config.max_spool_bytes // MIB)
        else:
            logger.warning("Refused an instance from %s: %.1f MB is over MAX_INSTANCE_MB (%d)", peer,
                           intake.size / MIB, receiver.config.max_instance_bytes // MIB)
        return STATUS_OUT_OF_RESOURCES
    try:
        # Decoding is lazy and may fail on any element, so all of it stays inside this try.
        incoming = _read(event, intake, receiver.inflation())
        instance = describe(incoming.dataset, receiver.config.rules, receiver.config.timezone,  # type: ignore[arg-type]
                            pixels=incoming.pixels)
    except InflatedTooLarge as exc:
        if exc.over_budget:
            logger.warning("Refused an instance from %s: inflating its deflated dataset would pass MAX_SPOOL_MB (%d)",
                           peer, receiver.config.max_spool_bytes // MIB)
        else:
            logger.warning("Refused an instance from %s: its deflated dataset inflates past MAX_INSTANCE_MB (%d)",
                           peer, receiver.config.max_instance_bytes // MIB)
        return STATUS_OUT_OF_RESOURCES
    except (MetadataError, IncomingError) as exc:
        logger.warning("Refused an instance from %s: %s", peer, exc)
        return STATUS_DATASET_DOES_NOT_MATCH
    except Exception as exc:
        logger.warning("Refused an instance from %s: cannot decode the dataset (%s)", peer, type(exc).__name__)
        logger.debug("Decode failure detail", exc_info=True)
        return STATUS_CANNOT_UNDERSTAND

    path = receiver.config.images_dir / f"{instance.uid}.dcm"
    try:
        if intake is not None and intake.spooled:
            intake.keep(path)  # the spool file is the stored file: fsynced, renamed, folder fsynced
        else:
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


def _read(event: evt.Event, intake: Intake | None, inflation: Inflation) -> Incoming:
    if intake is not None and intake.spooled:
        with intake.reader() as fp:
            return read_spooled(fp, event.file_meta, inflation)
    return read_incoming(cast(io.BytesIO, cast(C_STORE, event.request).DataSet), event.file_meta, inflation)
