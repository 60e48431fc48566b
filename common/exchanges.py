"""The exchanges the platform serves: the one declaration every list of them is derived from.

`EXCHANGES` (names, in the platform's order), `ExchangeName` (the API's type), the adapters
(`fetchers.exchanges.ADAPTERS`, one module `fetchers/exchanges/<name>.py` each), the Celery queues
(`<name>_rest`), the simulator's exchanges, ports and addresses and the demo's backfill all follow
from `EXCHANGE_SPECS`. Ground floor: this module imports nothing of the project, so the settings and
the simulator both read it. docs/architecture.md ("Adding an exchange") lists what else a new one
needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """One exchange, as far as code outside its adapter and its simulator twin needs to know it."""

    name: str
    simulator_port: int
    """The port `python -m simulator` serves the exchange's REST and websocket APIs on by default."""
    simulator_ws: str
    """The simulator's websocket address for it, `{address}` standing for `host:port`."""
    demo_symbols: str
    """The markets `make demo` backfills a day of (`--symbols` of `scripts.fetchers.rest fetch`)."""


EXCHANGE_SPECS: tuple[ExchangeSpec, ...] = (
    ExchangeSpec("bitfinex", 18401, "ws://{address}/ws/2", "BTC/USD,ETH/USD"),
    ExchangeSpec("binance", 18402, "ws://{address}", "BTC/USDT,ETH/USDT"),
    ExchangeSpec("bittrex", 18403, "http://{address}/signalr", "BTC/USD,ETH/USD"),
)

EXCHANGES: tuple[str, ...] = tuple(spec.name for spec in EXCHANGE_SPECS)
ExchangeName = Literal[EXCHANGES]  # type: ignore[valid-type]
"""`Literal["bitfinex", "binance", "bittrex"]`, made from `EXCHANGES` (the API validates with it)."""

SIMULATOR_CONTROL_PORT = 18404
SIMULATOR_PORTS: dict[str, int] = {
    **{spec.name: spec.simulator_port for spec in EXCHANGE_SPECS},
    "control": SIMULATOR_CONTROL_PORT,
}
"""The ports `python -m simulator` listens on unless `--ports` says otherwise, so the `.env` lines it
prints stay valid across restarts (`SIMULATOR_HOST` points the platform at them). Library use of the
simulator (`SimConfig().ports` empty) takes free ports."""


def simulator_urls(host: str, ports: dict[str, int]) -> dict[str, dict[str, str] | str]:
    """Where a simulator on `host` with these ports answers: per exchange its REST and websocket
    base URLs (`{"rest": ..., "ws": ...}`), and the control port's URL under `"control"`."""
    shown = f"[{host}]" if ":" in host else host
    urls: dict[str, dict[str, str] | str] = {
        spec.name: {
            "rest": f"http://{shown}:{ports[spec.name]}",
            "ws": spec.simulator_ws.format(address=f"{shown}:{ports[spec.name]}"),
        }
        for spec in EXCHANGE_SPECS
    }
    urls["control"] = f"http://{shown}:{ports['control']}"
    return urls
