"""Helpers the benchmark scripts share."""
from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM, a grace period, then SIGKILL: a server under test never outlives its benchmark."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
