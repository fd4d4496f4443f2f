"""The Store: one aiosqlite connection that writes, a few read-only ones that read, and the migrations."""
from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from .schema import MIGRATIONS, SCHEMA_VERSION

logger = logging.getLogger(__name__)

READERS = 2  # read connections; each is its own thread, so reads run beside the writer and each other
BUSY_TIMEOUT_MS = 10_000
MEMO_SIZE = 2000  # remembered reads; forgotten all at once when full


class StoreClosedError(RuntimeError):
    """The store was used after close()."""


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer XRayVision; we refuse to guess at its shape."""


async def _prepare(conn: aiosqlite.Connection, *, writer: bool) -> None:
    conn.row_factory = sqlite3.Row
    await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA foreign_keys = ON")
    if writer:
        await conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before we tell a modality its image is safe.
        await conn.execute("PRAGMA synchronous = FULL")
    else:
        await conn.execute("PRAGMA query_only = ON")


class Store:
    """SQLite behind one writer. Writes are transactions under a lock; reads use their own connections."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._reader_cycle: Iterator[aiosqlite.Connection] = iter(())
        self._write_lock = asyncio.Lock()
        self._closed = False
        self.generation = 0  # goes up with every committed write: reads remembered at an older one are stale
        self._memo: dict[tuple[str, Any], tuple[int, Any]] = {}

    async def open(self) -> Store:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a write never upgrades late and deadlocks.
            self._writer = await aiosqlite.connect(self.path, isolation_level=None)
            await _prepare(self._writer, writer=True)
            await self._migrate()
            for _ in range(READERS):
                conn = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
                self._readers.append(conn)
                await _prepare(conn, writer=False)
        except BaseException:
            # A refused open (e.g. SchemaTooNewError) must not leave connection threads behind.
            await self.close()
            raise
        self._reader_cycle = itertools.cycle(self._readers)
        return self

    async def _migrate(self) -> None:
        assert self._writer is not None
        async with self._writer.execute("PRAGMA user_version") as cur:
            version = (await cur.fetchone())[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"{self.path} has schema version {version}; this XRayVision knows up to {SCHEMA_VERSION}"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[number - 1]
            logger.info("Migrating %s to schema version %d", self.path, number)
            try:
                await self._writer.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
                )
            except sqlite3.Error:
                if self._writer.in_transaction:
                    await self._writer.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in [*self._readers, self._writer]:
            if conn is not None:
                await conn.close()
        self._readers.clear()
        self._writer = None

    def _check_open(self) -> None:
        if self._closed or self._writer is None:
            raise StoreClosedError("the store is closed")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: commits when the block ends, rolls back (and re-raises) if it raises."""
        self._check_open()
        async with self._write_lock:
            conn = self._writer
            assert conn is not None
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            else:
                await conn.execute("COMMIT")
                self.generation += 1

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """A single-statement write; returns the number of rows changed."""
        async with self.transaction() as conn:
            cur = await conn.execute(sql, params)
            return cur.rowcount

    async def write_returning(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """One statement that writes and returns rows (UPDATE ... RETURNING): its own transaction, in one trip to
        the writer's thread rather than three."""
        self._check_open()
        async with self._write_lock:
            assert self._writer is not None
            rows = list(await self._writer.execute_fetchall(sql, params))
            self.generation += 1
            return rows

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        self._check_open()
        conn = next(self._reader_cycle)
        # One trip to the reader's thread: a statement left open between execute and fetchall would hold its read
        # snapshot, and another coroutine's query on this connection could slip in and read that stale state.
        return list(await conn.execute_fetchall(sql, params))

    async def fetch_value_memo(self, sql: str, params: dict[str, Any]) -> Any:
        """fetch_value, remembered until the next write (counts a worklist asks for again and again)."""
        key = (sql, tuple(sorted(params.items())))
        generation = self.generation
        hit = self._memo.get(key)
        if hit is not None and hit[0] == generation:
            return hit[1]
        value = await self.fetch_value(sql, params)
        if len(self._memo) >= MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = (generation, value)
        return value

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def fetch_value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self.fetch_one(sql, params)
        return None if row is None else row[0]
