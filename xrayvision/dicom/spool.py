"""Where an arriving C-STORE dataset is kept while its fragments come in: in memory while it is small (the fast path
of an ordinary radiograph), then in a temporary file in the images folder (a large DX or mammography file does not
sit in memory, and becomes the stored file by a rename), and past MAX_INSTANCE_MB nowhere: the rest is counted and
dropped, and the handler answers Out of Resources. The spool files of all associations together may hold at most
MAX_SPOOL_MB (SpoolBudget): the port is unauthenticated, and each association could otherwise fill the disk with an
instance it never finishes."""
from __future__ import annotations

import contextlib
import io
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .limits import MIB

# Above this many bytes a dataset goes to disk as it arrives. Timed ad hoc (20 x 10 MB from storescu, best of 6)
# the spooled path was as fast as memory (both write the file once), so the line only keeps ordinary radiographs on
# the in-memory path and bounds what an association holds: 32 associations x 16 MiB at most.
SPOOL_ABOVE = 16 * MIB


class SpoolBudget:
    """Bytes in spool files now, all associations together, and the most there may be. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> bool:
        with self._lock:
            if self.used + count > self.limit:
                return False
            self.used += count
            return True

    def give_back(self, count: int) -> None:
        with self._lock:
            self.used -= count


class Intake(io.BytesIO):
    """pynetdicom's buffer for one message's dataset: DIMSEMessage.decode_msg only ever calls write() on it, so
    the choice of where the bytes go is made here, fragment by fragment."""

    def __init__(self, folder: Path, limit: int, header: Callable[[], bytes], spool_above: int | None = None,
                 budget: SpoolBudget | None = None) -> None:
        super().__init__()
        self.budget = budget
        self.charged = 0  # bytes of this spool file counted in the budget
        self.over_budget = False  # refused because the budget was spent, not for its own size
        self.folder = folder
        self.limit = limit  # bytes; more than this is refused
        self.spool_above = SPOOL_ABOVE if spool_above is None else spool_above
        self._header = header  # the Part 10 preamble and file meta, asked for only when spooling starts
        self.size = 0  # dataset bytes the peer sent, kept or not
        self.refused = False
        self.path: Path | None = None  # the temporary file, once spooled
        self.header_length = 0
        self._file: BinaryIO | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        count = len(data)
        self.size += count
        if self.refused:
            return count
        if self.size > self.limit:
            self.refused = True
            self.discard()
            self.seek(0)
            self.truncate()  # before the handler runs, so nothing holds a view of the buffer yet
            return count
        if self._file is None and self.size > self.spool_above:
            if not self._charge(self.size):  # what is in memory, and this fragment, go to disk
                return count
            self._spool()
        elif self._file is not None and not self._charge(count):
            return count
        if self._file is not None:
            self._file.write(data)
        else:
            super().write(data)
        return count

    def _charge(self, count: int) -> bool:
        if self.budget is None or self.budget.take(count):
            self.charged += count
            return True
        self.refused = self.over_budget = True
        self.discard()
        self.seek(0)
        self.truncate()
        return False

    @property
    def spooled(self) -> bool:
        return self._file is not None

    def _spool(self) -> None:
        header = self._header()
        # A name the start-up sweep removes (files.sweep_partial_files) if we are killed before the rename.
        path = self.folder / f".spool-{secrets.token_hex(8)}.tmp"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        self._file = open(fd, "wb", buffering=MIB)  # noqa: SIM115 - kept open across fragments
        self.path = path
        self._file.write(header)
        self._file.write(self.getbuffer())
        self.header_length = len(header)
        self.seek(0)
        self.truncate()  # the memory copy is no longer needed

    def reader(self) -> BinaryIO:
        """The spooled file, written out, for reading from the start of the dataset."""
        assert self._file is not None and self.path is not None
        self._file.flush()
        fp = open(self.path, "rb")  # noqa: SIM115 - the caller closes it
        fp.seek(self.header_length)
        return fp

    def keep(self, target: Path) -> None:
        """Make the spooled file `target`: fsync it, rename it over `target`, fsync the folder."""
        assert self._file is not None and self.path is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.path, target)
        self._file, self.path = None, None
        self._uncharge()  # a stored file, no longer a spool file
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:
            pass  # not possible on every platform; best effort, as files.write_atomically does
        finally:
            os.close(fd)

    def _uncharge(self) -> None:
        if self.budget is not None and self.charged:
            self.budget.give_back(self.charged)
        self.charged = 0

    def discard(self) -> None:
        """Drop the spool file, if any; safe to call twice, and after keep(). (Memory goes with the primitive.)"""
        self._uncharge()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None
