"""The platform without Docker: `make up`, `make demo`, `make status`, `make down`.

    python -m scripts.local.stack up [--demo]
    python -m scripts.local.stack status
    python -m scripts.local.stack down

`up` first checks that every port it is about to listen on is free (PostgreSQL 15432 and Redis 16379
by default, clear of a machine's own 5432 and 6379; the web app and Flower; the simulator's) and,
if one is taken, stops before starting anything with one line naming the setting to change. It then
starts PostgreSQL and Redis from this machine's binaries (data under `local_data/`), runs
`scripts.platform init`, then every process of the `Procfile` under supervisord, which restarts
any process that dies and writes its output to `logs/supervisor/<name>.log`. `--demo` first starts
the exchange simulator (real clock, its fixed ports), points every process at it
(`SIMULATOR_HOST=127.0.0.1`) and backfills the last day of a few markets so the chart is full at
once. `down` stops exactly what `up` started; `status` shows each process. Running `up` twice
changes nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from common.exchanges import EXCHANGE_SPECS, SIMULATOR_PORTS
from common.settings import PROJECT_ROOT, Settings, load_settings_or_exit
from scripts.cli import fail
from scripts.local.servers import LocalPostgres, LocalRedis, LocalServiceError, port_in_use, wait_until

PROCFILE = PROJECT_ROOT / "Procfile"
SIMULATOR_COMMAND = "python -m simulator --speed 1"
DEMO_MARKETS = {spec.name: spec.demo_symbols for spec in EXCHANGE_SPECS}
DEMO_CHART = "view/wschart?exchange=binance&base=BTC&quote=USDT&period=1D"


class Supervisor:
    """The supervisord of one data folder: its config, control socket and pid file live there."""

    def __init__(self, data_dir: Path):
        self.conf = data_dir / "supervisord.conf"
        self.sock = data_dir / "supervisor.sock"
        self.pidfile = data_dir / "supervisord.pid"

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(_venv_bin() / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def running(self) -> bool:
        return self.conf.exists() and self.ctl("pid").stdout.strip().isdigit()


@dataclass(frozen=True, slots=True)
class Process:
    name: str
    command: str


@dataclass(frozen=True, slots=True)
class Listener:
    """A port `up` will listen on, and the setting that moves it (None: fixed)."""

    what: str
    host: str
    port: int
    setting: str | None


def planned_listeners(settings: Settings, demo: bool, postgres_up: bool, redis_up: bool) -> list[Listener]:
    """The ports `up` is about to open (not those of our own servers already running)."""
    listeners = [
        Listener("the web app", settings.web_host, settings.web_port, "WEB_PORT"),
        Listener("Flower", settings.web_host, settings.flower_port, "FLOWER_PORT"),
    ]
    if not postgres_up:
        listeners.append(
            Listener("PostgreSQL", settings.postgres_host, settings.postgres_port, "POSTGRES_PORT")
        )
    if not redis_up:
        listeners.append(Listener("Redis", settings.redis_host, settings.redis_port, "REDIS_PORT"))
    if demo:
        listeners += [
            Listener(f"the simulator ({name})", "127.0.0.1", port, None)
            for name, port in SIMULATOR_PORTS.items()
        ]
    return listeners


def port_conflicts(listeners: list[Listener]) -> str | None:
    """One line naming every taken port and what to change, or None when all are free."""
    taken = [listener for listener in listeners if port_in_use(listener.host, listener.port)]
    if not taken:
        return None
    parts = []
    for listener in taken:
        fix = (
            f"set {listener.setting} in .env to a free port"
            if listener.setting
            else "stop the program using it"
        )
        parts.append(f"port {listener.port} for {listener.what} is taken by another program: {fix}")
    return "; ".join(parts) + " (nothing was started)"


def parse_procfile(text: str, settings: Settings) -> list[Process]:
    """`name: command` lines; `${SETTING}` becomes that setting's value. Comments and blanks skipped."""
    values = {name.upper(): _setting_text(value) for name, value in settings}
    processes = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line)
        if not match:
            raise ValueError(f"Procfile line {number}: expected 'name: command', got {line!r}")

        unknown = sorted(set(re.findall(r"\$\{([A-Z0-9_]+)\}", line)) - set(values))
        if unknown:
            raise ValueError(f"Procfile line {number}: unknown setting ${{{unknown[0]}}}")
        command = re.sub(r"\$\{([A-Z0-9_]+)\}", lambda found: values[found.group(1)], match.group(2))
        processes.append(Process(match.group(1), command))
    return processes


