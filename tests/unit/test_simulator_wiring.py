"""How servers plug into the simulator: one protocol, each server owning its fault actions."""

from __future__ import annotations

import asyncio

import pytest

from simulator.config import PORT_NAMES, SimConfig
from simulator.faults import ACTIONS
from simulator.server import Simulator
from simulator.state import ControlledState, SimState

pytestmark = pytest.mark.unit


def test_every_action_has_exactly_one_server_per_exchange_that_performs_it() -> None:
    sim = Simulator(SimConfig(markets=3))
    assert {server.port for server in sim.servers} == set(PORT_NAMES)
    owners = {
        (server.port, action): type(server).__name__ for server in sim.servers for action in server.actions
    }
    assert set(action for _, action in owners) == set(ACTIONS), "every action is performed somewhere"
    assert all(sum(1 for s in sim.servers if s.port == p and a in s.actions) == 1 for p, a in owners)
    assert sim.supports_action("bittrex", "drop_ws") and not sim.supports_action("bittrex", "ws_info")
    assert sim.supports_action("bitfinex", "ws_info") and sim.supports_action("binance", "server_shutdown")
    with pytest.raises(ValueError, match="binance has no action 'ws_info'"):
        asyncio.run(sim.fault_action("binance", "ws_info", {"ws_info": 20051}))


def test_the_simulator_is_the_state_servers_are_given() -> None:
    sim = Simulator(SimConfig(markets=3))
    for protocol in (SimState, ControlledState):
        members = {name for name in vars(protocol) if not name.startswith("_")} | set(
            protocol.__annotations__
        )
        assert all(hasattr(sim, name) for name in members), members - set(dir(sim))
    assert sim.stats.connections.counts() == {}, "the connection registry belongs to the stats"
