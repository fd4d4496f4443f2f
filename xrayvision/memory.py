"""Keeping the process small and the receiver first. On glibc, large image buffers freed by Python stay with the
allocator, so we limit its per-thread arenas and hand free pages back when the pipeline goes idle; and rendering
runs at a lower priority than receiving."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc mallopt parameter
ARENAS = 2  # one per core here; each pynetdicom association thread would otherwise get its own


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only: musl and others have neither
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas() -> bool:
    """Call once at start, before threads allocate. False where the C library is not glibc."""
    libc = _libc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, ARENAS))


def release_free_memory() -> bool:
    """Return freed heap pages to the system (cheap when there is little to return)."""
    libc = _libc()
    return bool(libc and libc.malloc_trim(0))


BACKGROUND_NICENESS = 10


def lower_thread_priority() -> bool:
    """Make the calling thread yield the CPU to the others (Linux schedules threads one by one): rendering runs
    while images arrive, but an image waiting for its acknowledgement comes first."""
    if sys.platform != "linux":
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except OSError:
        return False
    return True
