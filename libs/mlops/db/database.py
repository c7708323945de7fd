"""The engine and sessions of one service, and start-up that waits for PostgreSQL with a deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.errors import Unavailable
from mlops.settings import DatabaseSettings

log = logging.getLogger(__name__)


class Database:
    """Owns the connection pool of one service; `session()` opens a unit of work."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.engine: AsyncEngine = create_async_engine(
            settings.url,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            # No ping per checkout: it costs a round trip on every request. A connection that died
            # with the server fails its statement once, is invalidated with the pool, and callers
            # treat that as an outage (retry) rather than a bad request.
            pool_pre_ping=False,
            pool_recycle=1800,
            echo=settings.echo,
        )
        self._sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        self._fast: asyncpg.Pool | None = None
        self._fast_lock = asyncio.Lock()

    async def fast_pool(self) -> asyncpg.Pool:
        """A plain asyncpg pool for hot read paths: prepared statements, no ORM layer in between.

        Reads that serve every request (a model version by alias) go through it; writes keep the
        session and its transaction.
        """
        if self._fast is None:
            async with self._fast_lock:
                if self._fast is None:
                    self._fast = await asyncpg.create_pool(
                        self.settings.asyncpg_dsn, min_size=1, max_size=self.settings.pool_size
                    )
        return self._fast

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any exception."""
        async with self._sessions() as session, session.begin():
            yield session

    async def raw_connection(self) -> asyncpg.Connection:
        """A dedicated asyncpg connection outside the pool (LISTEN, advisory locks held for long)."""
        return await asyncpg.connect(self.settings.asyncpg_dsn)

    async def wait_ready(self, deadline_s: float | None = None) -> None:
        """Retry `SELECT 1` with backoff until it works or the deadline passes (`Unavailable`)."""
        deadline = time.monotonic() + (
            deadline_s if deadline_s is not None else self.settings.connect_deadline_s
        )
        delay, attempt = 0.1, 0
        while True:
            attempt += 1
            try:
                async with self.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
                return
            except (OSError, asyncpg.PostgresError, Exception) as error:
                if time.monotonic() + delay > deadline:
                    raise Unavailable(
                        f"PostgreSQL at {self.engine.url.render_as_string(hide_password=True)} "
                        f"not reachable after {attempt} attempts: {error}"
                    ) from error
                log.info("waiting for PostgreSQL (attempt %d): %s", attempt, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        if self._fast is not None:
            await self._fast.close()
        await self.engine.dispose()
