"""Per-exchange protocol adapters (pure): one module per exchange, one shape for all.

`ADAPTERS` holds one adapter per name of `common.exchanges.EXCHANGES`, in that order: the module
`fetchers/exchanges/<name>.py` and the `ExchangeAdapter` subclass in it whose `name` is `<name>`.
"""

from __future__ import annotations

import importlib

from common.exchanges import EXCHANGES
from fetchers.exchanges.base import ExchangeAdapter


def _load_adapter(name: str) -> ExchangeAdapter:
    module = importlib.import_module(f"{__package__}.{name}")
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ExchangeAdapter)
        and getattr(value, "name", None) == name
    ]
    if len(found) != 1:
        raise ImportError(f"{module.__name__} must define one ExchangeAdapter subclass with name = {name!r}")
    return found[0]()


ADAPTERS: dict[str, ExchangeAdapter] = {name: _load_adapter(name) for name in EXCHANGES}


def get_adapter(exchange: str) -> ExchangeAdapter:
    try:
        return ADAPTERS[exchange]
    except KeyError:
        raise KeyError(f"unknown exchange {exchange!r}; choose one of {', '.join(ADAPTERS)}") from None
