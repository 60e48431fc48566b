"""Per-exchange protocol adapters (pure): one module per exchange, one shape for all."""

from __future__ import annotations

from fetchers.exchanges.base import ExchangeAdapter
from fetchers.exchanges.binance import BinanceAdapter
from fetchers.exchanges.bitfinex import BitfinexAdapter
from fetchers.exchanges.bittrex import BittrexAdapter

ADAPTERS: dict[str, ExchangeAdapter] = {
    adapter.name: adapter for adapter in (BitfinexAdapter(), BinanceAdapter(), BittrexAdapter())
}


def get_adapter(exchange: str) -> ExchangeAdapter:
    try:
        return ADAPTERS[exchange]
    except KeyError:
        raise KeyError(f"unknown exchange {exchange!r}; choose one of {', '.join(ADAPTERS)}") from None
