"""A small thread-safe PostgreSQL connection pool for the web app.

Connections open lazily (the app starts with the database down) and a connection that failed is
closed instead of going back, so the pool recovers by itself when the database returns. Queries
run on worker threads (`run`), never on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

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