def _setting_text(value: object) -> str:
    secret = getattr(value, "get_secret_value", None)
    return str(secret() if secret else value)


def supervisor_config(
    processes: list[Process], supervisor: Supervisor, log_dir: Path, environment: dict[str, str]
) -> str:
    """supervisord.conf for the processes: restart on death, one log file each, stop the whole group.
    Nothing starts with supervisord itself: `up` starts them in order (simulator, then the rest)."""
    env = ",".join(f'{key}="{value}"' for key, value in sorted(environment.items()))
    lines = [
        "[unix_http_server]",
        f"file={supervisor.sock}",
        "chmod=0700",
        "[supervisord]",
        f"logfile={log_dir / 'supervisor' / 'supervisord.log'}",
        f"pidfile={supervisor.pidfile}",
        f"directory={PROJECT_ROOT}",
        f"environment={env}",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "[supervisorctl]",
        f"serverurl=unix://{supervisor.sock}",
    ]
    for process in processes:
        lines += [
            f"[program:{process.name}]",
            f"command={process.command}",
            "autostart=false",
            "autorestart=true",
            "startsecs=3",
            "startretries=1000",
            "stopasgroup=true",
            "killasgroup=true",
            "stopwaitsecs=15",
            "redirect_stderr=true",
            f"stdout_logfile={log_dir / 'supervisor' / f'{process.name}.log'}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=3",
        ]
    return "\n".join(lines) + "\n"


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = {"PATH": f"{_venv_bin()}:{os.environ.get('PATH', '/usr/bin:/bin')}", "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


@click.group()
def cli() -> None:
    """Run the whole platform on this machine, without Docker."""


@cli.command()
@click.option("--demo", is_flag=True, help="run the exchange simulator too and point every process at it")
def up(demo: bool) -> None:
    """Start PostgreSQL, Redis, init and every Procfile process (idempotent)."""
    settings = load_settings_or_exit()
    data = settings.local_data_dir
    supervisor = Supervisor(data)
    if supervisor.running():
        click.echo("already running (make status shows the processes; make down stops them)")
        return
    log_dir = settings.log_dir
    (log_dir / "supervisor").mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    postgres, local_redis = LocalPostgres(settings, data), LocalRedis(settings, data, log_dir)
    conflicts = port_conflicts(planned_listeners(settings, demo, postgres.running(), local_redis.running()))
    if conflicts:
        fail(conflicts)
    try:
        postgres.start()
        local_redis.start()
    except LocalServiceError as error:
        fail(str(error))
    click.echo(
        f"PostgreSQL{' with TimescaleDB' if postgres.timescaledb else ''} on "
        f"{settings.postgres_host}:{settings.postgres_port} (data in {postgres.root}), "
        f"Redis on {settings.redis_host}:{settings.redis_port} (data in {data})"
    )
    processes = parse_procfile(PROCFILE.read_text(), settings)
    extra: dict[str, str] = {}
    if demo:
        extra = {"SIMULATOR_HOST": "127.0.0.1"}
        processes.insert(0, Process("simulator", SIMULATOR_COMMAND))
    env = _environment(extra)
    supervisor.conf.write_text(supervisor_config(processes, supervisor, log_dir, env))
    supervisor.conf.chmod(0o600)
    started = subprocess.run(
        [str(_venv_bin() / "supervisord"), "-c", str(supervisor.conf)], capture_output=True, text=True
    )
    if started.returncode != 0:
        fail(f"supervisord did not start: {started.stderr.strip() or started.stdout.strip()}")
    child_env = {**os.environ, **env}
    if demo:
        if not _start(supervisor, "simulator"):
            fail("the simulator did not start (are ports 18401-18404 free?)")
        wait_for_simulator(settings.model_copy(update={"simulator_host": "127.0.0.1"}))
    init = subprocess.run([sys.executable, "-m", "scripts.platform", "init"], env=child_env, check=False)
    if init.returncode != 0:
        fail(f"initialisation failed (see {log_dir / 'init.log'}); `make down` stops what started")
    running = sum(_start(supervisor, process.name) for process in processes)
    click.echo(f"{running} of {len(processes)} processes running; logs in {log_dir}")
    page = f"http://{settings.web_host}:{settings.web_port}/"
    if demo:
        backfill_demo_markets(child_env)
        page += DEMO_CHART
    else:
        page += "view/wschart"
    click.echo(f"open {page}")


def _start(supervisor: Supervisor, name: str) -> bool:
    """Start one supervised process; False (with a warning) if it did not stay up. Supervisor keeps
    restarting it with a growing delay, so a process waiting for a service recovers by itself."""
    result = supervisor.ctl("start", name)
    if result.returncode != 0 and "ALREADY_STARTED" not in result.stdout:
        click.echo(f"warning: {name} did not stay up, supervisor keeps retrying it "
                   f"(see logs/supervisor/{name}.log)", err=True)  # fmt: skip
        return False
    return True


def wait_for_simulator(settings: Settings) -> None:
    """The simulator answers on its fixed ports (it loads the market lists first, a few seconds)."""
    url = settings.rest_url("binance") + "/api/v3/ping"
    try:
        wait_until(lambda: urllib.request.urlopen(url, timeout=2).status == 200, 60, "the simulator")
    except LocalServiceError as error:
        fail(f"{error} (see logs/supervisor/simulator.log)")


def backfill_demo_markets(env: dict[str, str]) -> None:
    """The last day of a few markets per exchange, fetched here, so the demo chart is full at once."""
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=1)
    for exchange, symbols in DEMO_MARKETS.items():
        click.echo(f"backfilling the last day of {symbols} on {exchange} ...")
        subprocess.run(
            [sys.executable, "-m", "scripts.fetchers.rest", "fetch", "--exchange", exchange, "--local",
             "--symbols", symbols, "--start", start.isoformat(), "--end", end.isoformat()],
            env=env, check=False, stdout=subprocess.DEVNULL,
        )  # fmt: skip


