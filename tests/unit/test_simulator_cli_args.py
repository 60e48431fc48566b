"""`python -m simulator` flags turned into a `SimConfig`: fixed default ports, `--ports`, faults."""

from __future__ import annotations

import pytest

from common.exchanges import EXCHANGES, SIMULATOR_PORTS, simulator_urls
from simulator.__main__ import build_parser, config_from_args
from simulator.config import SimConfig
from simulator.server import SERVERS, Simulator

pytestmark = pytest.mark.unit


def config(*argv: str) -> SimConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_the_command_line_listens_on_fixed_ports_unless_told_otherwise() -> None:
    assert config().ports == SIMULATOR_PORTS
    assert len(set(SIMULATOR_PORTS.values())) == 4
    assert config("--ports", "9001,0,9003,9004").ports == {"bitfinex": 9001, "bittrex": 9003, "control": 9004}
    assert config("--ports", "0,0,0,0").ports == {}, "0 = any free port"
    assert SimConfig().ports == {}, "library use (and the tests) take free ports"


def test_every_exchange_of_the_registry_has_its_simulator_twin() -> None:
    assert tuple(SIMULATOR_PORTS) == (*EXCHANGES, "control")
    assert {server.port for server in SERVERS} == set(SIMULATOR_PORTS)
    urls = simulator_urls("127.0.0.1", SIMULATOR_PORTS)
    assert urls["binance"] == {"rest": "http://127.0.0.1:18402", "ws": "ws://127.0.0.1:18402"}
    assert urls["bittrex"] == {"rest": "http://127.0.0.1:18403", "ws": "http://127.0.0.1:18403/signalr"}
    assert simulator_urls("::1", SIMULATOR_PORTS)["bitfinex"]["ws"] == "ws://[::1]:18401/ws/2"
    assert urls["control"] == "http://127.0.0.1:18404"


def test_faults_from_flags_include_the_new_rest_faults() -> None:
    built = config("--fault", "binance:http_reset_rate=0.25", "--fault", "bittrex:http_truncate_rate=1")
    assert built.faults == {"binance": {"http_reset_rate": 0.25}, "bittrex": {"http_truncate_rate": 1}}
    with pytest.raises(ValueError, match="between 0 and 1"):
        config("--fault", "binance:http_reset_rate=1.5")


def test_a_loss_from_the_command_line_is_armed_before_the_first_frame() -> None:
    built = config("--markets", "3", "--fault", "binance:lose_ws_closes=2")
    assert built.faults == {"binance": {"lose_ws_closes": 2}}
    assert Simulator(built).faults["binance"].closes_to_lose == 2
