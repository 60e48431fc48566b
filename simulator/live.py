"""The live candle feed: one scheduler for all subscribed markets of all exchanges.

Every websocket server (Bitfinex, Binance, and the Bittrex SignalR server) gets its bars from here, so
they all see the same minute boundaries and the same candles as REST and the control port.

How to use it (this is the hook the exchange websocket servers import)::

    feed: LiveFeed = simulator.feed                       # or LiveFeed(clock, model, catalog)
    sub = feed.subscribe("bittrex", "BTC-USD", on_event)  # on_event(event: CandleEvent) -> None
    ...
    sub.close()

`on_event` is called synchronously from the scheduler task on the simulator's event loop. It must not
block or await: append to a per-connection buffer and wake a writer task. It receives, per subscribed
market and simulated minute M:

- `kind == "open"` at M + 0: the bar as it starts (`CandleModel.opening_candle`: no trades yet, not
  even one made at M + 0; flat at the previous close, volume 0; exactly Bittrex's start-of-interval
  placeholder);
- `kind == "update"` at `updates_per_minute - 1` evenly spaced sim times inside M: the in-progress bar
  (`model.partial_candle` at that time); `event.changed` tells whether it differs from the previous
  event of this market, so a server that "pushes only on change" can skip it;
- `kind == "final"` at M + 60 s (delivered just before the "open" of M+1): the closed bar, equal to
  `CandleModel.final_candle` and to `/control/candles`;
- `kind == "missed"` instead of "final" when the feed fell more than `MAX_FINALS_CAUGHT_UP` minutes
  behind: the closed bar, which the server must not send but count as a frame it sent and lost (its
  sequence numbers used, the minute recorded as withheld), as an exchange's lossy path would.

If the process falls behind, intermediate updates are skipped but every minute still gets exactly one
"final" or "missed" (in order) and one "open". Only markets with at least one subscriber cost
anything; there is one task in total, not one per market. `subscribe` raises `KeyError` for a
market the simulator does not list; the caller decides whether that is an error on its wire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from common.timeutil import MINUTE_MS, floor_minute_ms
from simulator.core import CandleModel, SimCandle, SimClock, SimMarket

log = logging.getLogger(__name__)

EventKind = Literal["open", "update", "final", "missed"]

MAX_FINALS_CAUGHT_UP = 5
"""After a stall longer than this many minutes, older finals are not sent but delivered as "missed"
(the feed moves on, with a warning): servers count them as lost frames, so clients that number
messages see the gap and no client can claim those minutes complete."""


@dataclass(frozen=True, slots=True)
class CandleEvent:
    market: SimMarket
    minute_ms: int
    candle: SimCandle
    kind: EventKind
    sim_ms: int
    changed: bool

    @property
    def final(self) -> bool:
        return self.kind == "final"

    @property
    def missed(self) -> bool:
        return self.kind == "missed"


Listener = Callable[[CandleEvent], None]


class Subscription:
    """A handle from `LiveFeed.subscribe`; `close()` stops delivery (idempotent)."""

    __slots__ = ("feed", "market", "listener", "_open")

    def __init__(self, feed: LiveFeed, market: SimMarket, listener: Listener) -> None:
        self.feed = feed
        self.market = market
        self.listener = listener
        self._open = True

    @property
    def active(self) -> bool:
        return self._open

    def close(self) -> None:
        if self._open:
            self._open = False
            self.feed._remove(self)


class LiveFeed:
    """Drives in-progress and final bars for every subscribed market (see the module docstring)."""

    def __init__(
        self,
        clock: SimClock,
        model: CandleModel,
        markets: Iterable[SimMarket],
        updates_per_minute: int = 2,
    ) -> None:
        if updates_per_minute < 1:
            raise ValueError("updates_per_minute must be >= 1")
        self.clock = clock
        self.model = model
        self.updates_per_minute = updates_per_minute
        self._markets: dict[tuple[str, str], SimMarket] = {(m.exchange, m.symbol): m for m in markets}
        self._subs: dict[tuple[str, str], list[Subscription]] = {}
        self._last: dict[tuple[str, str], SimCandle] = {}
        self._open_minute: int | None = None
        self.events_delivered = 0

    # ---- catalogue

    def market(self, exchange: str, symbol: str) -> SimMarket | None:
        return self._markets.get((exchange, symbol))

    # ---- subscriptions

    def subscribe(self, exchange: str, symbol: str, listener: Listener) -> Subscription:
        market = self._markets.get((exchange, symbol))
        if market is None:
            raise KeyError(f"{exchange} does not list {symbol!r}")
        subscription = Subscription(self, market, listener)
        self._subs.setdefault((exchange, symbol), []).append(subscription)
        return subscription

    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subs.values())

    def _remove(self, subscription: Subscription) -> None:
        ident = (subscription.market.exchange, subscription.market.symbol)
        subs = self._subs.get(ident)
        if subs is None:
            return
        try:
            subs.remove(subscription)
        except ValueError:
            return
        if not subs:
            del self._subs[ident]
            self._last.pop(ident, None)

    def stamp_ms(self, now_ms: int) -> int:
        """The time a server may stamp on a frame sent now: at most the end of the oldest minute
        whose final the feed has not delivered yet. An exchange's clock never runs ahead of its own
        data stream; a timer that fires before a late feed tick must not either, or a client would
        take the stamp as proof that the minute's last update already came. A late tick sending
        the finals of several minutes sends each inside its own minute, never stamped before it."""
        if self._open_minute is None:
            return now_ms
        return min(now_ms, self._open_minute + MINUTE_MS - 1)

    # ---- the scheduler

    def tick_times(self, minute_ms: int) -> list[int]:
        """Sim times of the ticks inside `minute_ms` (the first one is the minute's "open")."""
        step = MINUTE_MS // self.updates_per_minute
        return [minute_ms + k * step for k in range(self.updates_per_minute)]

    async def run(self) -> None:
        """Run until cancelled."""
        while True:
            now = self.clock.now_ms()
            self.step(now)
            await self.clock.sleep_until(self._next_tick_after(now))

    def _next_tick_after(self, now: int) -> int:
        minute = floor_minute_ms(now)
        for tick in self.tick_times(minute):
            if tick > now:
                return tick
        return minute + MINUTE_MS

    def step(self, now: int) -> None:
        """Deliver everything due at sim time `now` (public so tests can drive the feed by hand)."""
        minute = floor_minute_ms(now)
        opened = self._open_minute
        if opened == minute:
            if now > minute:
                self._emit(minute, "update", now)
            return
        if opened is not None:  # every minute from the one open so far up to this one has closed
            first = max(opened, minute - MAX_FINALS_CAUGHT_UP * MINUTE_MS)
            if first > opened and self._subs:
                log.warning(
                    "live feed fell %d minutes behind: no final sent for minutes %d .. %d",
                    (minute - opened) // MINUTE_MS,
                    opened,
                    first - MINUTE_MS,
                )
            for closed in range(opened, minute, MINUTE_MS):
                self._open_minute = closed  # frames sent with its final are stamped inside it
                kind: EventKind = "missed" if closed < first else "final"
                self._emit(closed, kind, closed + MINUTE_MS)
        self._open_minute = minute
        self._emit(minute, "open", now)

    def _emit(self, minute: int, kind: EventKind, sim_ms: int) -> None:
        """Send every subscribed market its bar of `minute`: an "update" holds the trades up to
        `sim_ms`."""
        if not self._subs:
            return
        for ident, subs in list(self._subs.items()):
            market = subs[0].market
            if kind in ("final", "missed"):
                candle = self.model.final_candle(market, minute)
            elif kind == "open":
                candle = self.model.opening_candle(market, minute)
            else:
                candle = self.model.partial_candle(market, minute, sim_ms)
            changed = self._last.get(ident) != candle
            self._last[ident] = candle
            event = CandleEvent(market, minute, candle, kind, sim_ms, changed)
            for subscription in list(subs):
                if not subscription.active:
                    continue
                try:
                    subscription.listener(event)
                    self.events_delivered += 1
                except Exception:  # a broken listener must not stop the feed for everyone else
                    log.exception("live-feed listener failed for %s %s", market.exchange, market.symbol)
                    subscription.close()
