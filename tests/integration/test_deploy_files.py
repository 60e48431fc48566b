"""The deployment files say only what is true: docker-compose.yml, Dockerfile, Procfile and the
monitoring files under deploy/ (Prometheus configuration and alert rules, Grafana provisioning and
dashboard).

No Docker engine runs here, so the compose file is checked the way an engine would read it: it
parses, `docker-compose config -q` accepts it with and without the `demo` and `monitoring`
profiles, every variable
it uses is documented in `.example_env`, every command names a module or program that exists and
accepts its arguments, every build and volume path exists, and ports stay on 127.0.0.1 by default.
"""

from __future__ import annotations

import json
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
MONITORING = {"prometheus", "grafana"}
EXPECTED_SERVICES = {
    "psql", "redis", "init", "fetch-bitfinex", "fetch-binance", "fetch-bittrex",
    "updater", "worker", "beat", "flower", "web", "simulator", *MONITORING,
}  # fmt: skip
APP_SERVICES = EXPECTED_SERVICES - MONITORING
DEPLOY = PROJECT_ROOT / "deploy"
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
    assert re.fullmatch(r"prom/prometheus:v[0-9]+\.[0-9]+\.[0-9]+", services["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:[0-9]+\.[0-9]+\.[0-9]+", services["grafana"]["image"])
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name


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
    for name in APP_SERVICES - {"psql", "redis", "init", "simulator"}:
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


@pytest.mark.parametrize("name", sorted(APP_SERVICES - {"psql", "redis"}))
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
    assert {p.name for p in processes} == APP_SERVICES - {"psql", "redis", "init", "simulator"}
    for process in processes:
        assert without_addresses(services[process.name]["command"]) == without_addresses(
            process.command.split()
        ), process.name


@pytest.mark.parametrize("profile", [None, "demo", "monitoring"])
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


# ------------------------------------------------------------------------------- monitoring profile

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "coin-for-rich.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "coin-for-rich.yml"
REQUIRED_ALERTS = {"FetcherSilent", "UpdaterBehind", "RestBanned", "MissingMinutesGrowing", "RepairStuck"}
DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def balanced(text: str) -> bool:
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    for char in re.sub(r'"[^"]*"', '""', text):
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                return False
    return not any(depth.values())


def test_monitoring_files_are_mounted_where_their_services_read_them():
    services = compose()["services"]
    mounts = {
        name: dict(volume.split(":")[:2] for volume in services[name]["volumes"]) for name in MONITORING
    }
    assert mounts["prometheus"]["./deploy/prometheus"] == "/etc/prometheus"
    assert mounts["grafana"]["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["grafana"]["./deploy/grafana/dashboards"] == "/var/lib/grafana/dashboards"
    for name, volumes in mounts.items():
        for host in volumes:
            if host.startswith("."):
                assert (PROJECT_ROOT / host).is_dir(), (name, host)
    command = services["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"/var/lib/grafana/dashboards/{DASHBOARD.name}"


def test_grafana_takes_its_password_from_env_and_refuses_to_start_without_one():
    grafana = compose()["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    script = grafana["entrypoint"][-1]
    assert 'test -n "$$GF_SECURITY_ADMIN_PASSWORD"' in script and script.endswith("exec /run.sh")
    assert "GRAFANA_ADMIN_PASSWORD=\n" in (PROJECT_ROOT / ".example_env").read_text(), "no password committed"


def test_prometheus_scrapes_the_web_and_loads_the_rules():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert [(PROMETHEUS_CONFIG.parent / path).resolve() for path in config["rule_files"]] == [
        ALERTS.resolve()
    ]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["web:8000"]}]
    assert "8000" in compose()["services"]["web"]["environment"]["WEB_PORT"]
    assert DURATION.fullmatch(config["global"]["scrape_interval"])


def test_alert_rules_cover_what_operators_must_hear_about():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert REQUIRED_ALERTS <= set(names)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert balanced(rule["expr"]), rule["alert"]
        assert "for" not in rule or DURATION.fullmatch(rule["for"]), rule["alert"]
        assert re.search(r"\bcfr_[a-z0-9_]+", rule["expr"]), rule["alert"]
    by_name = {rule["alert"]: rule for rule in rules}
    assert 'status="418"' in by_name["RestBanned"]["expr"]
    assert "cfr_ws_seconds_since_last_message" in by_name["FetcherSilent"]["expr"]


def test_the_dashboard_loads_and_queries_the_provisioned_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len(graphs) >= 12
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert (
            set(panel["gridPos"]) == {"h", "w", "x", "y"}
            and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        )
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
            assert balanced(target["expr"]) and "cfr_" in target["expr"], target["expr"]


def test_promtool_accepts_the_config_the_rules_and_the_dashboard_queries(tmp_path):
    """With promtool on PATH (Debian's `prometheus` package has it) the files are checked as
    Prometheus reads them; the dashboard's queries as recording rules, which must parse the same."""
    promtool = shutil.which("promtool")
    recording = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(dashboard_queries())
    ]}]}  # fmt: skip
    queries = tmp_path / "dashboard_rules.yml"
    queries.write_text(yaml.safe_dump(recording))
    assert yaml.safe_load(queries.read_text()) == recording
    if promtool is None:
        assert all(balanced(rule["expr"]) for rule in recording["groups"][0]["rules"])
        return
    for args in (["check", "config", str(PROMETHEUS_CONFIG)], ["check", "rules", str(ALERTS), str(queries)]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
