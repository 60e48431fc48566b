"""The platform without Docker: `make up`, `make demo`, `make status`, `make down`.

    python -m scripts.local.stack up [--demo]
    python -m scripts.local.stack status
    python -m scripts.local.stack down

`up` starts PostgreSQL and Redis from this machine's binaries (data under `local_data/`), runs
`scripts.platform init`, then every process of the `Procfile` under supervisord, which restarts
any process that dies and writes its output to `logs/supervisor/<name>.log`. `--demo` also runs
the exchange simulator (real clock, its fixed ports) and points every process at it. `down` stops
exactly what `up` started; `status` shows each process. Running `up` twice changes nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from common.settings import PROJECT_ROOT, Settings, load_settings_or_exit
from scripts.local.servers import LocalPostgres, LocalRedis, LocalServiceError, wait_until

DATA_ROOT = PROJECT_ROOT / "local_data"
PROCFILE = PROJECT_ROOT / "Procfile"
SUPERVISOR_CONF = DATA_ROOT / "supervisord.conf"
SUPERVISOR_SOCK = DATA_ROOT / "supervisor.sock"
SUPERVISOR_PID = DATA_ROOT / "supervisord.pid"
DEMO_MARKER = DATA_ROOT / "demo"
SIMULATOR_COMMAND = "python -m simulator --speed 1"


@dataclass(frozen=True, slots=True)
class Process:
    name: str
    command: str


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


def supervisor_config(processes: list[Process], log_dir: Path, environment: dict[str, str]) -> str:
    """supervisord.conf for the processes: restart on death, one log file each, stop the whole group."""
    env = ",".join(f'{key}="{value}"' for key, value in sorted(environment.items()))
    lines = [
        "[unix_http_server]",
        f"file={SUPERVISOR_SOCK}",
        "chmod=0700",
        "[supervisord]",
        f"logfile={log_dir / 'supervisor' / 'supervisord.log'}",
        f"pidfile={SUPERVISOR_PID}",
        f"directory={PROJECT_ROOT}",
        f"environment={env}",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "[supervisorctl]",
        f"serverurl=unix://{SUPERVISOR_SOCK}",
    ]
    for process in processes:
        lines += [
            f"[program:{process.name}]",
            f"command={process.command}",
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


def _supervisorctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(_venv_bin() / "supervisorctl"), "-c", str(SUPERVISOR_CONF), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def _supervisor_running() -> bool:
    return SUPERVISOR_CONF.exists() and _supervisorctl("pid").stdout.strip().isdigit()


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group()
def cli() -> None:
    """Run the whole platform on this machine, without Docker."""


@cli.command()
@click.option("--demo", is_flag=True, help="run the exchange simulator too and point every process at it")
def up(demo: bool) -> None:
    """Start PostgreSQL, Redis, init and every Procfile process (idempotent)."""
    settings = load_settings_or_exit()
    if _supervisor_running():
        click.echo("already running (make status shows the processes; make down stops them)")
        return
    log_dir = settings.log_dir
    (log_dir / "supervisor").mkdir(parents=True, exist_ok=True)
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    try:
        LocalPostgres(settings, DATA_ROOT, log_dir).start()
        LocalRedis(settings, DATA_ROOT, log_dir).start()
    except LocalServiceError as error:
        _fail(str(error))
    click.echo(
        f"PostgreSQL on {settings.postgres_host}:{settings.postgres_port}, "
        f"Redis on {settings.redis_host}:{settings.redis_port} (data in {DATA_ROOT})"
    )
    extra: dict[str, str] = {}
    processes = parse_procfile(PROCFILE.read_text(), settings)
    if demo:
        from simulator.ports import demo_environment

        extra = demo_environment(settings)
        processes.insert(0, Process("simulator", SIMULATOR_COMMAND))
        DEMO_MARKER.write_text("1")
    else:
        DEMO_MARKER.unlink(missing_ok=True)
    env = _environment(extra)
    SUPERVISOR_CONF.write_text(supervisor_config(processes, log_dir, env))
    SUPERVISOR_CONF.chmod(0o600)
    init = subprocess.run(
        [sys.executable, "-m", "scripts.platform", "init"], env={**os.environ, **env}, check=False
    )
    if init.returncode != 0:
        _fail(f"initialisation failed (see {log_dir / 'init.log'}); PostgreSQL and Redis are still up")
    started = subprocess.run(
        [str(_venv_bin() / "supervisord"), "-c", str(SUPERVISOR_CONF)], capture_output=True, text=True
    )
    if started.returncode != 0:
        _fail(f"supervisord did not start: {started.stderr.strip() or started.stdout.strip()}")
    click.echo(f"{len(processes)} processes started; logs in {log_dir}")
    click.echo(f"open http://{settings.web_host}:{settings.web_port}/view/wschart")


@cli.command()
def status() -> None:
    """What runs: PostgreSQL, Redis and every supervised process."""
    settings = load_settings_or_exit()
    pg = LocalPostgres(settings, DATA_ROOT, settings.log_dir)
    rd = LocalRedis(settings, DATA_ROOT, settings.log_dir)
    click.echo(f"{'postgres':16}{'RUNNING' if pg.running() else 'STOPPED'}")
    click.echo(f"{'redis':16}{'RUNNING' if rd.running() else 'STOPPED'}")
    if not _supervisor_running():
        click.echo("processes: not running (make up starts them)")
        return
    click.echo(_supervisorctl("status").stdout.rstrip())


@cli.command()
def down() -> None:
    """Stop every process `up` started, then Redis and PostgreSQL."""
    settings = load_settings_or_exit()
    try:
        if _supervisor_running():
            _supervisorctl("shutdown")
            wait_until(lambda: not SUPERVISOR_PID.exists(), 60, "supervisord shutdown")
            click.echo("processes stopped")
        LocalRedis(settings, DATA_ROOT, settings.log_dir).stop()
        LocalPostgres(settings, DATA_ROOT, settings.log_dir).stop()
    except LocalServiceError as error:
        _fail(str(error))
    click.echo("PostgreSQL and Redis stopped (data kept in local_data/)")


if __name__ == "__main__":
    cli()
