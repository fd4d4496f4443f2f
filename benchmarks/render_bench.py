"""Rendering speed of xrayvision.dicom.imaging on synthetic CR images.

Run: python benchmarks/render_bench.py
Renders a 2000x2500 16-bit CR 20 times and a 512x512 one 50 times, from a
DICOM file on disk to a PNG (read + decode + LUT + resize + atomic write),
and prints milliseconds per image; to_grey8 alone is timed as well.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xrayvision.dicom.imaging import render_png, to_grey8  # noqa: E402

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def synthetic_cr(rows: int, columns: int, seed: int = 0) -> Dataset:
    """A 12-bit-in-16 MONOCHROME1 CR: smooth 'anatomy' plus quantum noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    y /= rows
    x /= columns
    body = 1800 + 1200 * np.exp(-(((x - 0.5) / 0.3) ** 2 + ((y - 0.5) / 0.4) ** 2))
    ribs = 150 * np.sin(y * 60) * (np.abs(x - 0.5) < 0.35)
    noise = rng.normal(0, 40, size=(rows, columns)).astype(np.float32)
    pixels = np.clip(body + ribs + noise, 0, 4095).astype("<u2")

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 2400, 2400
    ds.PixelData = pixels.tobytes()
    return ds


def bench(label: str, rows: int, columns: int, repeats: int, workdir: Path) -> None:
    ds = synthetic_cr(rows, columns)
    source = workdir / f"{rows}x{columns}.dcm"
    ds.save_as(source, enforce_file_format=True)
    target = workdir / f"{rows}x{columns}.png"
    render_png(source, target)  # warm-up (imports, caches)

    file_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        render_png(source, target)
        file_ms.append((time.perf_counter() - start) * 1000)

    grey_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        to_grey8(ds)
        grey_ms.append((time.perf_counter() - start) * 1000)

    print(
        f"{label:>22}: render_png(file) {statistics.mean(file_ms):6.1f} ms/image "
        f"(median {statistics.median(file_ms):.1f}, n={repeats}); "
        f"to_grey8 {statistics.mean(grey_ms):6.1f} ms/image"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bench("2000x2500 16-bit CR", 2500, 2000, 20, workdir)
        bench("512x512 16-bit CR", 512, 512, 50, workdir)


if __name__ == "__main__":
    main()
