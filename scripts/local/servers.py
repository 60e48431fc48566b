"""PostgreSQL and Redis from this machine's binaries, for running the platform without Docker.

Data lives under `local_data/` and survives restarts; logs go to `logs/`. Both listen on 127.0.0.1
at the ports the settings name. PostgreSQL refuses to run as root, so as root it runs as the
`postgres` system account (which then owns its data folder); when that account cannot reach
`local_data/` (a private home folder), the cluster lives under `FALLBACK_ROOT` instead. Where
TimescaleDB is installed for the server, it is preloaded, so `init` takes the TimescaleDB path.
A server that does not start says why in one line, read from its log.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg2
import redis

from common.redis_clients import sync_client
from common.settings import Settings

T = TypeVar("T")

FALLBACK_ROOT = Path("/var/lib/coin-for-rich")
"""Where, as root, PostgreSQL's data goes when the `postgres` account cannot reach LOCAL_DATA_DIR."""
READY_SECONDS = 30.0
"""How long a started server has to accept connections."""
TIMESCALEDB_OPTIONS = "-c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"
"""How the platform's own and the tests' PostgreSQL load TimescaleDB (no telemetry: no calls out)."""


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


def timescaledb_installed(bindir: Path | None = None) -> bool:
    """Whether TimescaleDB is installed for the server these binaries run (control file and library)."""
    pg_config = (bindir or postgres_bindir()) / "pg_config"
    if not pg_config.exists():
        return False
    out = subprocess.run([str(pg_config), "--pkglibdir", "--sharedir"], capture_output=True, text=True)
    dirs = out.stdout.split()
    if out.returncode != 0 or len(dirs) != 2:
        return False
    libdir, sharedir = map(Path, dirs)
    return (sharedir / "extension" / "timescaledb.control").exists() and (libdir / "timescaledb.so").exists()


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on host:port (a bind there fails with EADDRINUSE)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


ROOT_CAUSES = ("could not bind", "could not create lock file", "could not create server tcp listening socket")
"""Log lines that name the cause; the servers' final FATAL line only says they gave up."""


def reason_from_log(lines: list[str]) -> str | None:
    """The line of a server log that says why it stopped: a failed bind or lock first (PostgreSQL
    follows those with a vaguer FATAL), else the last FATAL/PANIC/error line; without its timestamp."""
    wanted = [line for line in lines if any(cause in line.lower() for cause in ROOT_CAUSES)]
    wanted = wanted or [line for line in lines if any(w in line for w in ("FATAL", "PANIC", "# ", "ERROR"))]
    if not wanted:
        return None
    line = wanted[-1].strip()
    for marker in ("FATAL:", "PANIC:", "LOG:", "ERROR:", "# "):
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return line


def _new_log_lines(path: Path, offset: int) -> list[str]:
    try:
        with open(path, errors="replace") as log:
            log.seek(offset)
            return log.read().splitlines()
    except OSError:
        return []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


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


def _postgres_account_can(test_flag: str, path: Path) -> bool:
    """`test <flag> path` as the postgres account (always true when not root)."""
    kwargs = postgres_account_kwargs()
    return not kwargs or subprocess.run(["test", test_flag, str(path)], check=False, **kwargs).returncode == 0


def postgres_root(data_root: Path) -> Path:
    """`<data_root>/postgres`, unless (as root) the postgres account cannot enter `data_root` (a
    private home folder): then a folder of this data root's own under `FALLBACK_ROOT`, the same on
    every call, so `up`, `status` and `down` find the same cluster."""
    preferred = data_root / "postgres"
    if _postgres_account_can("-x", data_root):  # fails too when a folder above it is private
        return preferred
    digest = hashlib.sha256(str(data_root).encode()).hexdigest()[:10]
    return FALLBACK_ROOT / f"{data_root.name}-{digest}" / "postgres"


class LocalPostgres:
    """A PostgreSQL cluster in `<data_root>/postgres`, started and stopped with pg_ctl."""

    def __init__(self, settings: Settings, data_root: Path):
        self.settings = settings
        self.root = postgres_root(data_root.resolve())
        self.data = self.root / "data"
        self.log_file = self.root / "server.log"  # the postgres account writes it: keep it in its folder
        self.timescaledb = timescaledb_installed()

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
            if not _postgres_account_can("-w", self.root):
                raise LocalServiceError(
                    f"started as root, PostgreSQL runs as the postgres account, which cannot write to "
                    f"{self.root}: set LOCAL_DATA_DIR to a folder it can reach"
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
        if self.timescaledb:
            options += " " + TIMESCALEDB_OPTIONS
        pg_ctl = str(postgres_bindir() / "pg_ctl")
        what = f"PostgreSQL on port {self.settings.postgres_port}"
        offset = _size(self.log_file)
        try:
            _run(
                [pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.log_file), "-w", "start"],
                what,
                **kwargs,
            )
        except LocalServiceError as error:
            reason = reason_from_log(_new_log_lines(self.log_file, offset))
            detail = f"{what} did not start: {reason}" if reason else str(error)
            raise LocalServiceError(f"{detail} (see {self.log_file})") from None
        wait_until(self._accepts, READY_SECONDS, "PostgreSQL")

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
        return sync_client(self.settings, reply_timeout=2)

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
        what = f"redis-server on port {self.settings.redis_port}"
        if port_in_use(self.settings.redis_host, self.settings.redis_port):  # the daemon would say so late
            raise LocalServiceError(f"{what} did not start: the port is taken by another program")
        offset = _size(self.log_file)
        _run(args, f"{what} (see {self.log_file})")
        try:
            wait_until(self._client().ping, READY_SECONDS, "Redis")
        except LocalServiceError as error:
            reason = reason_from_log(_new_log_lines(self.log_file, offset)) or error
            raise LocalServiceError(f"{what} did not start: {reason} (see {self.log_file})") from None

    def stop(self) -> None:
        if not self.running():
            return
        try:
            self._client().shutdown(nosave=False)
        except redis.ConnectionError:
            pass  # shutting down closes the connection under us
        wait_until(lambda: not self.running(), 30, "Redis shutdown")