@cli.command()
def status() -> None:
    """What runs: PostgreSQL, Redis and every supervised process."""
    settings = load_settings_or_exit()
    supervisor = Supervisor(settings.local_data_dir)
    pg = LocalPostgres(settings, settings.local_data_dir)
    rd = LocalRedis(settings, settings.local_data_dir, settings.log_dir)
    flavour = "TimescaleDB" if pg.timescaledb else "plain PostgreSQL"
    click.echo(
        f"{'postgres':16}{'RUNNING' if pg.running() else 'STOPPED':10}"
        f"{settings.postgres_host}:{settings.postgres_port} ({flavour}, data in {pg.root})"
    )
    redis_state = "RUNNING" if rd.running() else "STOPPED"
    click.echo(f"{'redis':16}{redis_state:10}{settings.redis_host}:{settings.redis_port}")
    if not supervisor.running():
        click.echo("processes: not running (make up starts them)")
        return
    click.echo(supervisor.ctl("status").stdout.rstrip())
    click.echo(f"chart: http://{settings.web_host}:{settings.web_port}/view/wschart")


@cli.command()
def down() -> None:
    """Stop every process `up` started, then Redis and PostgreSQL."""
    settings = load_settings_or_exit()
    try:
        supervisor = Supervisor(settings.local_data_dir)
        if supervisor.running():
            supervisor.ctl("shutdown")
            wait_until(lambda: not supervisor.pidfile.exists(), 60, "supervisord shutdown")
            click.echo("processes stopped")
        LocalRedis(settings, settings.local_data_dir, settings.log_dir).stop()
        LocalPostgres(settings, settings.local_data_dir).stop()
    except LocalServiceError as error:
        fail(str(error))
    click.echo(f"PostgreSQL and Redis stopped (data kept in {settings.local_data_dir})")


if __name__ == "__main__":
    cli()
