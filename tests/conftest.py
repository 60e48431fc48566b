"""Shared fixtures: throwaway PostgreSQL and Redis, and settings pointing at them.

`database` gives each test its own fresh, schema-initialised database (cloned from a template,
~0.1 s), so tests never see each other's rows. The schema is plain PostgreSQL, or TimescaleDB
when the suite runs with CFR_TEST_TIMESCALEDB=1 (see tests/support/services.py).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from common import settings as settings_module
from common.schema import apply_schema
from common.settings import Settings
from tests.support.services import TIMESCALEDB_ENV, PostgresServer, RedisServer

TEMPLATE_DB = "cfr_template"
_db_counter = itertools.count(1)

SERVICE_ENV = (
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "BACKFILL_SOURCE",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test carries the marker of its folder (unit, integration, e2e), so `make test-unit`
    and friends never leave a file out for a forgotten `pytestmark`."""
    for item in items:
        kind = item.path.parent.name
        if kind in {"unit", "integration", "e2e"} and item.get_closest_marker(kind) is None:
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session", autouse=True)
def log_dir(tmp_path_factory) -> Iterator[str]:
    """Every process the tests start logs under a temp dir, never into the repository's logs/."""
    path = str(tmp_path_factory.mktemp("logs"))
    previous = os.environ.get("LOG_DIR")
    os.environ["LOG_DIR"] = path
    settings_module.get_settings.cache_clear()
    yield path
    if previous is None:
        os.environ.pop("LOG_DIR", None)
    else:
        os.environ["LOG_DIR"] = previous


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def timescaledb(postgres_server: PostgresServer) -> bool:
    """Whether this run checks the TimescaleDB path (else plain PostgreSQL)."""
    return postgres_server.timescaledb


@pytest.fixture(scope="session")
def template_database(postgres_server: PostgresServer, timescaledb: bool) -> str:
    admin = postgres_server.connect("postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    admin.close()
    in_use = apply_schema(settings_for(postgres_server, None, TEMPLATE_DB), plain=not timescaledb)
    if in_use != timescaledb:
        raise RuntimeError(f"{TIMESCALEDB_ENV}=1 but the schema came out plain: is TimescaleDB installed?")
    postgres_server.freeze_template(TEMPLATE_DB)
    return TEMPLATE_DB


def settings_for(pg: PostgresServer, rd: RedisServer | None, dbname: str, **extra) -> Settings:
    """History over REST only (`BACKFILL_SOURCE=rest`) unless `extra` says otherwise: most backfill
    tests are about REST; the archive's own tests ask for `auto` or `archive`."""
    values = dict(
        backfill_source="rest",
        postgres_host="127.0.0.1",
        postgres_port=pg.port,
        postgres_user=pg.user,
        postgres_password="",
        postgres_db=dbname,
        _env_file=None,
    )
    if rd is not None:
        values.update(redis_host="127.0.0.1", redis_port=rd.port, redis_password=rd.password)
    values.update(extra)
    return Settings(**values)


def service_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make a subprocess use the same services as `settings`."""
    return {
        "POSTGRES_HOST": settings.postgres_host,
        "POSTGRES_PORT": str(settings.postgres_port),
        "POSTGRES_USER": settings.postgres_user,
        "POSTGRES_PASSWORD": settings.postgres_password.get_secret_value(),
        "POSTGRES_DB": settings.postgres_db,
        "REDIS_HOST": settings.redis_host,
        "REDIS_PORT": str(settings.redis_port),
        "REDIS_PASSWORD": settings.redis_password.get_secret_value(),
        "REDIS_DB": str(settings.redis_db),
        "BACKFILL_SOURCE": settings.backfill_source,
    }


@pytest.fixture
def database(postgres_server: PostgresServer, template_database: str) -> Iterator[str]:
    """Name of a fresh database with the schema applied, dropped after the test."""
    name = f"cfr_test_{os.getpid()}_{next(_db_counter)}"
    postgres_server.clone_database(name, template_database)
    yield name
    postgres_server.drop_database(name)


@pytest.fixture
def settings(
    postgres_server: PostgresServer, redis_server: RedisServer, database: str, monkeypatch
) -> Iterator[Settings]:
    """Settings for the test's own database and the throwaway Redis, also exported to the
    environment (and `get_settings()`) so code under test and its subprocesses use them."""
    redis_server.client().flushall()
    current = settings_for(postgres_server, redis_server, database)
    for key, value in service_env(current).items():
        monkeypatch.setenv(key, value)
    settings_module.get_settings.cache_clear()
    yield current
    settings_module.get_settings.cache_clear()


@pytest.fixture
def db_conn(settings: Settings):
    from common.db import connect

    conn = connect(settings)
    yield conn
    conn.close()


@pytest.fixture
def simulator():
    """A fresh in-process exchange simulator with the fast-test limits (3-second windows)."""
    from tests.support.simulator import running_simulator

    with running_simulator() as handle:
        yield handle


def simulator_limits(handle) -> dict:
    """Platform settings whose rate limits are exactly the simulator's (scaled) published ones."""
    config = handle.simulator.config
    return dict(
        rest_rate_window_seconds=config.rate_window_seconds,
        bitfinex_rest_requests_per_minute=config.bitfinex_candle_requests_per_window,
        binance_rest_weight_per_minute=config.binance_weight_per_window,
        bittrex_rest_requests_per_minute=config.bittrex_requests_per_window,
    )


@pytest.fixture
def platform_settings(settings: Settings, simulator, monkeypatch) -> Settings:
    """`settings` pointed at the simulator, with its limits; exported to the environment too."""
    values = {**simulator.settings_overrides(), **simulator_limits(simulator), "rest_timeout_seconds": 5.0}
    for key, value in values.items():
        monkeypatch.setenv(key.upper(), str(value))
    settings_module.get_settings.cache_clear()
    return settings.model_copy(update=values)
