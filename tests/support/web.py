"""Helpers for the web tests: a real server on a free port, HTTP calls, known data, live bars.

`imitate_live_pipeline_bar` writes a bar exactly the way CONTRACTS of the live pipeline say the
websocket fetcher does (the `ws_send_` hash, then PUBLISH on the channel of the same name): the web
tests use it where the real fetcher is not part of the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import urlopen

import redis
import uvicorn

from common.candle import Candle, Market
from common.db import connection, refresh_aggregates, upsert_candles, upsert_markets
from common.redis_keys import ws_send_key, ws_sub_key
from common.settings import Settings
from common.timeutil import datetime_to_ms, ms_to_datetime
from tests.support.services import free_port, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium, driven by Playwright (as root it needs --no-sandbox)."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@contextmanager
def running_web(settings: Settings) -> Iterator[str]:
    """`create_app(settings)` served by uvicorn on a free port in this process; yields the base URL."""
    from web.main import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ws="websockets-sansio",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the web app did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def web_process(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`uvicorn web.main:app` as a child process configured by `env`; yields the base URL."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "web.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: proc.poll() is None and http_get(f"{base}/api/openapi.json")[0] == 200, 30, "web app"
        )
        yield base
    finally:
        stop_process(proc)


@contextmanager
def chromium_page(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, Any, list[str]]]:
    """`web_process(env)` and a headless Chromium page on a 1280x800 viewport; yields the base URL,
    the page and the list its JavaScript errors are collected in."""
    from playwright.sync_api import sync_playwright

    with web_process(env, log_path) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield base, page, errors
        finally:
            browser.close()


def http_get(url: str, **params: Any) -> tuple[int, Any]:
    """(status, decoded JSON body) of a GET; error statuses are returned, not raised."""
    if params:
        url += "?" + urlencode({k: v for k, v in params.items() if v is not None})
    try:
        with urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


# ------------------------------------------------------------------------------- known data

HOUR_MS = 3_600_000
BTC = Market("binance", "BTC", "USDT", "BTCUSDT")
ETH = Market("bitfinex", "ETH", "BTC", "tETHBTC")
# A Monday 00:00 UTC: every aggregate level's buckets (origin 2000-01-03) start here too.
BASE_MS = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)


def market_key(market: Market) -> tuple[str, str, str]:
    """The (exchange, base_id, quote_id) a Candle starts with."""
    return market.exchange, market.base_id, market.quote_id


def known_candle(market: Market, index: int) -> Candle:
    """Minute `index` after BASE_MS: distinct, exact decimal text with trailing zeros kept."""
    base = Decimal(100 + index % 37) + Decimal(index) / Decimal(1000)
    return Candle(
        exchange=market.exchange,
        base_id=market.base_id,
        quote_id=market.quote_id,
        time=ms_to_datetime(BASE_MS + index * 60_000),
        open=Decimal(f"{base:.4f}"),
        high=Decimal(f"{base + Decimal('1.25'):.4f}"),
        low=Decimal(f"{base - Decimal('0.75'):.4f}"),
        close=Decimal(f"{base + Decimal('0.5'):.4f}"),
        volume=Decimal(f"{Decimal(index % 11) + Decimal('0.123456789'):.9f}"),
    )


def stored_form(candle: Candle) -> Candle:
    """A test candle built with Decimal values and a datetime, in the form the writer takes: the
    values' exact decimal text and the time in epoch ms (see common.candle)."""
    return Candle(
        candle.exchange,
        candle.base_id,
        candle.quote_id,
        datetime_to_ms(candle.time),
        str(candle.open),
        str(candle.high),
        str(candle.low),
        str(candle.close),
        str(candle.volume),
    )


def seed_known_data(
    settings: Settings, markets: list[Market], minutes: list[int]
) -> dict[Market, list[Candle]]:
    """The markets, their candles at the given minute indexes, and every aggregate refreshed."""
    with connection(settings) as conn:
        upsert_markets(conn, markets)
        written = {m: [known_candle(m, i) for i in minutes] for m in markets}
        upsert_candles(conn, [stored_form(c) for candles in written.values() for c in candles])
    refresh_aggregates(settings, None, None)
    return written


def expected_bar(candles: list[Candle], bucket_ms: int) -> dict:
    """An interval bar computed straight from minute candles (what the API must answer)."""
    return {
        "time": bucket_ms,
        "open": str(candles[0].open),
        "high": str(max(c.high for c in candles)),
        "low": str(min(c.low for c in candles)),
        "close": str(candles[-1].close),
        "volume": str(sum((c.volume for c in candles), Decimal(0))),
    }


def minute_dict(candle: Candle) -> dict:
    return {
        "time": int(candle.time.timestamp() * 1000),
        "open": str(candle.open),
        "high": str(candle.high),
        "low": str(candle.low),
        "close": str(candle.close),
        "volume": str(candle.volume),
    }


# -------------------------------------------------------------------- the live pipeline's writes


def imitate_live_pipeline_bar(client: redis.Redis, settings: Settings, market: Market, bar: dict) -> None:
    """Write `bar` as the websocket fetcher does per the live-pipeline contract: the `ws_send_` hash
    (decimal text fields, `time` in ms) and a PUBLISH of compact JSON on the same-named channel."""
    key = ws_send_key(
        market.exchange, market.base_id, market.quote_id, delimiter=settings.redis_key_delimiter
    )
    fields = {"time": str(bar["time"]), **{k: bar[k] for k in ("open", "high", "low", "close", "volume")}}
    client.hset(key, mapping=fields)
    payload = {"time": int(bar["time"]), **{k: bar[k] for k in ("open", "high", "low", "close", "volume")}}
    client.publish(key, json.dumps(payload, separators=(",", ":")))


def imitate_waiting_minute(client: redis.Redis, settings: Settings, market: Market, bar: dict) -> None:
    """A minute waiting for the updater: a `ws_sub_` hash field, as the live pipeline keeps them."""
    key = ws_sub_key(market.exchange, market.base_id, market.quote_id, delimiter=settings.redis_key_delimiter)
    payload = {"time": int(bar["time"]), **{k: bar[k] for k in ("open", "high", "low", "close", "volume")}}
    client.hset(key, str(bar["time"]), json.dumps(payload, separators=(",", ":")))
    client.sadd("ws_sub_list", key)
