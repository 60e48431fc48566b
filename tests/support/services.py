"""Throwaway PostgreSQL and Redis servers for tests, started from the machine's binaries.

Each lives in a temp dir on a free port and is stopped afterwards, so no test depends on a service
someone started by hand. PostgreSQL refuses to run as root; as root, the server runs as the
`postgres` system account.

`CFR_TEST_TIMESCALEDB=1` starts PostgreSQL with TimescaleDB preloaded (the extension must be
installed for the server's version), and the suite then runs on the TimescaleDB path.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psycopg2
import psycopg2.errors
import redis
from psycopg2 import sql

from scripts.local.servers import (
    TIMESCALEDB_OPTIONS,
    LocalServiceError,
    postgres_account_kwargs,
    postgres_bindir,
    wait_until,
)

TIMESCALEDB_ENV = "CFR_TEST_TIMESCALEDB"
NO_TIMESCALEDB_JOB_SCHEDULER = "-c timescaledb.max_background_workers=0"
"""Tests and benchmarks run TimescaleDB's policies themselves (`CALL run_job`). A scheduler would
also start each new policy at once, and its run then races the test's for the same chunks
("chunk is already compressed" fails whichever run comes second)."""
T = TypeVar("T")


def timescaledb_requested() -> bool:
    return os.environ.get(TIMESCALEDB_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def wait_for(check: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    """Poll `check()` until it returns something true and return that (an exception counts as not
    yet); fail the test after `timeout` seconds."""
    try:
        return wait_until(check, timeout, what, every)
    except LocalServiceError as error:
        raise AssertionError(str(error)) from None


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, and SIGKILL if it has not ended after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    port: int = field(default_factory=free_port)
    user: str = "postgres"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cfr-pg-")))
    durable: bool = False
    """Tests skip fsync for speed; benchmarks run with PostgreSQL's durable defaults."""
    timescaledb: bool = field(default_factory=timescaledb_requested)
    """Preload TimescaleDB (telemetry off: tests make no calls out)."""

    def start(self) -> PostgresServer:
        bindir = postgres_bindir()
        data = self.workdir / "data"
        kwargs = postgres_account_kwargs()
        if kwargs:
            os.chown(self.workdir, kwargs["user"], kwargs["group"])
        if not (data / "PG_VERSION").exists():  # else a restart after halt(): same cluster
            subprocess.run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    self.user,
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--locale=C",
                ],
                check=True,
                capture_output=True,
                **kwargs,
            )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.workdir} "
            "-c max_connections=200 -c shared_buffers=256MB"
        )
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        if self.timescaledb:
            options += f" {TIMESCALEDB_OPTIONS} {NO_TIMESCALEDB_JOB_SCHEDULER}"
        else:  # plain even where TimescaleDB is installed (init would refuse it unpreloaded)
            options += " -c coin_for_rich.use_timescaledb=off"
        subprocess.run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(self.workdir / "log"),
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
            **kwargs,
        )
        wait_until(lambda: self.connect("postgres").close() is None, 30, "PostgreSQL")
        return self

    def connect(self, dbname: str):
        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=dbname)

    def halt(self) -> None:
        """Stop the server (fast shutdown: sessions are cut) but keep its files; a `start()`
        afterwards is a restart of the same cluster."""
        subprocess.run(
            [str(postgres_bindir() / "pg_ctl"), "-D", str(self.workdir / "data"), "-m", "fast", "-w", "stop"],
            capture_output=True,
            **postgres_account_kwargs(),
        )

    def freeze_template(self, name: str) -> None:
        """Make `name` a template nobody connects to: cloning fails with ObjectInUse while anyone
        is connected, and TimescaleDB's job scheduler, where one runs, keeps a connection to every
        database that allows connections."""
        admin = self.connect("postgres")
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                cur.execute(
                    sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                        sql.Identifier(name)
                    )
                )
                self._end_sessions(cur, name)
        finally:
            admin.close()

    def clone_database(self, name: str, template: str, attempts: int = 100) -> None:
        """CREATE DATABASE name TEMPLATE template, ending sessions still attached to the template,
        with the template's own settings (`ALTER DATABASE … SET`, which `init` uses and a clone
        does not inherit)."""
        admin = self.connect("postgres")
        admin.autocommit = True
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        try:
            with admin.cursor() as cur:
                for attempt in range(attempts):
                    try:
                        cur.execute(statement)
                        break
                    except psycopg2.errors.ObjectInUse:
                        if attempt == attempts - 1:
                            raise
                        self._end_sessions(cur, template)
                        time.sleep(0.05)
                cur.execute(
                    "SELECT unnest(s.setconfig) FROM pg_db_role_setting s "
                    "JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
                    (template,),
                )
                for (entry,) in cur.fetchall():
                    parameter, value = entry.split("=", 1)
                    cur.execute(
                        sql.SQL("ALTER DATABASE {} SET {} = %s").format(
                            sql.Identifier(name), sql.SQL(".").join(map(sql.Identifier, parameter.split(".")))
                        ),
                        (value,),
                    )
        finally:
            admin.close()

    def drop_database(self, name: str) -> None:
        """Drop `name` if it exists, ending its sessions (background workers' included)."""
        admin = self.connect("postgres")
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        finally:
            admin.close()

    @staticmethod
    def _end_sessions(cur, dbname: str) -> None:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )

    def stop(self) -> None:
        bindir = postgres_bindir()
        subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(self.workdir / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            **postgres_account_kwargs(),
        )
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class RedisServer:
    port: int = field(default_factory=free_port)
    password: str = "test-redis-password"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cfr-redis-")))
    process: subprocess.Popen | None = None
    persistent: bool = False
    """Keep the data across a restart (append-only file, fsync always), as production Redis does."""

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--requirepass",
                self.password,
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.client().ping(), 15, "Redis")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def halt(self) -> None:
        """Stop the server but keep its files (a `start()` afterwards is a restart)."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.workdir, ignore_errors=True)
