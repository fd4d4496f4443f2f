"""A received C-STORE dataset, read the cheap way: every element but the pixel data is decoded, the pixel data is
only measured, and the file is written from pynetdicom's own buffer without copying it (or, for a dataset spooled to
disk as it arrived, read from that file, which becomes the stored one)."""
from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from pydicom import Dataset
from pydicom.encaps import generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
_PREAMBLE = b"\x00" * 128 + b"DICM"


class IncomingError(ValueError):
    """The pixel data's framing is broken (its message says how)."""


class InflatedTooLarge(Exception):
    """A deflated dataset inflates past the instance limit (a "deflate bomb", or merely too large), or its
    inflated copy would take the spool files past their budget (`over_budget`)."""

    def __init__(self, limit: int, over_budget: bool = False) -> None:
        super().__init__(f"its deflated dataset inflates to more than {limit} bytes")
        self.limit = limit
        self.over_budget = over_budget


class Budget(Protocol):
    """spool.SpoolBudget, as inflate() uses it: an inflated copy on disk counts like a spool file."""

    def take(self, count: int) -> bool: ...
    def give_back(self, count: int) -> None: ...


@dataclass(frozen=True)
class Inflation:
    """How a deflated dataset may be inflated: at most `limit` bytes, into `scratch()` (a file-like object the
    caller chooses: memory, or a temporary file once large), each byte counted in `budget` while it is held."""

    limit: int
    scratch: Callable[[], BinaryIO] = io.BytesIO
    budget: Budget | None = None


INFLATE_PIECE = 1024 * 1024  # bytes fed to the decompressor, and taken from it, at a time


@dataclass(frozen=True)
class PixelData:
    """What the stored bytes hold: a native length, or a count of encapsulated fragments."""

    length: int | None  # bytes of native pixel data; None when encapsulated
    fragments: int | None  # encapsulated fragments, the basic offset table not counted


@dataclass(frozen=True)
class Incoming:
    dataset: Dataset  # everything but the pixel data, with its file meta
    pixels: PixelData | None  # None: the object carries no pixel data
    buffers: tuple[bytes | memoryview, ...]  # the Part 10 file, in pieces


def read_incoming(dataset_buffer: io.BytesIO, file_meta: Dataset, inflation: Inflation) -> Incoming:
    """Decode the dataset pynetdicom received in `dataset_buffer`, stopping before the pixel data. A deflated one
    is inflated as `inflation` allows (else InflatedTooLarge)."""
    syntax = UID(file_meta.TransferSyntaxUID)
    if syntax.is_deflated:
        dataset_buffer.seek(0)
        dataset, pixels = _read_deflated(dataset_buffer, syntax, inflation)
    else:
        dataset_buffer.seek(0)
        dataset = read_dataset(dataset_buffer, syntax.is_implicit_VR, syntax.is_little_endian,
                               stop_when=lambda tag, vr, length: tag == PIXEL_DATA)
        pixels = _measure(dataset_buffer, syntax, len(dataset_buffer.getbuffer()))
    dataset.file_meta = file_meta
    return Incoming(dataset, pixels, (part10_header(file_meta), dataset_buffer.getbuffer()))


def read_spooled(fp: BinaryIO, file_meta: Dataset, inflation: Inflation) -> Incoming:
    """The same, for a dataset spooled to a file (`fp` at the dataset's start); the file itself is the stored one,
    so no buffers come back."""
    syntax = UID(file_meta.TransferSyntaxUID)
    start = fp.tell()
    end = fp.seek(0, io.SEEK_END)
    fp.seek(start)
    if syntax.is_deflated:
        dataset, pixels = _read_deflated(fp, syntax, inflation)
    else:
        dataset = read_dataset(fp, syntax.is_implicit_VR, syntax.is_little_endian,
                               stop_when=lambda tag, vr, length: tag == PIXEL_DATA)
        pixels = _measure(fp, syntax, end, walk=_count_items)
    dataset.file_meta = file_meta
    return Incoming(dataset, pixels, ())


def part10_header(file_meta: Dataset) -> bytes:
    """The preamble, prefix and file meta group that precede a received dataset in its .dcm file."""
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, file_meta, enforce_standard=True)
    return _PREAMBLE + meta.getvalue()


