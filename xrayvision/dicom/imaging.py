"""Turn a stored DICOM image into an 8-bit greyscale PNG.

The output serves two audiences: people looking at the study in the web UI and
the vision model that triages it.  Both want the image as a radiologist would
see it on first opening, so the standard greyscale pipeline is followed, using
pydicom's own implementation of each step:

1. decode the first frame (``pydicom.pixels`` decoders); colour images are
   reduced to luminance, PALETTE COLOR goes through ``apply_color_lut`` first;
2. Modality LUT (``apply_modality_lut``: rescale slope/intercept or a LUT);
3. VOI LUT sequence (``apply_voi``) or the first window centre/width
   (``apply_windowing``), whose output range is mapped exactly onto 0-255; with
   no usable VOI information a robust 0.5-99.5 percentile window is used;
4. MONOCHROME1 inversion, last;
5. downscale so the long side is at most ``max_side`` and write the PNG
   atomically.

Speed: for integer pixel data, steps 2-4 are pointwise functions of the stored
value, so they are evaluated once per distinct stored value (at most 2**16 for
16-bit data) to build a uint8 lookup table, which is then applied to the image
with a single indexing pass.  No full-size float64 image is ever made in that
path, and percentiles are taken on a strided subsample.

Everything here is synchronous; callers run it in a thread executor.
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    as_pixel_options,
    get_decoder,
)
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from ..files import write_atomically

__all__ = ["RenderError", "Rendered", "render_png", "to_grey8"]

logger = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Integer images whose stored values span fewer than this many distinct values
# are rendered through a lookup table (covers every 8- and 16-bit image).
_LUT_MAX_SPAN = 1 << 20

# The percentile window is computed on a strided subsample of about this many
# pixels.
_SAMPLE_PIXELS = 250_000
_PERCENTILES = (0.5, 99.5)

# Far outside any window: used to probe the output range of apply_windowing.
_PROBE = 1e300

# Rec. 601 luma weights (the same as DICOM YBR_FULL's Y).
_LUMA = (0.299, 0.587, 0.114)

# zlib level 1: ~4% larger than level 3 but 10 ms faster on a 896 px radiograph
# (level 6, Pillow's default, costs ~120 ms).
_PNG_COMPRESS_LEVEL = 1
_MAX_REASON = 160


class RenderError(Exception):
    """The pixels could not be decoded or rendered; str(e) is a short human reason."""


@dataclass(frozen=True)
class Rendered:
    """Size of the written PNG."""

    width: int
    height: int


# --------------------------------------------------------------------------
# Public API


def to_grey8(ds: Dataset) -> np.ndarray:
    """Return the first frame of ``ds`` as a 2-D uint8 display image, full size.

    Raises RenderError (and nothing else) when the pixels cannot be decoded or
    rendered.
    """
    try:
        return _to_grey8(ds)
    except RenderError:
        raise
    except MemoryError as exc:
        raise RenderError("image too large to render") from exc
    except Exception as exc:  # any pydicom/numpy failure becomes a RenderError
        raise RenderError(f"cannot render pixel data: {_short(exc)}") from exc


def render_png(
    source: Path | str | os.PathLike[str] | Dataset,
    target: Path,
    max_side: int = 896,
) -> Rendered:
    """Render ``source`` (a DICOM file or dataset) to a greyscale PNG at ``target``.

    The image is downscaled (never upscaled) so that its long side is at most
    ``max_side`` pixels.  ``target`` only ever appears complete: the PNG is
    written to a hidden temporary file in the same directory, fsynced and then
    renamed over ``target``.  Raises RenderError for any failure to read,
    decode, render or write; ValueError only for a nonsensical ``max_side``.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    target = Path(target)
    ds = source if isinstance(source, Dataset) else _read_dataset(Path(source))
    grey = to_grey8(ds)
    try:
        image = _downscale(Image.fromarray(grey), max_side)
    except Exception as exc:
        raise RenderError(f"cannot resize image: {_short(exc)}") from exc
    try:
        _write_png_atomic(image, target)
    except Exception as exc:
        raise RenderError(f"cannot write PNG: {_short(exc)}") from exc
    return Rendered(width=image.width, height=image.height)


# --------------------------------------------------------------------------
# Reading and decoding


