"""PostgreSQL and Redis from this machine's binaries, for running the platform without Docker.

Data lives under `local_data/` and survives restarts; logs go to `logs/`. Both listen on 127.0.0.1
at the ports the settings name. PostgreSQL refuses to run as root, so as root it runs as the
`postgres` system account (which then owns its data folder).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg2
import redis

from common.settings import Settings

T = TypeVar("T")


class LocalServiceError(RuntimeError):
    """A local server could not be started or stopped; the message says why in one line."""


def postgres_bindir() -> Path:
    """Directory holding initdb/pg_ctl (Debian keeps them out of PATH)."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    raise LocalServiceError("PostgreSQL server binaries (initdb, pg_ctl) not found; run `make deps`")


def postgres_account_kwargs() -> dict:
    """subprocess arguments that drop root to the `postgres` account (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    account = pwd.getpwnam("postgres")
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def wait_until(check: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll `check()` until it returns something true and return that; an exception counts as not
    yet. LocalServiceError (with the last exception) once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last_error = error
        time.sleep(every)
    raise LocalServiceError(f"{what} did not become ready in {timeout:.0f} s: {last_error}")


def _run(args: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise LocalServiceError(f"{what} failed: {detail[-1] if detail else f'exit {result.returncode}'}")
    return result


class LocalPostgres:
    """A PostgreSQL cluster in `<data_root>/postgres`, started and stopped with pg_ctl."""

    def __init__(self, settings: Settings, data_root: Path):
        self.settings = settings
        self.root = data_root / "postgres"
        self.data = self.root / "data"
        self.log_file = self.root / "server.log"  # the postgres account writes it: keep it in its folder

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        status = subprocess.run(
            [str(postgres_bindir() / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            check=False,
            **postgres_account_kwargs(),
        )
        return status.returncode == 0

    def _initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        kwargs = postgres_account_kwargs()
        if kwargs:
            os.chown(self.root, kwargs["user"], kwargs["group"])
            reachable = subprocess.run(["test", "-w", str(self.root)], check=False, **kwargs)
            if reachable.returncode != 0:
                raise LocalServiceError(
                    f"started as root, PostgreSQL runs as the postgres account, which cannot reach "
                    f"{self.root} (a parent folder is private): set LOCAL_DATA_DIR to a folder it can "
                    "reach, e.g. /var/lib/coin-for-rich"
                )
            self.log_file.touch()
            os.chown(self.log_file, kwargs["user"], kwargs["group"])
        args = [str(postgres_bindir() / "initdb"), "-D", str(self.data), "-U", self.settings.postgres_user]
        args += ["-E", "UTF8", "--locale=C"]
        password = self.settings.postgres_password.get_secret_value()
        with tempfile.NamedTemporaryFile("w", dir=self.root, delete=False) as pwfile:
            pwfile.write(password)
        try:
            if kwargs:
                os.chown(pwfile.name, kwargs["user"], kwargs["group"])
            if password:
                args += ["-A", "scram-sha-256", f"--pwfile={pwfile.name}"]
            else:
                args += ["-A", "trust"]
            _run(args, "initdb", **kwargs)
        finally:
            os.unlink(pwfile.name)

    def start(self) -> None:
        if self.running():
            return
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        kwargs = postgres_account_kwargs()
        options = (
            f"-p {self.settings.postgres_port} -c listen_addresses={self.settings.postgres_host} "
            f"-c unix_socket_directories={self.root}"
        )
        pg_ctl = str(postgres_bindir() / "pg_ctl")
        _run(
            [pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.log_file), "-w", "start"],
            f"PostgreSQL on port {self.settings.postgres_port} (see {self.log_file})",
            **kwargs,
        )
        wait_until(self._accepts, 30, "PostgreSQL")

    def _accepts(self) -> bool:
        psycopg2.connect(
            host=self.settings.postgres_host,
            port=self.settings.postgres_port,
            user=self.settings.postgres_user,
            password=self.settings.postgres_password.get_secret_value() or None,
            dbname="postgres",
            connect_timeout=2,
        ).close()
        return True

    def stop(self) -> None:
        if self.running():
            _run(
                [str(postgres_bindir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                "stopping PostgreSQL",
                **postgres_account_kwargs(),
            )


class LocalRedis:
    """A redis-server with its append-only file in `<data_root>/redis`."""

    def __init__(self, settings: Settings, data_root: Path, log_dir: Path):
        self.settings = settings
        self.dir = data_root / "redis"
        self.pidfile = self.dir / "redis.pid"
        self.log_file = log_dir / "redis.log"

    def _client(self) -> redis.Redis:
        password = self.settings.redis_password.get_secret_value() or None
        return redis.Redis(
            host=self.settings.redis_host, port=self.settings.redis_port, password=password, socket_timeout=2
        )

    def running(self) -> bool:
        if not self.pidfile.exists():
            return False
        try:
            os.kill(int(self.pidfile.read_text().strip()), 0)
        except (ValueError, ProcessLookupError, PermissionError):
            return False
        return True

    def start(self) -> None:
        if self.running():
            return
        if not shutil.which("redis-server"):
            raise LocalServiceError("redis-server not found; run `make deps`")
        self.dir.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--bind", self.settings.redis_host, "--port", str(self.settings.redis_port)]
        args += ["--dir", str(self.dir.resolve()), "--appendonly", "yes", "--daemonize", "yes"]
        args += ["--pidfile", str(self.pidfile.resolve()), "--logfile", str(self.log_file.resolve())]
        password = self.settings.redis_password.get_secret_value()
        if password:
            args += ["--requirepass", password]
        _run(args, f"redis-server on port {self.settings.redis_port} (see {self.log_file})")
        wait_until(self._client().ping, 30, "Redis")

    def stop(self) -> None:
        if not self.running():
            return
        try:
            self._client().shutdown(nosave=False)
        except redis.ConnectionError:
            pass  # shutting down closes the connection under us
        wait_until(lambda: not self.running(), 30, "Redis shutdown")
