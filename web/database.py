"""The web app's PostgreSQL pools.

`ConnectionPool` (psycopg2, queries on worker threads) serves every read of `web.reads`;
`AsyncPool` (asyncpg, on the event loop) serves only the hot path, the body of GET /api/ohlcvs,
where a thread hop per request cost more than the query's own client work. Both open connections
lazily (the app starts with the database down) and drop a connection that failed, so they recover
by themselves when the database returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import asyncpg
import psycopg2
from anyio import to_thread
from psycopg2.extensions import connection as PgConnection

from common.db import DatabaseError, connect
from common.settings import Settings

T = TypeVar("T")


class DatabaseUnavailable(RuntimeError):
    """The database could not answer; the message says why (for a 503)."""


class ConnectionPool:
    def __init__(self, settings: Settings, size: int):
        self._settings = settings
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[PgConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _take(self) -> PgConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            conn = connect(self._settings)
        except DatabaseError as error:
            raise DatabaseUnavailable(str(error)) from None
        conn.set_session(readonly=True, autocommit=True)  # reads only: no transaction stays open
        return conn

    def _give_back(self, conn: PgConnection, broken: bool) -> None:
        if broken or self._closed or conn.closed:
            conn.close()
            return
        with self._lock:
            self._idle.append(conn)

    def call(self, work: Callable[[PgConnection], T]) -> T:
        """Run `work(connection)` on a pooled connection (blocking; see `run`)."""
        with self._slots:
            conn = self._take()
            try:
                result = work(conn)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
                self._give_back(conn, broken=True)
                reason = " ".join(str(error).split()) or error.__class__.__name__
                raise DatabaseUnavailable(f"database query failed: {reason}") from None
            except BaseException:
                self._give_back(conn, broken=conn.closed != 0)
                raise
            self._give_back(conn, broken=False)
            return result

    async def run(self, work: Callable[[PgConnection], T]) -> T:
        """`call` on a worker thread, so the event loop keeps serving."""
        return await to_thread.run_sync(self.call, work)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


_ASYNC_FAILURES = (OSError, TimeoutError, asyncpg.InterfaceError)
# SQLSTATE classes that mean "the server cannot serve us now", not "the query is wrong":
# connection, authorization, unknown database, insufficient resources, operator intervention.
_UNAVAILABLE_CLASSES = ("08", "28", "3D", "53", "57")


async def _nothing_to_reset(_: asyncpg.Connection) -> None:
    """The pool's connections only run single read-only statements that leave no session state, so
    the default reset (a second round trip of `RESET ALL; CLOSE ALL; UNLISTEN *; ...` on every
    release) is skipped; asyncpg still ends any transaction left open."""


class AsyncPool:
    """asyncpg connections for the hot read of GET /api/ohlcvs: queries run on the event loop
    (no thread hop), stay prepared per connection, and text comes back without a row of Python
    objects per bar. Connections open on first use, like `ConnectionPool`, and a broken one is
    dropped, so the app starts with the database down and recovers when it returns."""

    def __init__(self, settings: Settings, size: int):
        self._settings = settings
        self._size = size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Make the pool (on the running loop); it connects nothing yet, so this cannot fail."""
        settings = self._settings
        self._pool = await asyncpg.create_pool(
            host=settings.postgres_host,
            port=settings.postgres_port,
            user=settings.postgres_user,
            password=settings.postgres_password.get_secret_value() or None,
            database=settings.postgres_db,
            min_size=0,  # nothing connects until a request needs it
            max_size=self._size,
            timeout=10,
            reset=_nothing_to_reset,
            server_settings={"application_name": "coin-for-rich", "default_transaction_read_only": "on"},
        )

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        """One row of `query`; an unreachable or failing server becomes `DatabaseUnavailable`."""
        if self._pool is None:
            raise DatabaseUnavailable("the database pool is not open")
        try:
            return await self._pool.fetchrow(query, *args)
        except (*_ASYNC_FAILURES, asyncpg.PostgresError) as error:
            if isinstance(error, asyncpg.PostgresError) and not str(error.sqlstate).startswith(
                _UNAVAILABLE_CLASSES
            ):
                raise
            reason = " ".join(str(error).split()) or error.__class__.__name__
            raise DatabaseUnavailable(f"database query failed: {reason}") from None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