def inflate(fp: BinaryIO, out: BinaryIO, limit: int, budget: Budget | None = None) -> int:
    """Inflate the raw deflate stream (no zlib header, as DICOM's deflated syntax has it) from `fp`'s position into
    `out`, piece by piece, to at most `limit` bytes: a megabyte of deflated zeros would otherwise become a gigabyte.
    Returns the bytes written, each taken from `budget`: the caller gives them back."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    room = limit + 1  # one byte past the limit tells "too large" from "exactly the limit"

    def emit(data: bytes) -> None:
        nonlocal size
        if not data:
            return
        if size + len(data) > limit:
            raise InflatedTooLarge(limit)
        if budget is not None and not budget.take(len(data)):
            raise InflatedTooLarge(limit, over_budget=True)
        size += len(data)
        out.write(data)

    try:
        while not inflater.eof and (piece := fp.read(INFLATE_PIECE)):
            while piece and not inflater.eof:
                emit(inflater.decompress(piece, min(room - size, INFLATE_PIECE)))  # bounded per call, too
                piece = inflater.unconsumed_tail
        emit(inflater.flush(min(room - size, INFLATE_PIECE)))
    except BaseException:
        if budget is not None and size:
            budget.give_back(size)
        raise
    return size


def _read_deflated(fp: BinaryIO, syntax: UID, inflation: Inflation) -> tuple[Dataset, PixelData | None]:
    # Rare: the whole stream is compressed. Inflated (bounded, see inflate) into scratch space, it is read as any
    # explicit VR little endian dataset is: stopping before the pixel data, which is only measured.
    with inflation.scratch() as scratch:
        taken = inflate(fp, scratch, inflation.limit, inflation.budget)
        try:
            scratch.seek(0)
            dataset = read_dataset(scratch, False, True, stop_when=lambda tag, vr, length: tag == PIXEL_DATA)
            pixels = _measure(scratch, syntax, taken, walk=_count_items)
        finally:
            if inflation.budget is not None and taken:
                inflation.budget.give_back(taken)
    return dataset, pixels


def _count_fragments(fp: BinaryIO) -> int:
    return sum(1 for _ in generate_fragments(fp))  # type: ignore[arg-type]


def _count_items(fp: BinaryIO) -> int:
    """generate_fragments' walk without reading the fragments: a file's fragment can be hundreds of MB."""
    count = 0
    while len(tag := fp.read(4)) == 4:
        group, element = struct.unpack("<HH", tag)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000):
            raise ValueError(f"unexpected tag ({group:04X},{element:04X}) among the fragment items")
        if len(raw := fp.read(4)) != 4:
            raise ValueError("the data ends inside an item header")
        (length,) = struct.unpack("<L", raw)
        if length == UNDEFINED_LENGTH:
            raise ValueError("an item of undefined length")
        fp.seek(length, io.SEEK_CUR)
        count += 1
    return count


def _measure(fp: BinaryIO, syntax: UID, end: int,
             walk: Callable[[BinaryIO], int] = _count_fragments) -> PixelData | None:
    """Read the pixel data element's header where read_dataset stopped; walk the fragment items if encapsulated."""
    start = fp.tell()
    header = fp.read(12)
    if len(header) < 8:
        return None
    endian = "<" if syntax.is_little_endian else ">"
    group, element = struct.unpack(f"{endian}HH", header[:4])
    if (group << 16 | element) != PIXEL_DATA:
        return None
    if syntax.is_implicit_VR:
        (length,) = struct.unpack(f"{endian}L", header[4:8])
        fp.seek(start + 8)
    else:
        (length,) = struct.unpack(f"{endian}L", header[8:12])
        fp.seek(start + 12)
    if length != UNDEFINED_LENGTH:
        available = end - fp.tell()
        return PixelData(min(length, available), None)
    try:
        # Item headers only; each fragment is a slice of a buffer we already hold.
        count = walk(fp) - 1
    except ValueError as exc:
        raise IncomingError(f"encapsulated pixel data is malformed ({exc})") from None
    return PixelData(None, count)


def measure_decoded(dataset: Dataset, syntax: UID) -> PixelData | None:
    """The same measure, of a dataset already decoded with its pixel data."""
    if "PixelData" not in dataset:
        return None
    value = dataset["PixelData"].value
    if syntax.is_encapsulated:
        try:
            return PixelData(None, sum(1 for _ in generate_fragments(value)) - 1)
        except ValueError as exc:
            raise IncomingError(f"encapsulated pixel data is malformed ({exc})") from None
    return PixelData(len(value), None)
