"""Turns stored radiographs into PNGs after they were acknowledged: one job at a time in an executor,
resumed from the store after a restart."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from ..memory import release_free_memory
from ..store import Store, exams
from ..tasks import cancel_and_wait
from .imaging import RenderError, render_png

logger = logging.getLogger(__name__)

# While images keep arriving, each render waits for a pause of QUIET seconds, but never more than YIELD_AT_MOST:
# acknowledging a modality comes first, and a long burst still gets rendered as it goes.
QUIET = 0.3
YIELD_AT_MOST = 1.0


class Renderer:
    def __init__(
        self,
        store: Store,
        images_dir: Path,
        executor: Executor,
        *,
        max_side: int,
        keep_dicom: bool,
        on_rendered: Callable[[str], None] = lambda uid: None,
        receiving: Callable[[float], bool] = lambda within: False,
    ) -> None:
        self.store = store
        self.images_dir = images_dir
        self.executor = executor
        self.max_side = max_side
        self.keep_dicom = keep_dicom
        self.on_rendered = on_rendered
        self.receiving = receiving
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()

    def submit(self, uid: str, dicom_name: str) -> None:
        self.idle.clear()
        self._queue.put_nowait((uid, dicom_name))

    async def start(self) -> None:
        # Whatever was acknowledged but not rendered before a stop or a crash comes first.
        for uid, dicom_name in await exams.awaiting_render(self.store):
            self.submit(uid, dicom_name)
        if self._queue.empty():
            self.idle.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="renderer")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            uid, dicom_name = await self._queue.get()
            waited = 0.0
            while self.receiving(QUIET) and waited < YIELD_AT_MOST:
                await asyncio.sleep(0.05)
                waited += 0.05
            try:
                await self._render_one(loop, uid, dicom_name)
            except Exception:  # the outer edge of this task: log and go on with the next exam
                logger.exception("Rendering %s failed unexpectedly", uid)
            if self._queue.empty():
                self.idle.set()
                # Decoded radiographs are large: give their pages back while nothing is waiting.
                await loop.run_in_executor(self.executor, release_free_memory)

    async def _render_one(self, loop: asyncio.AbstractEventLoop, uid: str, dicom_name: str) -> None:
        source = self.images_dir / dicom_name
        png_name = f"{uid}.png"
        try:
            await loop.run_in_executor(
                self.executor, render_png, source, self.images_dir / png_name, self.max_side
            )
        except RenderError as exc:
            logger.warning("Exam %s cannot be rendered: %s", uid, exc)
            await exams.mark_error(self.store, uid, f"cannot render the image: {exc}")
            return
        await exams.mark_rendered(self.store, uid, png_name, self.keep_dicom)
        if not self.keep_dicom:
            # Only now that the PNG and its row are committed may the .dcm go.
            await loop.run_in_executor(self.executor, _unlink, source)
        self.on_rendered(uid)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
