"""The simulator's FeedSource: the synthetic market, paced or free-running, plus fault injection.

Two ways to send, chosen by `rate`:
- rate > 0, a live market: one shared Market emits `rate` events per second in total (contract picked at
  random), event i due at start + i/rate on a perf_counter clock, from `start()` on whether or not anyone
  listens (as an exchange does: a message published while no connection is open is lost to the client).
  Each event is published once (to `on_publish`, e.g. the --published-log) and goes to every connection
  subscribed to its contract, all of one tick in one write. A connection whose transport is paused (or
  stalled) does not hold the market up: its messages of that tick are dropped and counted.
  A delayed connection (a path hiccup) keeps its messages, stamped when published, in a held buffer and
  sends them all at once when the hiccup ends; held bytes are bounded by `held_limit` (the server's write
  buffer high-water mark) and what would overflow it is dropped and counted.
  With `faults.repeat_every`, the market now and then publishes again the exact bytes it published
  `faults.repeat_after` seconds earlier (`_Repeats`): published and broadcast like any other message.
- rate == 0: every connection gets its own Market over its own contracts and a pump that writes batches
  of about `batch_bytes` whenever the transport can take them: as fast as the client drains, no drops.
  A delay holds the batch rendered when it began and sends it when the delay ends.
Frames are pre-rendered: the timestamp is rendered once per batch and spliced between cached bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from recorder.feed.endpoints import EndpointKind
from recorder.server.framing import OP_BINARY, OP_TEXT, TEXT_HEADERS, fragments, frame, frame_header
from recorder.server.subscriber import Subscriber
from recorder.sim.faults import Fault, FaultConfig, FaultPlan, repeat_schedule
from recorder.sim.market import ContractSpec, Market, message_prefix

log = logging.getLogger(__name__)

TS_LEN = len(b"2026-05-29T12:00:00.123456Z")
TICK = 0.001  # uvloop timers have 1 ms resolution: a paced market wakes at most once per ms
MAX_CATCH_UP = 0.25  # seconds of backlog a late ticker still sends; older events are skipped
_HEADER_CACHE = len(TEXT_HEADERS)


class Clock:
    """Renders `2026-05-29T12:00:00.123456Z` (UTC) cheaply: the part up to the second is cached."""

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = b""
        self.date = b""
        self.time = b""

    def stamp(self, ns: int | None = None) -> bytes:
        if ns is None:
            ns = time.time_ns()
        sec = ns // 1_000_000_000
        if sec != self._sec:
            t = time.gmtime(sec)
            self.date = time.strftime("%Y-%m-%d", t).encode()
            self.time = time.strftime("%H:%M:%S", t).encode()
            self._prefix = self.date + b"T" + self.time + b"."
            self._sec = sec
        return b"%b%06dZ" % (self._prefix, (ns // 1000) % 1_000_000)


class _Repeats:
    """`repeat_every` S / `repeat_after` D: which message the market publishes again, and when.

    Each tick's last message is remembered (with its publication time) for D seconds and a little more; ticks
    are at most ~1 ms apart at any useful rate, so a repeat due now republishes the message published closest to
    exactly D seconds before now — the bytes, timestamp included, the market published then. The times follow
    `repeat_schedule` (seeded); which message that is depends on the pacing, like everything a paced market sends.
    """

    MARGIN_NS = 500_000_000  # history kept beyond D: where the closest message may lie when the market is slow

    def __init__(self, every: float, after: float, seed: int, start_ns: int) -> None:
        self.after_ns = round(after * 1e9)
        # A repeat before D has passed would have nothing D seconds old to repeat.
        self._times = (start_ns + round(at * 1e9) for at in repeat_schedule(every, seed) if at > after)
        self.next_ns = next(self._times)
        self._ticks: deque[tuple[int, int, bytes, bytes]] = deque()  # (published ns, contract, stamp, tail)
        self.count = 0

    def published(self, now_ns: int, i: int, stamp: bytes, tail: bytes) -> None:
        ticks = self._ticks
        ticks.append((now_ns, i, stamp, tail))
        horizon = now_ns - self.after_ns - self.MARGIN_NS
        while ticks[0][0] < horizon:
            ticks.popleft()

    def take(self, now_ns: int) -> tuple[int, bytes, bytes] | None:
        """The message (contract, stamp, tail) to publish again now, or None: none is due yet."""
        if now_ns < self.next_ns:
            return None
        self.next_ns = next(self._times)
        target = now_ns - self.after_ns
        ticks = self._ticks
        while len(ticks) > 1 and ticks[1][0] <= target:
            ticks.popleft()
        if not ticks:
            return None
        best = ticks[0]
        if len(ticks) > 1 and ticks[1][0] - target < target - best[0]:
            best = ticks[1]
        self.count += 1
        return best[1], best[2], best[3]


class _Feed:
    """Per-connection sending state."""

    __slots__ = ("count", "delayed_until", "fault_n", "held", "held_bytes", "held_count", "market", "parts",
                 "positions", "prefixes", "release", "stalled_until", "sub", "tasks")

    def __init__(self, sub: Subscriber, market: Market, positions: list[int], prefixes: dict[int, bytes]) -> None:
        self.sub = sub
        self.market = market
        self.positions = positions  # market positions of the subscribed contracts, in order, no repeats
        self.prefixes = prefixes  # market position -> envelope bytes up to the timestamp
        self.parts: list[bytes] = []
        self.count = 0
        self.stalled_until = 0.0
        self.delayed_until = 0.0  # perf_counter time a path hiccup ends; until then frames go to `held`
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.held_count = 0
        self.release: asyncio.TimerHandle | None = None
        self.fault_n = 0
        self.tasks: list[asyncio.Task[None]] = []

    def sample(self, stamp: bytes) -> bytes:
        """A complete, valid message on one of the connection's contracts (the fault injector's raw material)."""
        pos = self.positions[self.fault_n % len(self.positions)]
        self.fault_n += 1
        return self.prefixes[pos] + stamp + self.market.tail(pos)

    # -- path hiccups (delay faults): frames held while one is on, sent in one write when it ends --------------

    def send(self, data: bytes, n: int, now: float, held_limit: int | None) -> None:
        """Write `n` messages' frames, or hold them while the connection's path hiccups (dropping and counting
        what would take the held bytes over `held_limit`; None: hold everything)."""
        sub = self.sub
        if self.delayed_until > now:
            if sub.closing:
                return
            # Held frames join the transport's buffer on release: together they stay under its high-water mark.
            # (The drain pump holds a single batch and never drops: it is not bounded here.)
            if held_limit is not None and self.held_bytes + len(data) + sub.write_buffer_size() > held_limit:
                sub.add_dropped(n)
                return
            self.held.append(data)
            self.held_bytes += len(data)
            self.held_count += n
            return
        if self.held:  # the hiccup is over but its release timer has not fired yet: keep the order
            self.end_delay()
        sub.write_frames(data, n)

    def start_delay(self, seconds: float) -> None:
        self.delayed_until = max(self.delayed_until, time.perf_counter() + seconds)
        if self.release is not None:
            self.release.cancel()
        self.release = asyncio.get_running_loop().call_later(self.delayed_until - time.perf_counter(), self.end_delay)

    def end_delay(self, send: bool = True) -> None:
        """The hiccup is over: everything held goes out in one write, in order.

        A connection that closed meanwhile never gets what was held: like a message published after the close
        (or in flight when the client hung up), that is not counted as dropped, which is for open connections
        that could not keep up.
        """
        if self.release is not None:
            self.release.cancel()
            self.release = None
        self.delayed_until = 0.0
        if not self.held:
            return
        if send:
            self.sub.write_frames(b"".join(self.held), self.held_count)
        self.held.clear()
        self.held_bytes = 0
        self.held_count = 0


class _FaultInjector:
    """A connection's faults (--faults): when each is due (FaultPlan, seeded per connection) and what it does."""

    def __init__(self, cfg: FaultConfig, seed: int, clock: Clock, revoke: Callable[[str], None] | None) -> None:
        self.cfg = cfg
        self.seed = seed
        self.clock = clock
        self.revoke = revoke  # set later by SimSource.set_revoker when the server is made after the source

    async def run(self, feed: _Feed) -> None:
        sub = feed.sub
        t0 = time.perf_counter()
        for at, fault in FaultPlan(self.cfg, self.seed, sub.id).events():
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if sub.closing:
                return
            log.info("connection %d: injecting %s", sub.id, fault.value)
            sub.count_fault(fault.value)
            await self.inject(feed, fault)
            if fault.ends_connection:
                return

    async def inject(self, feed: _Feed, fault: Fault) -> None:
        sub = feed.sub
        cfg = self.cfg
        if fault is Fault.PING:
            sub.send_ping(b"ime-sim %d" % sub.faults[fault.value])
        elif fault is Fault.STALL:
            feed.stalled_until = time.perf_counter() + cfg.stall_for
        elif fault is Fault.DELAY:
            feed.start_delay(cfg.delay_for)
        elif fault is Fault.MALFORMED:
            message = feed.sample(self.clock.stamp())
            sub.write_frames(frame(message[: len(message) * 2 // 3], OP_TEXT), 0, 1)
        elif fault is Fault.BINARY:
            payload = b"\x00\xffIME-SIM binary frame %d \x80\x81" % sub.faults[fault.value]
            sub.write_frames(frame(payload, OP_BINARY), 0, 1)
        elif fault is Fault.OVERSIZED:
            sub.write_frames(frame(oversized_message(feed.sample(self.clock.stamp()), cfg.oversized_bytes)), 0, 1)
        elif fault is Fault.FRAGMENT:
            parts = cfg.fragment_parts
            sub.write_frames(fragments(feed.sample(self.clock.stamp()), parts), 0, parts)
        elif fault is Fault.DROP:
            await sub.drain_and_abort()
        elif fault is Fault.CLOSE:
            sub.close(cfg.close_code, "simulated close")
        elif fault is Fault.REVOKE:
            if sub.token_id is not None and self.revoke is not None:
                self.revoke(sub.token_id)
            sub.close(1008, "token revoked")


class SimSource:
    """The FeedSource of ime-sim: contracts from `specs`, sent paced (`rate` > 0) or drained (`rate` == 0)."""

    def __init__(self, specs: Sequence[ContractSpec], *, seed: int = 1, rate: float = 1000.0, burst: int = 0,
                 burst_every: float = 5.0, faults: FaultConfig | None = None, batch_bytes: int = 128 * 1024,
                 revoke: Callable[[str], None] | None = None,
                 on_publish: Callable[[int, bytes], None] | None = None, held_limit: int = 1 << 20) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.specs = list(specs)
        self.seed = seed
        self.rate = rate
        self.burst = burst
        self.burst_every = burst_every
        self.faults = faults or FaultConfig()
        self.batch_bytes = batch_bytes
        self.held_limit = held_limit
        self._by_kind = {
            EndpointKind.ID: {s.id: s.index for s in self.specs},
            EndpointKind.NAME: {s.name: s.index for s in self.specs},
        }
        self._clock = Clock()
        self._injector = _FaultInjector(self.faults, seed, self._clock, revoke)
        self._feeds: dict[int, _Feed] = {}
        self._market = Market(self.specs, seed) if rate > 0 else None
        self._routes: list[list[tuple[_Feed, bytes]]] = [[] for _ in self.specs]
        self._on_publish = on_publish
        # The by-id envelope of each contract: what on_publish receives (see recorder/sim/sentlog.py).
        self._published_prefixes = [message_prefix(EndpointKind.ID.field, s.id) for s in self.specs]
        self._ticker: asyncio.Task[None] | None = None
        self._repeats: _Repeats | None = None  # made when the market opens (repeat_every, paced mode only)
        self._private_events = 0
        self.late_skipped = 0
        self.max_late_s = 0.0  # the largest backlog the ticker carried, in seconds of the market's schedule
        self.bursts = 0

    def set_revoker(self, revoke: Callable[[str], None]) -> None:
        """How a `revoke` fault invalidates a token (the server's authority owns the revocation list)."""
        self._injector.revoke = revoke

    # -- FeedSource ----------------------------------------------------------------------------------

    def has_contract(self, kind: EndpointKind, identifier: str) -> bool:
        return identifier in self._by_kind[kind]

    def on_subscribe(self, sub: Subscriber) -> None:
        index = self._by_kind[sub.kind]
        wanted = list(dict.fromkeys(index[c] for c in sub.contracts))
        field = sub.kind.field
        if self._market is not None:
            prefixes = {i: message_prefix(field, self._ident(sub.kind, i)) for i in wanted}
            feed = _Feed(sub, self._market, wanted, prefixes)
            for i in wanted:
                self._routes[i].append((feed, prefixes[i]))
            self.start()
        else:
            # A private market per connection: the client alone sets the pace, and sees a complete stream.
            specs = [self.specs[i] for i in wanted]
            market = Market(specs, self.seed)
            prefixes = {pos: message_prefix(field, self._ident(sub.kind, s.index)) for pos, s in enumerate(specs)}
            feed = _Feed(sub, market, list(range(len(specs))), prefixes)
            feed.tasks.append(_spawn(self._pump(feed), f"pump of connection {sub.id}", sub))
        self._feeds[sub.id] = feed
        if self.faults.enabled:
            feed.tasks.append(_spawn(self._injector.run(feed), f"faults of connection {sub.id}", sub))

    def on_unsubscribe(self, sub: Subscriber) -> None:
        feed = self._feeds.pop(sub.id, None)
        if feed is None:
            return
        for task in feed.tasks:
            task.cancel()
        feed.end_delay(send=False)
        if self._market is not None:
            for i in feed.positions:
                self._routes[i] = [r for r in self._routes[i] if r[0] is not feed]
        else:
            self._private_events += feed.market.events

    def start(self) -> None:
        """Open the live market (rate > 0): from now on it publishes, listened to or not. Idempotent."""
        if self._market is not None and self._ticker is None:
            self._ticker = _spawn(self._tick(), "market ticker")

    def stats(self) -> Mapping[str, Any]:
        private = sum(f.market.events for f in self._feeds.values() if f.market is not self._market)
        return {
            "mode": "paced" if self._market is not None else "drain",
            "rate": self.rate,
            "contracts": len(self.specs),
            "events": (self._market.events if self._market else 0) + self._private_events + private,
            "late_skipped": self.late_skipped,
            "max_late_s": self.max_late_s,
            "bursts": self.bursts,
            "repeats": self._repeats.count if self._repeats is not None else 0,
        }

    async def close(self) -> None:
        tasks = [t for f in self._feeds.values() for t in f.tasks]
        for f in self._feeds.values():
            f.end_delay(send=False)
        if self._ticker is not None:
            tasks.append(self._ticker)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _ident(self, kind: EndpointKind, i: int) -> str:
        spec = self.specs[i]
        return spec.id if kind is EndpointKind.ID else spec.name

    # -- rate == 0: drain as fast as the client reads ------------------------------------------------

    async def _pump(self, feed: _Feed) -> None:
        sub = feed.sub
        market = feed.market
        step = market.step
        prefixes = [feed.prefixes[p] for p in range(len(feed.positions))]
        hdrs = TEXT_HEADERS
        limit = self.batch_bytes
        clock = self._clock
        while True:
            if not sub.writable:
                if not await sub.wait_writable():
                    return
                continue
            now = time.perf_counter()
            wait = max(feed.stalled_until, feed.delayed_until if feed.held else 0.0) - now
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            ts = clock.stamp()
            market.set_clock(clock.date, clock.time)
            parts: list[bytes] = []
            extend = parts.extend
            size = n = 0
            while size < limit:
                i, tail = step()
                prefix = prefixes[i]
                length = len(prefix) + TS_LEN + len(tail)
                extend((hdrs[length] if length < _HEADER_CACHE else frame_header(length), prefix, ts, tail))
                size += length + 4
                n += 1
            feed.send(b"".join(parts), n, now, None)
            # One batch per turn, so other connections, timers and reads get the loop too.
            await asyncio.sleep(0)

    # -- rate > 0: a live market ---------------------------------------------------------------------

    async def _tick(self) -> None:
        rate = self.rate
        start = time.perf_counter()
        if self.faults.repeat_every is not None:
            self._repeats = _Repeats(self.faults.repeat_every, self.faults.repeat_after, self.seed, time.time_ns())
        done = 0
        next_burst = start + self.burst_every
        while True:
            now = time.perf_counter()
            due = int((now - start) * rate) + 1 - done
            backlog = due - max(1, int(rate * MAX_CATCH_UP))
            if backlog > 0:
                self.late_skipped += backlog
                done += backlog
                due -= backlog
            if due > 1 and (due - 1) / rate > self.max_late_s:
                self.max_late_s = (due - 1) / rate
            extra = 0
            if self.burst and now >= next_burst:
                extra = self.burst
                self.bursts += 1
                next_burst = now + self.burst_every
            repeats = self._repeats
            again = repeats.take(time.time_ns()) if repeats is not None else None
            if due + extra > 0 or again is not None:
                self._emit(due + extra, again)
                done += due
            delay = start + done / rate - time.perf_counter()
            await asyncio.sleep(max(delay, TICK))

    def _emit(self, n: int, again: tuple[int, bytes, bytes] | None = None) -> None:
        """Publish `n` market events and, after them, `again`: a message published before, its bytes as then."""
        market = self._market
        assert market is not None
        now_ns = time.time_ns()
        ts = self._clock.stamp(now_ns)
        market.set_clock(self._clock.date, self._clock.time)
        step = market.step
        routes = self._routes
        hdrs = TEXT_HEADERS
        publish = self._on_publish
        published = self._published_prefixes
        touched: list[_Feed] = []
        repeats = self._repeats
        for _ in range(n):
            i, tail = step()
            if publish is not None:
                publish(now_ns, published[i] + ts + tail)
            for feed, prefix in routes[i]:
                if not feed.count:
                    touched.append(feed)
                length = len(prefix) + TS_LEN + len(tail)
                feed.parts.extend((hdrs[length] if length < _HEADER_CACHE else frame_header(length), prefix, ts,
                                   tail))
                feed.count += 1
        if repeats is not None and n:
            repeats.published(now_ns, i, ts, tail)
        if again is not None:
            self._queue_again(again, now_ns, touched)
        self._flush(touched)

    def _queue_again(self, again: tuple[int, bytes, bytes], now_ns: int, touched: list[_Feed]) -> None:
        """Queue a message published before, with the same bytes (timestamp included): a published message of its
        own, queued like _emit's loop queues each event (kept inline there: it runs for every message)."""
        i, stamp, tail = again
        if self._on_publish is not None:
            self._on_publish(now_ns, self._published_prefixes[i] + stamp + tail)
        for feed, prefix in self._routes[i]:
            if not feed.count:
                touched.append(feed)
            length = len(prefix) + TS_LEN + len(tail)
            feed.parts.extend((TEXT_HEADERS[length] if length < _HEADER_CACHE else frame_header(length), prefix,
                               stamp, tail))
            feed.count += 1

    def _flush(self, touched: list[_Feed]) -> None:
        """Send each connection its messages of this tick in one write; a paused or stalled one's are dropped and
        counted (the market does not wait for a slow client, as an exchange does not)."""
        now = time.perf_counter()
        for feed in touched:
            sub = feed.sub
            if feed.stalled_until > now or not (sub.writable or feed.delayed_until > now):
                if not sub.closing:
                    sub.add_dropped(feed.count)
            else:
                feed.send(b"".join(feed.parts), feed.count, now, self.held_limit)
            feed.parts.clear()
            feed.count = 0


def oversized_message(message: bytes, size: int) -> bytes:
    """`message` (a JSON object) grown to exactly `size` bytes, still valid JSON, by a padding field."""
    head = message[:-1] + b',"padding":"'
    pad = size - len(head) - 2
    if pad < 0:
        return message
    return head + b"x" * pad + b'"}'


def _spawn(coro: Coroutine[Any, Any, None], what: str, sub: Subscriber | None = None) -> asyncio.Task[None]:
    """A task whose unexpected failure is logged at once (and ends its connection), not lost at GC."""
    task = asyncio.get_running_loop().create_task(coro)

    def done(t: asyncio.Task[None]) -> None:
        if t.cancelled() or t.exception() is None:
            return
        log.error("%s failed", what, exc_info=t.exception())
        if sub is not None and not sub.disconnected:
            sub.abort()

    task.add_done_callback(done)
    return task