def _read_dataset(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except FileNotFoundError as exc:
        raise RenderError("file not found") from exc
    except InvalidDicomError:
        pass  # no preamble / file meta: retried below
    except OSError as exc:
        raise RenderError(f"cannot read file: {exc.strerror or _short(exc)}") from exc
    except Exception as exc:
        raise RenderError(f"cannot read DICOM file: {_short(exc)}") from exc

    # Old files (ACR-NEMA style, or written without the "DICM" header) are
    # still readable with force=True; anything without pixels is not DICOM.
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise RenderError("not a DICOM file") from exc
    if not any(kw in ds for kw in _PIXEL_KEYWORDS):
        raise RenderError("not a DICOM file")
    return ds


def _transfer_syntax(ds: Dataset) -> UID:
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if tsyntax:
        return UID(tsyntax)
    # No file meta (e.g. a headerless file read with force=True): fall back on
    # the encoding the dataset was actually read with.
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        raise RenderError("no transfer syntax")
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _codec_label(tsyntax: UID) -> str:
    keyword = tsyntax.keyword or ""
    if keyword.startswith("HTJ2K"):
        return "HTJ2K"
    if keyword.startswith("JPEG2000"):
        return "JPEG 2000"
    if keyword.startswith("JPEGLS"):
        return "JPEG-LS"
    if keyword.startswith("JPEG"):
        return "JPEG"
    if keyword.startswith("RLE"):
        return "RLE"
    return "pixel data"


def _decode_first_frame(ds: Dataset) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode only the first frame; return it with pydicom's pixel metadata."""
    if not any(kw in ds for kw in _PIXEL_KEYWORDS):
        raise RenderError("no pixel data")
    tsyntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise RenderError(f"unsupported transfer syntax: {tsyntax.name}") from exc
    try:
        # A view saves a copy, but is impossible when unused high bits must be masked (pydicom then warns).
        full_width = ds.get("BitsStored") == ds.get("BitsAllocated")
        opts = as_pixel_options(ds, view_only=full_width)
        arr, meta = decoder.as_array(ds, index=0, **opts)
    except MemoryError as exc:
        raise RenderError("image too large to decode") from exc
    except Exception as exc:
        raise RenderError(f"cannot decode {_codec_label(tsyntax)}: {_short(exc)}") from exc

    if arr.ndim not in (2, 3) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise RenderError(f"unexpected pixel array shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return arr, meta


# --------------------------------------------------------------------------
# Pixel pipeline


def _to_grey8(ds: Dataset) -> np.ndarray:
    arr, meta = _decode_first_frame(ds)
    photometric = str(
        meta.get("photometric_interpretation") or ds.get("PhotometricInterpretation") or ""
    ).strip().upper()

    if arr.ndim == 3:
        samples = arr.shape[2]
        if samples not in (3, 4):
            raise RenderError(f"unsupported samples per pixel: {samples}")
        if photometric.startswith("YBR"):
            # Not converted by the decoder: the first plane is already luma.
            return _scale_colour(arr[:, :, 0].astype(np.float32), _nominal_max(meta, ds))
        return _scale_colour(_luminance(arr), _nominal_max(meta, ds))

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        top = 255.0 if rgb.dtype == np.uint8 else 65535.0
        return _scale_colour(_luminance(rgb), top)

    if photometric not in ("MONOCHROME1", "MONOCHROME2", ""):
        logger.warning("treating single-sample %r pixels as MONOCHROME2", photometric)
    return _monochrome(arr, ds, invert=photometric == "MONOCHROME1")


def _nominal_max(meta: dict[str, Any], ds: Dataset) -> float:
    bits = meta.get("bits_stored") or ds.get("BitsStored") or meta.get("bits_allocated") or 8
    return float(2 ** int(bits) - 1)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    channels = rgb[:, :, :3].astype(np.float32)
    luma = channels[:, :, 0] * np.float32(_LUMA[0])
    luma += channels[:, :, 1] * np.float32(_LUMA[1])
    luma += channels[:, :, 2] * np.float32(_LUMA[2])
    return luma


def _scale_colour(luma: np.ndarray, top: float) -> np.ndarray:
    # Colour images are display-ready: no windowing, nominal range to 0-255.
    return _linear_to_uint8(luma, 0.0, top)


def _monochrome(arr: np.ndarray, ds: Dataset, invert: bool) -> np.ndarray:
    if arr.dtype.kind in "ui":
        lo, hi = int(arr.min()), int(arr.max())
        if hi - lo < _LUT_MAX_SPAN:
            return _monochrome_via_lut(arr, ds, invert, lo, hi)
    # Float pixel data or a huge integer span: evaluate on the image itself.
    values, use_voi = _modality(arr, ds)
    grey = _values_to_grey8(values, _subsample(values), values, ds, use_voi)
    return np.subtract(255, grey, out=grey) if invert else grey


def _monochrome_via_lut(
    arr: np.ndarray, ds: Dataset, invert: bool, lo: int, hi: int
) -> np.ndarray:
    # Index the table directly with unsigned pixels; offset anything else.
    if arr.dtype.kind == "u" and hi < _LUT_MAX_SPAN:
        base, index = 0, arr
    else:
        base = lo
        index = np.subtract(arr, lo, dtype=np.int32)  # span < _LUT_MAX_SPAN
    # int64 keeps pydicom's LUT arithmetic (value - first mapped) from overflowing.
    domain = np.arange(base, hi + 1, dtype=np.int64)
    values, use_voi = _modality(domain, ds)
    sample = values[_subsample(index)]
    lut = _values_to_grey8(values, sample, values[lo - base :], ds, use_voi)
    if invert:
        lut = 255 - lut
    return lut[index]


def _modality(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, bool]:
    """Apply the Modality LUT; return (values, applied).

    An unusable Modality LUT only affects display intensities, so it is
    skipped (the caller then ignores VOI too, whose units would not match)
    rather than failing the render.
    """
    try:
        return apply_modality_lut(values, ds), True
    except Exception as exc:
        logger.warning("ignoring unusable Modality LUT: %s", _short(exc))
        return values, False


def _subsample(image: np.ndarray) -> np.ndarray:
    step = max(1, math.ceil(math.sqrt(image.size / _SAMPLE_PIXELS)))
    return image[::step, ::step]


def _values_to_grey8(
    values: np.ndarray,
    sample: np.ndarray,
    present: np.ndarray,
    ds: Dataset,
    use_voi: bool = True,
) -> np.ndarray:
    """Map modality-LUT output to uint8 via the VOI transform or a percentile window.

    ``values`` is what to map (the image, or one entry per stored value),
    ``sample`` a subsample of the image's values for the percentile window and
    ``present`` values covering all that occur in the image (for the fallback
    on degenerate windows).
    """
    voi = _apply_voi(values, ds) if use_voi else None
    if voi is not None:
        out, y_min, y_max = voi
        return _linear_to_uint8(out, y_min, y_max)

    window = _percentile_window(sample)
    if window is None:
        window = _finite_range(present)
    if window is None:
        return np.zeros(values.shape, dtype=np.uint8)
    return _linear_to_uint8(values, *window)


def _percentile_window(sample: np.ndarray) -> tuple[float, float] | None:
    sample = np.asarray(sample).ravel()
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    low, high = (float(v) for v in np.percentile(sample, _PERCENTILES))
    return (low, high) if high > low else None


def _finite_range(values: np.ndarray) -> tuple[float, float] | None:
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else None


def _linear_to_uint8(values: np.ndarray, y_min: float, y_max: float) -> np.ndarray:
    """Map y_min..y_max linearly onto 0..255 (y_max < y_min inverts), clipped."""
    dtype = np.float64 if values.size <= 1 << 16 else np.float32
    scale = 255.0 / (y_max - y_min)
    out = np.asarray(values, dtype=dtype) - dtype(y_min)
    out *= dtype(scale)
    np.clip(out, 0.0, 255.0, out=out)
    np.nan_to_num(out, copy=False, nan=0.0)
    np.rint(out, out=out)
    return out.astype(np.uint8)


# --------------------------------------------------------------------------
# VOI


def _apply_voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float] | None:
    """Apply the dataset's VOI transform; return (output, y_min, y_max) or None.

    Like ``pydicom.pixels.apply_voi_lut`` (prefer_lut=True): a VOI LUT sequence
    wins over window centre/width, and the first item/window is used.  Calling
    the two pydicom functions directly tells us which one ran, and so the
    exact output range to map onto 0-255.  An unusable VOI LUT falls back to
    the window, an unusable window to the percentile window (None).
    """
    item = _first_voi_lut_item(ds)
    if item is not None:
        try:
            return _apply_voi_lut_sequence(values, ds, item)
        except Exception as exc:
            logger.warning("ignoring unusable VOI LUT Sequence: %s", _short(exc))
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            return _apply_window(values, ds)
        except Exception as exc:
            logger.warning("ignoring unusable window centre/width: %s", _short(exc))
    return None


def _first_voi_lut_item(ds: Dataset) -> Dataset | None:
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    return item


def _apply_voi_lut_sequence(
    values: np.ndarray, ds: Dataset, item: Dataset
) -> tuple[np.ndarray, float, float]:
    entries, first_mapped, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 1 << 16
    if not 1 <= bits <= 16:
        raise ValueError(f"{bits} bits per VOI LUT entry")

    # Out-of-table inputs map to the first/last entry anyway; clipping them
    # first keeps pydicom's uint16 index arithmetic from wrapping around.  The
    # LUT's input is integral, so round rescaled (float) values.
    index = values
    if index.dtype.kind == "f":
        index = np.rint(np.nan_to_num(index, nan=float(first_mapped)))
    index = np.clip(index, first_mapped, first_mapped + entries - 1).astype(np.int64)

    lut_ds = ds
    if bits == 8 and entries > 256:
        # pydicom 3.0 holds the table indices in the entry dtype, uint8 here,
        # so indices >= 256 wrap.  Run the same table declared as 16-bit: the
        # entry values are unchanged, the indices no longer wrap.
        lut_ds = _voi_lut_proxy(ds, item, [entries, first_mapped, 16])
    out = apply_voi(index, lut_ds, index=0)
    # PS3.3 C.11.2.1.1: entries are `bits`-bit unsigned, output 0..2**bits-1.
    return out, 0.0, float(2**bits - 1)


def _voi_lut_proxy(ds: Dataset, item: Dataset, descriptor: list[int]) -> Dataset:
    """A minimal dataset holding ``item`` with another LUT descriptor (ds untouched)."""
    proxy_item = Dataset()
    proxy_item.LUTDescriptor = descriptor
    proxy_item.add(item["LUTData"])
    proxy = Dataset()
    proxy.VOILUTSequence = [proxy_item]
    if getattr(ds, "file_meta", None) is not None:
        proxy.file_meta = ds.file_meta  # LUT data endianness
    proxy.set_original_encoding(*ds.original_encoding)
    return proxy


def _apply_window(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float]:
    # apply_windowing's output range is not 0..1 or 0..255 but the nominal
    # input range: 0..2**BitsStored-1 (signed range if PixelRepresentation is
    # 1, 0..2**n-1 after a Modality LUT Sequence), passed through the rescale
    # when RescaleSlope/Intercept exist.  Rather than re-derive that, probe
    # pydicom with values far outside any window: it returns exactly its
    # y_min and y_max (for SIGMOID, the asymptotes).
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = apply_windowing(values, ds, index=0)
        probe = apply_windowing(np.array([-_PROBE, _PROBE]), ds, index=0)
    y_min, y_max = float(probe[0]), float(probe[1])
    if not (math.isfinite(y_min) and math.isfinite(y_max)) or y_min == y_max:
        raise ValueError("degenerate window output range")
    if not np.isfinite(out).all():
        raise ValueError("window produced non-finite values")
    return out, y_min, y_max


# --------------------------------------------------------------------------
# Resizing and writing


def _downscale(image: Image.Image, max_side: int) -> Image.Image:
    width, height = image.size
    long_side = max(width, height)
    if long_side <= max_side:
        return image
    scale = max_side / long_side
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # A box reduction by the whole factor first, then Lanczos for the rest:
    # 12 ms instead of 28 ms for a 2000x2500 radiograph, which matters while
    # images arrive; at 896 px the difference in sharpness is not visible.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0)


def _write_png_atomic(image: Image.Image, target: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    write_atomically(target, buffer.getbuffer())


def _short(exc: BaseException) -> str:
    """First line of the exception message, minus pydicom's " - " elaborations."""
    text = str(exc).strip().splitlines()
    reason = text[0].strip() if text else ""
    head = reason.split(" - ", 1)[0].strip()
    if len(head) >= 20:
        reason = head
    if not reason:
        reason = type(exc).__name__
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 3].rstrip() + "..."
    return reason
