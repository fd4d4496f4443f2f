"""Fast synthetic CR files for the benchmarks (independent of the tests' fixtures).

One pixel buffer per image size is made once (a smooth 'body' plus quantum noise, so it does not compress to
nothing); every file gets its own header (unique SOP, Study and Series Instance UIDs and PatientID) and one row
of fresh noise, so no two files are byte-identical. Headers have a fixed length: `restamp()` gives a file new
identities in place by rewriting its header, without touching the pixels.
"""
from __future__ import annotations

import io
import os
import secrets
import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root
# Placeholder serial numbers; each is replaced by a real one of the same width in every file.
_KINDS = {"sop": 1, "study": 2, "series": 3}
_SERIAL_WIDTH = 9


def _uid(kind: int, stamp: int, serial: int) -> str:
    # Fixed width, no leading zero in any component: "<root><kind>.1<15-digit stamp><9-digit serial>" (53 chars).
    return f"{_ROOT}{kind}.1{stamp:015d}{serial:0{_SERIAL_WIDTH}d}"


def _patient_id(stamp: int, serial: int) -> str:
    return f"BENCH{stamp:015d}{serial:0{_SERIAL_WIDTH}d}"  # letters first: never mistaken for a CNP


def _pixels(rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    y = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, columns, dtype=np.float32)[None, :]
    body = 1800 + 1200 * np.exp(-(((x - 0.5) / 0.3) ** 2 + ((y - 0.5) / 0.4) ** 2))
    ribs = 150 * np.sin(y * 60) * (np.abs(x - 0.5) < 0.35)
    noise = rng.normal(0.0, 40.0, size=(rows, columns)).astype(np.float32)
    return np.clip(body + ribs + noise, 0, 4095).astype("<u2")


class SyntheticCR:
    """Writes CR Image Storage files of one size, Explicit VR Little Endian, 16 bits allocated, 12 stored."""

    def __init__(self, rows: int, columns: int, *, seed: int = 0, stamp: int | None = None) -> None:
        self.rows, self.columns = rows, columns
        self.rng = np.random.default_rng(seed)
        self.stamp = stamp if stamp is not None else secrets.randbelow(10**15)
        self.pixels = _pixels(rows, columns, self.rng)
        self.row_bytes = columns * 2
        self._pixel_view = memoryview(self.pixels.tobytes())
        self._template, self._placeholders = self._build_template()
        self.file_size = len(self._template) + len(self._pixel_view)

    def _build_template(self) -> tuple[bytes, dict[str, bytes]]:
        placeholders = {name: _uid(kind, 0, 0).encode() for name, kind in _KINDS.items()}
        placeholders["patient"] = _patient_id(0, 0).encode()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = placeholders["sop"].decode()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CR_IMAGE_STORAGE
        ds.SOPInstanceUID = placeholders["sop"].decode()
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240611"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.AccessionNumber = ""
        ds.Modality = "CR"
        ds.Manufacturer = "XRayVision benchmark"
        ds.StudyDescription = "Torace"
        ds.SeriesDescription = "Torace AP"
        ds.PatientName = "Bench^Patient"
        ds.PatientID = placeholders["patient"].decode()
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.ProtocolName = "Torace AP"
        ds.ViewPosition = "AP"
        ds.StudyInstanceUID = placeholders["study"].decode()
        ds.SeriesInstanceUID = placeholders["series"].decode()
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = self.rows, self.columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.WindowCenter, ds.WindowWidth = 2400, 2400
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        # Pixel Data last: (7FE0,0010) OW, explicit 32-bit length; the bytes themselves are written apart.
        pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, len(self._pixel_view))
        template = buffer.getvalue() + pixel_header
        for value in placeholders.values():
            assert template.count(value) >= 1, value
        return template, placeholders

    def header(self, serial: int) -> bytes:
        if not 0 < serial < 10**_SERIAL_WIDTH:
            raise ValueError(f"serial {serial} out of range")
        header = self._template
        for name, kind in _KINDS.items():
            header = header.replace(self._placeholders[name], _uid(kind, self.stamp, serial).encode())
        return header.replace(self._placeholders["patient"], _patient_id(self.stamp, serial).encode())

    def sop_uid(self, serial: int) -> str:
        return _uid(_KINDS["sop"], self.stamp, serial)

    def write(self, path: Path, serial: int) -> int:
        """Write one file with identities from `serial` (1..10**9-1) and a row of fresh noise; returns its size."""
        row = serial % self.rows
        start, end = row * self.row_bytes, (row + 1) * self.row_bytes
        noise = self.rng.integers(0, 4096, size=self.columns, dtype="<u2").tobytes()
        parts = [self.header(serial), self._pixel_view[:start], noise, self._pixel_view[end:]]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return self.file_size

    def restamp(self, path: Path, serial: int) -> None:
        """Give an existing file of this generator new UIDs and PatientID, in place (pixels untouched)."""
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, self.header(serial), 0)
        finally:
            os.close(fd)
