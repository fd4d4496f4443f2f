"""Files that are whole or absent: the one way we write images to disk, and the sweep after a crash."""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

_TEMP_GLOB = ".*.tmp"


Buffer = bytes | memoryview


def write_atomically(path: Path, data: Buffer | Sequence[Buffer]) -> None:
    """Write `data` (one buffer, or pieces written in order without joining them) under a temporary name in the
    same folder, fsync, rename over `path`, fsync the folder."""
    pieces = [data] if isinstance(data, (bytes, memoryview)) else data
    # os.open rather than mkstemp: mkstemp forces mode 0600, which the rename would carry over.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, flags, 0o666)
    try:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (not possible on every platform, hence best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sweep_partial_files(folder: Path) -> int:
    """Remove the temporary files an interrupted write_atomically left behind; returns how many."""
    removed = 0
    if folder.is_dir():
        for path in folder.glob(_TEMP_GLOB):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def file_inside(folder: Path, name: str) -> Path | None:
    """The regular file `name` under `folder`, or None: missing, a folder, outside it (.., absolute, a symlink out),
    or not a path at all (too long, a NUL). It touches the disk: call it from a thread."""
    base = folder.resolve()
    try:
        path = (base / name).resolve()
        return path if path.is_relative_to(base) and path.is_file() else None
    except (OSError, ValueError):
        return None
