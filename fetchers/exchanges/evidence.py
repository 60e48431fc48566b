"""Which live minutes the exchange's own evidence proves complete, per market of one connection.

Live coverage is claimed only on positive evidence that every update of a minute arrived. Each
exchange module subclasses `WsEvidence` with its rule (`observe`):

- Binance: the minute's closing update (`"x": true`) arrived, on a connection whole since before
  the minute began (the market's first frame on it was sent earlier);
- Bittrex: the stream's `sequence` is contiguous from a message of an earlier minute to one of a
  later minute;
- Bitfinex (conf SEQ_ALL + TIMESTAMP): the socket's sequence is contiguous, and the channel's
  frames (data or heartbeats) never lay more than the heartbeat interval apart, from before the
  minute began to a frame sent after it ended. A quiet minute is proven this way too.

This base keeps each market's run of proof: a run starts at a minute the rule can vouch for from
then on, proves minutes one after another, and ends when the evidence breaks (a sequence jump, a
missing close, a silent channel, a reconnect, a dropped bar). The minutes between the end of one
run's proof and the start of the next are an outage, recorded when the next run starts. Pure: the
connection feeds it events and the coverage task takes the records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from fetchers.exchanges.base import WsEvent, WsLimits


@dataclass(frozen=True, slots=True)
class MinuteSpan:
    """Minutes [start_ms, end_ms) of one market: proven complete, or (with a reason) an outage."""

    symbol: str
    start_ms: int
    end_ms: int
    reason: str = ""


@dataclass(slots=True)
class MarketProof:
    """One market's run of proof: minutes [since_ms, until_ms) proven while `since_ms` is set."""

    since_ms: int | None = None
    until_ms: int = 0
    unreported: list[list[int]] = field(default_factory=list)
    """Proven ranges not yet handed out (they wait for the updater to close their bars)."""
    open_from_ms: int | None = None
    """First minute not proven since the last run ended (None: no outage is open)."""
    reason: str = ""


class WsEvidence:
    """The runs of proof of one connection's markets; subclasses read the exchange's evidence."""

    def __init__(self, symbols: Iterable[str], limits: WsLimits) -> None:
        self.limits = limits
        self.markets: dict[str, MarketProof] = {symbol: MarketProof() for symbol in symbols}
        self._outages: list[MinuteSpan] = []
        self._suspect = ""
        self.paused = False
        """The exchange paused its data (maintenance): no run starts until the socket is resubscribed."""

    # ---- what the connection tells

    def observe(self, event: WsEvent, received: float) -> None:
        """One parsed event, received at `received` (`time.perf_counter()`)."""
        raise NotImplementedError

    def restart(self, reason: str) -> None:
        """The socket was (re)opened or resubscribed: every run ends, per-socket counters reset."""
        self.paused = False
        for symbol in self.markets:
            self.end_run(symbol, reason)

    def pause(self, reason: str) -> None:
        """The exchange paused its data until it asks for a resubscription (Bitfinex maintenance):
        every run ends and none starts before `restart`. The socket may keep beating with contiguous
        numbers meanwhile, but beats during a pause prove nothing: the trades were never sent."""
        self.restart(reason)
        self.paused = True

    def frame_lost(self, why: str) -> None:
        """A frame could not be read. Where the exchange numbers its messages, the jump shows what
        it touched; without numbers (Binance) a lost close shows. `why` names the next break."""
        self._suspect = why

    def market_lost(self, symbol: str, why: str) -> None:
        """A bar of `symbol` arrived but could not be kept: its run ends."""
        self.end_run(symbol, why)

    def outage_since(self, start_ms: int, reason: str) -> None:
        """Every market is known incomplete from `start_ms` (e.g. the previous run of the fetcher
        stopped there); the outage is recorded when each market's next run starts."""
        for proof in self.markets.values():
            if proof.since_ms is None and proof.open_from_ms is None:
                proof.open_from_ms = start_ms
                proof.reason = reason

    def remove(self, symbols: Iterable[str]) -> None:
        for symbol in symbols:
            self.markets.pop(symbol, None)

    # ---- what the coverage task takes

    def take(self, until_ms: int) -> tuple[list[MinuteSpan], list[MinuteSpan]]:
        """Proven minutes before `until_ms` not handed out before, and outages found since the last
        call. `until_ms` keeps coverage behind the minutes the updater has closed."""
        proven: list[MinuteSpan] = []
        for symbol, proof in self.markets.items():
            kept: list[list[int]] = []
            for span in proof.unreported:
                start, end = span
                if start < until_ms:
                    proven.append(MinuteSpan(symbol, start, min(end, until_ms)))
                if end > until_ms:
                    kept.append([max(start, until_ms), end])
            proof.unreported = kept
        outages, self._outages = self._outages, []
        return proven, outages

    def open_outages(self) -> int:
        """Markets whose proof broke and has not started again."""
        return sum(proof.open_from_ms is not None for proof in self.markets.values())

    # ---- for the rules

    def why(self, found: str) -> str:
        """The reason of a break the rule `found`, with the unreadable frame that likely caused it."""
        suspect, self._suspect = self._suspect, ""
        return f"{found} after a bad frame ({suspect[:120]})" if suspect else found

    def start_run(self, symbol: str, since_ms: int) -> None:
        """Proof of `symbol` can start at minute `since_ms`; the open outage ends there (not while
        the exchange's data is paused: the outage stays open)."""
        if self.paused:
            return
        proof = self.markets[symbol]
        if proof.open_from_ms is not None and since_ms > proof.open_from_ms:
            self._outages.append(MinuteSpan(symbol, proof.open_from_ms, since_ms, proof.reason))
        proof.open_from_ms = None
        proof.since_ms = since_ms
        proof.until_ms = since_ms

    def prove(self, symbol: str, until_ms: int) -> None:
        """Every minute of the run before `until_ms` is proven."""
        proof = self.markets[symbol]
        if proof.since_ms is None or until_ms <= proof.until_ms:
            return
        if proof.unreported and proof.unreported[-1][1] == proof.until_ms:
            proof.unreported[-1][1] = until_ms
        else:
            proof.unreported.append([proof.until_ms, until_ms])
        proof.until_ms = until_ms

    def end_run(self, symbol: str, reason: str) -> None:
        """The evidence of `symbol` broke: minutes from the end of its proof are an open outage."""
        proof = self.markets.get(symbol)
        if proof is None:
            return
        if proof.since_ms is not None:
            proof.open_from_ms = proof.until_ms
            proof.reason = reason
            proof.since_ms = None
