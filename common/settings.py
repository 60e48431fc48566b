"""Every knob of the platform, read once from the environment, the project's `.env` and a `.env` in
the working folder (which wins).

One place for configuration: modules ask `get_settings()` instead of reading `os.environ`.
`load_settings_or_exit()` is what commands call at start-up: a bad value stops the program
with one line naming the variable and what is wrong, never a traceback.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.exchanges import EXCHANGES as EXCHANGES  # declared there; re-exported for older importers
from common.exchanges import SIMULATOR_PORTS, simulator_urls
from common.exchanges import ExchangeName as ExchangeName

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Platform settings. Environment variable names are the field names in upper case."""

    model_config = SettingsConfigDict(
        env_file=(PROJECT_ROOT / ".env", ".env"),  # the project's, then the working folder's on top
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # PostgreSQL / TimescaleDB
    postgres_host: str = "127.0.0.1"
    postgres_port: int = Field(default=15432, ge=1, le=65535)
    """The platform's own PostgreSQL (`make up`, Docker's published port): not 5432, which a machine's
    own PostgreSQL usually holds. Set 5432 to use a server of your own there."""
    postgres_user: str = "postgres"
    postgres_password: SecretStr = SecretStr("")
    postgres_db: str = "coin_for_rich"
    timescaledb_compress_after_days: int = Field(default=3, ge=0, le=36_500)
    """TimescaleDB: compress (columnstore) ohlcvs chunks once they are this many days old; 0 = never.
    Applied by `python -m scripts.database init` as TimescaleDB compression policies."""

    # Redis (broker, latest bars, shared rate budgets)
    redis_host: str = "127.0.0.1"
    redis_port: int = Field(default=16379, ge=1, le=65535)
    """The platform's own Redis, likewise clear of the usual 6379."""
    redis_password: SecretStr = SecretStr("")
    redis_db: int = Field(default=0, ge=0, le=15)
    redis_key_delimiter: str = Field(default=";;", min_length=1)

    # Docker Compose: the address published ports bind to (read by docker-compose.yml only)
    bind_address: str = "127.0.0.1"

    # Web and Flower
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8000, ge=1, le=65535)
    flower_port: int = Field(default=5555, ge=1, le=65535)
    web_db_pool_size: int = Field(default=10, ge=1, le=200)
    web_ohlcvs_max_limit: int = Field(default=5000, ge=1, le=100_000)
    web_ws_heartbeat_seconds: float = Field(default=15.0, gt=0)
    web_ws_queue_size: int = Field(default=256, ge=1)
    web_health_stale_seconds: float = Field(default=60.0, gt=0)
    web_cache_mb: int = Field(default=256, ge=0)  # rendered closed history per web process; 0 = off
    web_cache_ttl_seconds: float = Field(default=60.0, gt=0)  # bounds writes made outside the platform

    # Exchange endpoints (defaults: the real exchanges; point them at `python -m simulator` offline)
    bitfinex_rest_url: str = "https://api-pub.bitfinex.com"
    bitfinex_ws_url: str = "wss://api-pub.bitfinex.com/ws/2"
    binance_rest_url: str = "https://api.binance.com"
    binance_ws_url: str = "wss://stream.binance.com:9443"
    binance_archive_url: str = "https://data.binance.vision"
    """Binance's public data archive (kline files per month and day); the simulator serves it on its
    Binance port."""
    bittrex_rest_url: str = "https://api.bittrex.com"
    bittrex_ws_url: str = "https://socket-v3.bittrex.com/signalr"
    simulator_host: str = ""
    """When set, every exchange URL above points at `python -m simulator` on this host at its fixed
    ports instead (`make demo` sets it to 127.0.0.1; the compose demo to `simulator`)."""

    # REST rate limits (the exchanges' published limits; lower them to be gentler)
    bitfinex_rest_requests_per_minute: int = Field(default=30, ge=1)
    binance_rest_weight_per_minute: int = Field(default=6000, ge=1)
    bittrex_rest_requests_per_minute: int = Field(default=60, ge=1)
    rest_rate_window_seconds: float = Field(default=60.0, gt=0)
    rest_concurrency: int = Field(default=8, ge=1, le=256)
    rest_timeout_seconds: float = Field(default=30.0, gt=0)
    rest_max_retries: int = Field(default=5, ge=0)
    rest_outage_seconds: float = Field(default=60.0, ge=0)

    # History from Binance's public archive (files per month and day; no REST weight)
    backfill_source: Literal["auto", "rest", "archive"] = "auto"
    """Where `fetch` and the repair take history from: `auto` the archive's files for closed days
    where the exchange has one (Binance) and REST for the rest; `rest` REST only; `archive` files
    only (`fetch --source` overrides it)."""
    archive_concurrency: int = Field(default=4, ge=1, le=64)
    """Archive files downloaded at once per engine (their own limit: they use no REST weight)."""
    archive_timeout_seconds: float = Field(default=120.0, gt=0)
    archive_max_retries: int = Field(default=2, ge=0)
    """Retries of a file that failed (unreachable, checksum, unreadable) before its range goes to REST."""

    # Self-healing history: the automatic repair of gaps (beat task and `rest repair`)
    repair_interval_seconds: float = Field(default=300.0, gt=0)
    """How often the beat task plans and queues the repair of every exchange's gaps (first: as it starts)."""
    repair_settle_minutes: int = Field(default=3, ge=0)
    """The newest minutes are left to the live feed: repair plans up to the exchange's now less this."""
    repair_max_requests: int = Field(default=2000, ge=1)
    """Requests one repair job may plan per exchange (the next run plans the rest)."""
    repair_yield_seconds: float = Field(default=2.0, ge=0)
    """A repair request waits while a user backfill reserved a request within this many seconds."""

    # Live pipeline
    updater_flush_seconds: float = Field(default=5.0, gt=0)
    ws_connect_window_seconds: float = Field(default=60.0, gt=0)
    bitfinex_ws_heartbeat_seconds: float = Field(default=15.0, gt=0)
    binance_ws_heartbeat_seconds: float = Field(default=20.0, gt=0)
    bittrex_ws_heartbeat_seconds: float = Field(default=5.0, gt=0)
    ws_backoff_base_seconds: float = Field(default=0.5, gt=0)
    ws_backoff_max_seconds: float = Field(default=30.0, gt=0)
    ws_markets_refresh_seconds: float = Field(default=60.0, gt=0)

    # Metrics (GET /metrics on the web; docs/operations.md "Metrics")
    metrics_publish_seconds: float = Field(default=5.0, gt=0)
    """How often each fetcher, the updater and every Celery worker process writes its metrics to Redis."""
    metrics_snapshot_ttl_seconds: float = Field(default=30.0, gt=0)
    """A process's metrics leave `/metrics` this long after its last write (it stopped or hangs)."""
    metrics_state_seconds: float = Field(default=30.0, gt=0)
    """The jobs and coverage figures of `/metrics` are read again at most this often (a pass over
    every market's coverage); a scrape in between answers with the last reading."""

    # Docker Compose's monitoring profile (read by docker-compose.yml only)
    prometheus_port: int = Field(default=9090, ge=1, le=65535)
    prometheus_retention: str = "15d"
    grafana_port: int = Field(default=3000, ge=1, le=65535)
    grafana_admin_password: SecretStr = SecretStr("")
    """Grafana's `admin` password; its container refuses to start without one."""

    # Running without Docker (`make up` / `make demo`): PostgreSQL, Redis and supervisor state
    local_data_dir: Path = PROJECT_ROOT / "local_data"

    # Logging
    log_dir: Path = PROJECT_ROOT / "logs"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("local_data_dir", "log_dir")
    @classmethod
    def _under_project_root(cls, value: Path) -> Path:
        """A relative folder is the project's (`local_data` = `<project>/local_data`), wherever the
        command runs from and whatever a server's own working directory is."""
        return value if value.is_absolute() else PROJECT_ROOT / value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def rest_url(self, exchange: str) -> str:
        if self.simulator_host:
            return self._simulator_urls()[exchange]["rest"]
        return str(getattr(self, f"{exchange}_rest_url")).rstrip("/")

    def ws_url(self, exchange: str) -> str:
        if self.simulator_host:
            return self._simulator_urls()[exchange]["ws"]
        return str(getattr(self, f"{exchange}_ws_url")).rstrip("/")

    def archive_url(self, exchange: str) -> str:
        """Base URL of the exchange's public data archive (the simulator: its exchange port)."""
        if self.simulator_host:
            return self._simulator_urls()[exchange]["rest"]
        return str(getattr(self, f"{exchange}_archive_url")).rstrip("/")

    def _simulator_urls(self) -> dict:
        return simulator_urls(self.simulator_host, SIMULATOR_PORTS)

    @property
    def redis_url(self) -> str:
        from urllib.parse import quote

        password = self.redis_password.get_secret_value()
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"


class SettingsError(SystemExit):
    """Raised (as a clean exit) when the configuration is invalid."""


def describe_validation_error(error: ValidationError) -> str:
    """One line: `VARIABLE: what is wrong` for the first problem (and how many more)."""
    problems = error.errors()
    first = problems[0]
    name = ".".join(str(part) for part in first.get("loc", ())) or "settings"
    line = f"invalid setting {name.upper()}: {first.get('msg', 'invalid value')}"
    if "input" in first and not isinstance(first["input"], dict) and "password" not in name:
        line += f" (got {first['input']!r})"
    if len(problems) > 1:
        line += f" (and {len(problems) - 1} more problem(s))"
    return line


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def load_settings_or_exit() -> Settings:
    """For commands: the settings, or one readable line on stderr and exit code 2."""
    try:
        return get_settings()
    except ValidationError as error:
        print(f"error: {describe_validation_error(error)}", file=sys.stderr)
        raise SettingsError(2) from None
