"""The deployment files say only what is true: docker-compose.yml, Dockerfile and Procfile.

No Docker engine runs here, so the compose file is checked the way an engine would read it: it
parses, `docker-compose config -q` accepts it with and without the `demo` profile, every variable
it uses is documented in `.example_env`, every command names a module or program that exists and
accepts its arguments, every build and volume path exists, and ports stay on 127.0.0.1 by default.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.settings import PROJECT_ROOT, Settings
from scripts.local.stack import parse_procfile

pytestmark = pytest.mark.integration

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
EXPECTED_SERVICES = {
    "psql", "redis", "init", "fetch-bitfinex", "fetch-binance", "fetch-bittrex",
    "updater", "worker", "beat", "flower", "web", "simulator",
}  # fmt: skip
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


def example_env_names() -> set[str]:
    lines = (PROJECT_ROOT / ".example_env").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("#")}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_file(tmp_path: Path, **overrides: str) -> Path:
    lines = [line for line in (PROJECT_ROOT / ".example_env").read_text().splitlines() if "=" in line]
    values = dict(line.split("=", 1) for line in lines if not line.startswith("#"))
    values.update(overrides)
    path = tmp_path / "compose.env"
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def without_addresses(argv: list[str]) -> list[str]:
    """A command without where it listens (compose binds 0.0.0.0 in the container, the Procfile the
    setting) or keeps its schedule file, so the rest must be the same in both."""
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif re.fullmatch(r"--(host|port|address|schedule)", word):
            skip = True
        elif not re.fullmatch(r"--(host|port|address|schedule)=.*", word):
            kept.append(word)
    return kept


def run_help(argv: list[str]) -> subprocess.CompletedProcess:
    """Run a service's command with --help appended: it must exist and accept its arguments."""
    program, *rest = argv
    if program == "python":
        program = sys.executable
    else:
        program = str(Path(sys.executable).parent / program)
    return subprocess.run(
        [program, *rest, "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )


def test_every_service_is_there_with_the_names_users_know():
    services = compose()["services"]
    assert set(services) == EXPECTED_SERVICES
    assert services["psql"]["container_name"] == "coin-psql"
    assert services["redis"]["container_name"] == "coin-redis"
    assert services["web"]["container_name"] == "coin-app"
    assert services["simulator"]["profiles"] == ["demo"]
    assert re.fullmatch(r"timescale/timescaledb:[0-9.]+-pg16", services["psql"]["image"])


def test_variables_are_documented_in_example_env():
    used = set(VARIABLE.findall(COMPOSE.read_text()))
    assert used, "the compose file takes its settings from .env"
    assert used - example_env_names() == set()


def test_ports_are_bound_to_localhost_unless_the_user_opts_in():
    for name, service in compose()["services"].items():
        for mapping in service.get("ports", []):
            assert mapping.startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, mapping)


def test_processes_wait_for_healthy_services_and_init():
    services = compose()["services"]
    assert services["init"]["depends_on"] == {
        "psql": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    for name in EXPECTED_SERVICES - {"psql", "redis", "init", "simulator"}:
        assert services[name]["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    for name in ("psql", "redis", "web"):
        assert "healthcheck" in services[name], name
    redis_command = services["redis"]["command"]
    assert "--appendonly" in redis_command and "--requirepass" in redis_command


def test_build_and_volume_paths_exist():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, flags=re.MULTILINE):
        for source in sources.split():
            assert (PROJECT_ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    for name, service in compose()["services"].items():
        if "build" in service:
            assert (PROJECT_ROOT / service["build"] / "Dockerfile").exists(), name
        for volume in service.get("volumes", []):
            host = volume.split(":", 1)[0]
            if host.startswith("."):  # the top folder ships with the repository; docker makes the rest
                assert (PROJECT_ROOT / Path(host).parts[0]).is_dir(), (name, volume)


@pytest.mark.parametrize("name", sorted(EXPECTED_SERVICES - {"psql", "redis"}))
def test_every_command_exists_and_accepts_its_arguments(name):
    command = compose()["services"][name]["command"]
    if command == ["python", "-m", "web"]:  # takes no arguments: it serves the app the settings name
        check = "import web.__main__, web.main; assert callable(web.main.app)"
        result = subprocess.run(
            [sys.executable, "-c", check], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
        )
    else:
        result = run_help(command)
    assert result.returncode == 0, result.stderr[-2000:]


def test_procfile_runs_the_same_processes_as_compose():
    processes = parse_procfile((PROJECT_ROOT / "Procfile").read_text(), Settings())
    services = compose()["services"]
    assert {p.name for p in processes} == EXPECTED_SERVICES - {"psql", "redis", "init", "simulator"}
    for process in processes:
        assert without_addresses(services[process.name]["command"]) == without_addresses(
            process.command.split()
        ), process.name


@pytest.mark.parametrize("profile", [None, "demo"])
def test_docker_compose_accepts_the_file(tmp_path, profile):
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is installed by `make deps` (scripts/local/install_system_deps.sh)"
    env = env_file(tmp_path, POSTGRES_PASSWORD="pg-secret", REDIS_PASSWORD="redis-secret")
    args = [binary, "--env-file", str(env), "-f", str(COMPOSE)]
    if profile:
        args += ["--profile", profile]
    result = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_to_start_without_passwords(tmp_path):
    env = env_file(tmp_path, POSTGRES_PASSWORD="", REDIS_PASSWORD="")
    result = subprocess.run(
        ["docker-compose", "--env-file", str(env), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr or "set REDIS_PASSWORD in .env" in result.stderr
