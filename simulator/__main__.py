"""`python -m simulator`: run the exchange simulator until Ctrl-C.

Prints the base URLs and the `.env` lines that point the platform at it. It listens on fixed ports
(`common.exchanges.SIMULATOR_PORTS`, so the `.env` lines stay valid across restarts); `--ports`
changes them (0 = any free port). Every `SimConfig` knob is a flag (`--rate-window-seconds 5`,
...); faults active from the start are `--fault EXCHANGE:NAME=VALUE` (repeatable; `--help` lists
every name). `--json` prints one machine-readable line `{"urls": ..., "env": [...], "pid": ...}`
instead, for programs that start it as a subprocess. A bad flag exits with status 2 and one line on
stderr; a port already in use exits with status 3 and one line naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from typing import Any, NoReturn

from common.exchanges import EXCHANGES, SIMULATOR_PORTS
from common.timeutil import datetime_to_ms, parse_utc
from simulator.config import PORT_NAMES, SimConfig
from simulator.faults import DESCRIPTIONS
from simulator.server import PortInUseError, Simulator

SPECIAL = {"host", "markets", "speed", "seed", "start_ms", "first_ms", "history_days", "ports", "faults"}
DEFAULTS = SimConfig()
EXIT_PORT_IN_USE = 3


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _time_ms(text: str) -> int:
    try:
        return datetime_to_ms(parse_utc(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _markets(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _ports(text: str) -> dict[str, int]:
    parts = text.split(",")
    if (
        len(parts) != len(PORT_NAMES)
        or not all(p.strip().isdigit() for p in parts)
        or any(int(p) > 65535 for p in parts)
    ):
        raise argparse.ArgumentTypeError(
            "expected four ports: BITFINEX,BINANCE,BITTREX,CONTROL (0 = any free port)"
        )
    return {name: int(p) for name, p in zip(PORT_NAMES, parts, strict=True) if int(p)}


def _fault(text: str) -> tuple[str, str, Any]:
    try:
        exchange, rest = text.split(":", 1)
        name, raw = rest.split("=", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected EXCHANGE:NAME=VALUE, got {text!r}") from None
    if exchange not in EXCHANGES:
        raise argparse.ArgumentTypeError(f"unknown exchange {exchange!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return exchange, name, value


def faults_help() -> str:
    """The epilog of --help: every fault name with its meaning."""
    width = max(map(len, DESCRIPTIONS))
    lines = [f"  {name:<{width}}  {meaning}" for name, meaning in DESCRIPTIONS.items()]
    return (
        "faults (--fault EXCHANGE:NAME=VALUE at start-up, or POST /control/faults later):\n"
        + "\n".join(lines)
        + "\nREST faults apply to every REST endpoint of the exchange; exchanges: "
        + ", ".join(EXCHANGES)
        + "\nGET /control/dropped?exchange=X lists, per market, the minutes whose candle updates a "
        "websocket fault withheld or mangled"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m simulator",
        description=__doc__.split("\n\n")[0],
        epilog=faults_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default=DEFAULTS.host)
    parser.add_argument(
        "--markets", type=_markets, default=None, help="markets per exchange, or 'all' (default)"
    )
    parser.add_argument(
        "--speed", type=float, default=DEFAULTS.speed, help="simulated seconds per real second"
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--start", type=_time_ms, default=None, help="simulated start time, ISO-8601 UTC")
    parser.add_argument("--first", type=_time_ms, default=None, help="first minute of history, ISO-8601 UTC")
    parser.add_argument("--history-days", type=float, default=DEFAULTS.history_days)
    parser.add_argument(
        "--ports",
        type=_ports,
        default=dict(SIMULATOR_PORTS),
        help="BITFINEX,BINANCE,BITTREX,CONTROL ports, 0 = any free port (default: "
        + ",".join(str(SIMULATOR_PORTS[name]) for name in PORT_NAMES)
        + ")",
    )
    parser.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="EXCHANGE:NAME=VALUE",
        help="a fault active from the start (repeatable; names below)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line with the URLs")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    knobs = parser.add_argument_group("limits, timers and pacing (SimConfig fields)")
    for field in dataclasses.fields(SimConfig):
        if field.name in SPECIAL:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        if kind == "bool":
            knobs.add_argument(
                flag, dest=field.name, action=argparse.BooleanOptionalAction, default=field.default
            )
        elif kind in ("int", "int | None"):
            knobs.add_argument(flag, dest=field.name, type=int, default=field.default, metavar="N")
        elif kind == "float":
            knobs.add_argument(flag, dest=field.name, type=float, default=field.default, metavar="X")
    return parser


def config_from_args(args: argparse.Namespace) -> SimConfig:
    values: dict[str, Any] = {
        "host": args.host,
        "markets": args.markets,
        "speed": args.speed,
        "seed": args.seed,
        "start_ms": args.start,
        "first_ms": args.first,
        "history_days": args.history_days,
        "ports": args.ports,
    }
    faults: dict[str, dict[str, Any]] = {}
    for exchange, name, value in args.fault:
        faults.setdefault(exchange, {})[name] = value
    values["faults"] = faults
    for field in dataclasses.fields(SimConfig):
        if field.name not in SPECIAL and hasattr(args, field.name):
            values[field.name] = getattr(args, field.name)
    return SimConfig(**values)


async def serve(sim: Simulator, as_json: bool) -> None:
    config = sim.config
    await sim.start()
    # handlers first: a supervisor may send SIGTERM as soon as it has read the line below
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if as_json:
        print(json.dumps({"urls": sim.urls, "env": sim.env_lines(), "pid": os.getpid()}), flush=True)
    else:
        print("coin-for-rich exchange simulator")
        for exchange in EXCHANGES:
            print(f"  {exchange:<9} rest {sim.urls[exchange]['rest']:<28} ws {sim.urls[exchange]['ws']}")
        print(f"  control   {sim.urls['control']}/control/stats")
        markets = ", ".join(f"{ex} {len(sim.markets[ex])}" for ex in EXCHANGES)
        print(f"  markets: {markets}; speed {config.speed:g}x; seed {config.seed}")
        print("\n# .env lines for the platform:")
        for line in sim.env_lines():
            print(line)
        print("\nCtrl-C to stop.", flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sim = Simulator(config_from_args(args))
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(sim, args.json))
    except PortInUseError as exc:
        print(f"{parser.prog}: error: {exc.strerror}", file=sys.stderr)
        return EXIT_PORT_IN_USE
    except OSError as exc:
        print(f"{parser.prog}: error: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
