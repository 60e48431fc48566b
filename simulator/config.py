"""Every knob of the simulator in one dataclass, with the exchanges' published values as defaults.

Limits are expressed per *window* of real time so that tests can shrink a "minute" to a few seconds
(`rate_window_seconds`) and scale the limits down with it. `SimConfig.fast_test()` is the preset the
test-suite uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.exchanges import EXCHANGES, SIMULATOR_PORTS
from simulator.faults import Faults

PORT_NAMES: tuple[str, ...] = tuple(SIMULATOR_PORTS)
"""Every port of the simulator: one per exchange, then the control port (`common.exchanges`)."""


def platform_env(urls: dict[str, Any]) -> dict[str, str]:
    """The platform's settings (`.env` names) that point it at a simulator with these URLs."""
    env = {
        f"{exchange.upper()}_{kind.upper()}_URL": urls[exchange][kind]
        for exchange in EXCHANGES
        for kind in ("rest", "ws")
    }
    env["BINANCE_ARCHIVE_URL"] = urls["binance"]["rest"]  # the archive is served on the Binance port
    return env


DEFAULT_HISTORY_DAYS = 365.0
FAST_TEST_START_MS = 1_767_571_200_000
"""2026-01-05 00:00 UTC: where `fast_test` simulators start, so a test sees the same candles on
every run, whatever the day (a rare candle shape fails every run, or none)."""
REAL_CADENCE_PER_SIM_MINUTE = 30
"""Binance pushes a kline update at most every 2 s: 30 per minute of (simulated) exchange time."""


@dataclass
class SimConfig:
    # what is simulated
    host: str = "127.0.0.1"
    markets: int | None = None
    speed: float = 60.0
    seed: int = 0
    start_ms: int | None = None
    history_days: float = DEFAULT_HISTORY_DAYS
    first_ms: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    history_cache_days: int = 0
    """(market, day) blocks of final bars kept in memory; 0 = compute every request afresh."""
    archive_cache_mb: int = 256
    """Binance archive zips kept in memory once built (a month of one market is about 2 MB)."""
    compute_processes: int = 0
    """Processes of their own for candle work (REST, snapshots, truth); 0 = threads of this one
    (simulator/compute.py says when processes pay: the full lists at high speed)."""

    # live feed pacing: updates per sim minute (including the minute's "open" tick); None = derived
    updates_per_minute: int | None = None
    max_updates_per_real_second: float = 2.0

    # REST limits, counted per window of real time (60 s on the real exchanges)
    rate_window_seconds: float = 60.0
    bitfinex_candle_requests_per_window: int = 30
    bitfinex_conf_requests_per_window: int = 90
    bitfinex_block_seconds: float = 60.0
    binance_weight_per_window: int = 6000
    binance_ban_seconds: float = 120.0
    binance_429s_before_ban: int = 2
    bittrex_requests_per_window: int = 60

    # websocket limits and timers (real seconds)
    ws_connections_window_seconds: float = 60.0
    bitfinex_ws_connections_per_window: int = 20
    bitfinex_channels_per_connection: int = 25
    bitfinex_heartbeat_seconds: float = 15.0
    bitfinex_snapshot_candles: int = 240
    binance_ws_connections_per_window: int = 300
    binance_ws_connections_window_seconds: float = 300.0
    """Binance counts new connections per 5 minutes per IP; Bitfinex per minute (the shared window)."""
    binance_streams_per_connection: int = 1024
    binance_incoming_messages_per_second: int = 5
    binance_ping_seconds: float = 20.0
    binance_pong_timeout_seconds: float = 60.0
    binance_max_connection_seconds: float = 86_400.0
    bittrex_keepalive_seconds: float = 10.0
    bittrex_heartbeat_seconds: float = 5.0
    ws_max_queued_frames: int = 200_000

    # REST behaviour
    bittrex_recent_includes_current: bool = True
    http_hang_seconds: float = 30.0
    maintenance_seconds: float = 120.0

    # faults active from the start: {"binance": {"http_5xx_rate": 0.2}, ...}
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError("speed must be > 0")
        if self.markets is not None and self.markets < 1:
            raise ValueError("markets must be >= 1")
        if self.compute_processes < 0:
            raise ValueError("compute_processes must be >= 0")
        if self.rate_window_seconds <= 0:
            raise ValueError("rate_window_seconds must be > 0")
        if self.updates_per_minute is not None and not 1 <= self.updates_per_minute <= 60:
            raise ValueError("updates_per_minute must be between 1 and 60")
        unknown = set(self.ports) - set(PORT_NAMES)
        if unknown:
            raise ValueError(f"unknown port name(s): {', '.join(sorted(unknown))}")
        unknown = set(self.faults) - set(EXCHANGES)
        if unknown:
            raise ValueError(f"unknown exchange(s) in faults: {', '.join(sorted(unknown))}")
        probe = Faults()
        for exchange, settings in self.faults.items():
            probe.apply(exchange, settings)  # raises FaultError (a ValueError) for a bad name or value

    @property
    def effective_updates_per_minute(self) -> int:
        """Updates per sim minute: the real 2 s cadence, capped so one market costs at most
        `max_updates_per_real_second` pushes per real second."""
        if self.updates_per_minute is not None:
            return self.updates_per_minute
        real_minute_seconds = 60.0 / self.speed
        capped = int(real_minute_seconds * self.max_updates_per_real_second)
        return max(1, min(REAL_CADENCE_PER_SIM_MINUTE, capped))

    def replace(self, **changes: Any) -> SimConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def fast_test(cls, **overrides: Any) -> SimConfig:
        """Small, fast and strict: 3-second windows with proportionally smaller limits, short timers."""
        values: dict[str, Any] = dict(
            markets=12,
            speed=600.0,
            start_ms=FAST_TEST_START_MS,
            seed=1,
            history_days=30.0,
            rate_window_seconds=3.0,
            bitfinex_candle_requests_per_window=10,
            bitfinex_conf_requests_per_window=20,
            bitfinex_block_seconds=3.0,
            binance_weight_per_window=100,
            binance_ban_seconds=3.0,
            bittrex_requests_per_window=10,
            bitfinex_heartbeat_seconds=1.0,
            bitfinex_snapshot_candles=30,
            binance_ping_seconds=1.0,
            binance_pong_timeout_seconds=3.0,
            bittrex_keepalive_seconds=1.0,
            bittrex_heartbeat_seconds=1.0,
            http_hang_seconds=2.0,
            maintenance_seconds=1.0,
        )
        values.update(overrides)
        return cls(**values)
