"""`ime-record --publish`: every first arrival into a NATS JetStream stream, exactly once across recorders.

Each message goes to `ime.<kind>.<contract token>` (live/subjects.py) with two headers:
`Nats-Msg-Id` = hex of the payload's 16-byte xxh3-128 (the dedupe digest; `-k` added for the k-th repeat of the
same bytes, live/msgid.py), so that recorders on several hosts publishing the same message store it once (within
the stream's duplicate window), and
`Ime-Receive-Ns` = the recorder's receive time in epoch nanoseconds.

Throughput without losing anything: messages are published without waiting, and every FENCE_EVERY-th (and
the last of each burst) asks JetStream for an ack. A message leaves the backlog only when the ack of a
later fence arrived and every fence before it was acked too. A fence that fails, or is not acked within
ACK_TIMEOUT_S, and every reconnect rewind the sender to the oldest unconfirmed message and send again;
JetStream drops what it already stored, by Msg-Id. Publishing waits for the stream's leader, since a
replicated stream without one drops publishes that ask for no ack without a trace. The backlog is bounded
(`--nats-backlog` messages): beyond it the oldest are dropped and counted. All of this runs in the hub
process, never in a worker.

What the operator sees: whatever keeps messages from NATS (it cannot be reached, it has no JetStream, the stream
cannot be made, the connection dropped) is one WARNING naming the cause at once, repeated at most once a minute
while it lasts, and one line when publishing resumes; `status()` carries the state and the cause for the status
line, the metrics and the exit summary, which tells a clean stop from a NATS that was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from recorder import clock
from recorder.errors import exception_text
from recorder.humanize import human_duration
from recorder.live.messages import NatsFigures
from recorder.live.msgid import MsgIds
from recorder.live.subjects import DEFAULT_PREFIX, MSG_ID_HEADER, RECEIVE_HEADER, stream_subjects, subject_for
from recorder.model.record import Row
from recorder.model.settings import LiveSettings
from recorder.redact import redact_url
from recorder.throttle import Throttle

log = logging.getLogger("recorder.live")

FENCE_EVERY = 256
ACK_TIMEOUT_S = 3.0
REFUSAL_HOLD_S = 1.0
SEND_CHUNK = 2048  # messages sent per event-loop turn, so acks and the relay get their turns
# Messages sent and not yet confirmed, at most: what nats-server has queued is work it does at normal priority,
# while the hub yields the CPU (hub.py). Bounding it makes nats-server's work follow the hub's own CPU time: on a
# local server ~8k messages are ~65 ms of its work; on a remote one, 8k messages a round trip (8M msgs/s at 1 ms).
# A sliding window (each fence's ack makes room), so a local server's throughput is unchanged: 69k against 66k
# msgs/s without it, publisher alone at load 6. IME_NATS_IN_FLIGHT overrides it, to compare.
MAX_IN_FLIGHT = int(os.environ.get("IME_NATS_IN_FLIGHT", "8192"))
# The hub runs under SCHED_IDLE, so it falls behind the workers only when nothing leaves CPU time over: publishing
# then pauses (messages wait in the backlog) until it has caught up, since every message sent is ~8 µs of
# nats-server's work at normal priority, beside the workers. At 100k msgs/s beside a process taking 40 % of a core
# (load 3-4 from other work, 8 s runs): without the pause the recorder lost messages in 3 runs of 5 (7,579-36,159),
# with a 100 ms threshold in 3 of 8 (3,542-17,204), with 50 ms in 1 of 3; without --publish in none of 5.
YIELD_LAG_NS = 50_000_000
RESUME_LAG_NS = 10_000_000
RECONNECT_WAIT_S = 0.5
TROUBLE_LOG_S = 60.0  # while NATS stays unavailable, its warning is repeated at most this often
CONNECT_TIMEOUT_S = 2.0
STREAM_GRACE_S = 5.0  # how long a stream may lack a leader (JetStream answer 503) before that is warned about
WATCH_S = 0.25


# The NATS header block of one message, formatted once when it is queued (and reused when it is sent again):
# nats-py's publish would build a dict and re-encode it for every send.
_HEADERS = f"NATS/1.0\r\n{MSG_ID_HEADER}: %s\r\n{RECEIVE_HEADER}: %d\r\n\r\n".encode()


# (subject, header block, payload) of one message waiting for NATS; tuples, since a million may be kept.
_Entry = tuple[bytes, bytes, bytes]


def describe(exc: BaseException) -> str:
    """A NATS client error as a phrase for the operator (nats-py's own text can be `code=None … description='None'`)."""
    from nats import errors as nats_errors
    from nats.js import errors as js_errors

    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    if isinstance(exc, js_errors.ServiceUnavailableError):
        return "JetStream did not answer (503 service unavailable)"
    if isinstance(exc, js_errors.APIError):
        what = exc.description if exc.description not in (None, "", "None") else type(exc).__name__
        return f"{what} (JetStream error {exc.code})" if exc.code else str(what)
    if isinstance(exc, nats_errors.NoRespondersError):
        return "JetStream did not answer (no responders)"
    if isinstance(exc, nats_errors.AuthorizationError):
        return "authorization refused (check the user and password in IME_NATS_URL)"
    if isinstance(exc, nats_errors.NoServersError):
        return "no server could be reached"
    if isinstance(exc, TimeoutError):  # asyncio's and nats-py's timeouts are both TimeoutError
        return "no answer in time"
    text = str(exc).strip().removeprefix("nats: ").strip()
    return text if text else type(exc).__name__


class _Fence:
    __slots__ = ("end", "failed", "ok", "sent_at")

    def __init__(self, end: int, sent_at: float) -> None:
        self.end = end  # absolute index just past the fence message
        self.sent_at = sent_at
        self.ok = False
        self.failed = False


class _Backlog:
    """What waits for NATS, oldest first: sent on this connection and waiting for a fence's ack (`unconfirmed`), then
    not sent yet (`unsent`); the fences in flight; what became of each message. No I/O."""

    def __init__(self, max_backlog: int) -> None:
        self.max_backlog = max_backlog
        self.unconfirmed: deque[_Entry] = deque()
        self.unsent: deque[_Entry] = deque()
        self.base = 0  # absolute index of unconfirmed[0] (of unsent[0] when nothing is unconfirmed)
        self._generation = 0  # bumped by every rewind, so a send loop in progress starts over
        self.fences: dict[int, _Fence] = {}
        self.fence_order: deque[int] = deque()
        self._fence_seq = 0
        self._since_fence = 0
        self._wake = asyncio.Event()  # the sender has something to do
        self.enqueued = 0
        self.confirmed = 0
        self.dropped = 0
        self.republished = 0

    @property
    def pending(self) -> int:
        return len(self.unconfirmed) + len(self.unsent)

    def _trim(self) -> None:
        """Past max_backlog, the oldest are dropped: a live consumer wants what is happening now; the recording has
        the rest."""
        over = self.pending - self.max_backlog
        if over > 0:
            self.dropped += over
            self.base += over
            for queue in (self.unconfirmed, self.unsent):
                n = min(over, len(queue))
                for _ in range(n):
                    queue.popleft()
                over -= n

    def _frame(self, count: int, inbox: bytes) -> bytes:
        """The next `count` unsent messages as HPUB commands, moved to unconfirmed; every FENCE_EVERY-th and the last
        ask for an ack (to `inbox`.<fence token>)."""
        unsent, unconfirmed = self.unsent, self.unconfirmed
        parts: list[bytes] = []
        append = parts.append
        since = self._since_fence
        end = self.base + len(unconfirmed)  # absolute index just past the message being framed
        for k in range(count):
            entry = unsent.popleft()
            unconfirmed.append(entry)
            subject, hdr, payload = entry
            end += 1
            since += 1
            size = len(hdr)
            # The last of a chunk asks for an ack too: when the window is full, its ack is what makes room.
            if since >= FENCE_EVERY or k == count - 1:
                since = 0
                self._fence_seq += 1
                token = self._fence_seq
                self.fences[token] = _Fence(end, time.monotonic())
                self.fence_order.append(token)
                append(b"HPUB %s %s.%d %d %d\r\n%s" % (subject, inbox, token, size, size + len(payload), hdr))
            else:
                append(b"HPUB %s %d %d\r\n%s" % (subject, size, size + len(payload), hdr))
            append(payload)
            append(b"\r\n")
        self._since_fence = since
        return b"".join(parts)

    def _advance(self) -> None:
        """What the acked fences confirm leaves the backlog: up to the first fence not acked yet."""
        order = self.fence_order
        fences = self.fences
        end = self.base
        while order and fences[order[0]].ok:
            end = fences.pop(order.popleft()).end
        n = min(end - self.base, len(self.unconfirmed))
        if n > 0:
            unconfirmed = self.unconfirmed
            for _ in range(n):
                unconfirmed.popleft()
            self.base += n
            self.confirmed += n

    def _rewind(self) -> None:
        """Forget fences in flight and send everything unconfirmed again (JetStream drops repeats by Msg-Id)."""
        self.fences.clear()
        self.fence_order.clear()
        self._since_fence = 0
        self._generation += 1
        again = self.unconfirmed
        if again:
            self.republished += len(again)
            again.extend(self.unsent)
            self.unsent, self.unconfirmed = again, deque()
        self._wake.set()


class _Reporting:
    """What the operator is told: why nothing is published (one warning at once, then at most one a minute), and the
    pauses while the hub is behind the workers."""

    settings: LiveSettings
    max_backlog: int
    pending: int
    dropped: int
    _wake: asyncio.Event
    connected: bool
    closed: bool
    stopped_clean: bool

    def __init__(self, where: str) -> None:
        self.where = where  # the servers, without credentials
        # Why nothing is being published (None while publishing), since when, and its throttled warning.
        self.problem: str | None = None
        self._down_since: float | None = None
        self._down_wall = 0.0
        self._trouble_log = Throttle(TROUBLE_LOG_S)
        # Yielding: publishing paused while the hub is behind the workers (the machine short of CPU).
        self.yielding = False
        self.yields = 0
        self._yield_started = 0.0
        self.yield_s = 0.0
        self._yield_log = Throttle(TROUBLE_LOG_S)

    @property
    def state(self) -> str:
        """up, connecting (not yet, no trouble seen), down; once closed: stopped (it was up) or down."""
        if self.closed:
            return "stopped" if self.stopped_clean else "down"
        if self.connected:
            return "up"
        return "down" if self.problem is not None else "connecting"

    def _trouble(self, cause: str, grace_s: float = 0.0) -> None:
        """Something keeps messages from NATS: one warning at once, then at most one a minute while it lasts.

        `grace_s`: a condition that is normal for a moment (a cluster electing a leader) is warned about only
        once it has lasted that long; the state shows it meanwhile.
        """
        now = time.monotonic()
        if self._down_since is None:
            self._down_since, self._down_wall = now, time.time()
        self.problem = cause
        if now - self._down_since < grace_s:
            return
        first = self._trouble_log.last is None
        if not self._trouble_log.hit(now):
            return
        kept = f"{self.pending} messages kept for it (up to {self.max_backlog}"
        kept += f"; {self.dropped} dropped so far)" if self.dropped else ")"
        if first:
            log.warning("NATS at %s unavailable: %s; retrying; recording goes on: %s", self.where, cause, kept)
        else:
            log.warning("NATS at %s still unavailable after %s: %s; recording goes on: %s", self.where,
                        human_duration(now - self._down_since), cause, kept)

    def _publishing(self, how: str) -> None:
        """Publishing (again): a line that pairs with the warnings, if there were any."""
        down_for = time.monotonic() - self._down_since if self._down_since is not None else None
        if self._trouble_log.last is not None and down_for is not None:
            log.warning("%s NATS at %s after %s unavailable; publishing to stream %s; sending the %d messages kept",
                        how, self.where, human_duration(down_for), self.settings.nats_stream, self.pending)
        else:
            log.info("%s NATS at %s; publishing to stream %s", how, self.where, self.settings.nats_stream)
        self.problem = None
        self._down_since = None
        self._trouble_log.reset()

    def _lagging(self, lag_ns: int) -> None:
        """The hub's lag behind the workers (receive time of the newest record to now): yield or resume."""
        if not self.yielding and lag_ns > YIELD_LAG_NS:
            self.yielding = True
            self.yields += 1
            self._yield_started = time.monotonic()
            if self._yield_log.hit(self._yield_started):
                log.warning("the live hub is %.0f ms behind the workers (the machine is short of CPU): publishing to "
                            "NATS pauses while it is, %d messages wait for it; recording goes on (%d pauses so far)",
                            lag_ns / 1e6, self.pending, self.yields)
        elif self.yielding and lag_ns < RESUME_LAG_NS:
            self._resume()

    def _resume(self) -> None:
        if self.yielding:
            self.yielding = False
            self.yield_s += time.monotonic() - self._yield_started
            self._wake.set()


class _Stream(_Reporting):
    """The JetStream stream: made with our settings if missing, and published to only once it has a leader."""

    prefix: str
    js: Any
    nc: Any
    _closing: bool

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self._check_stream = False  # a refusal: look at the stream again
        self._checker: asyncio.Task[bool] | None = None

    async def _ensure_stream(self, once: bool = False) -> bool:
        """Make sure the stream exists (created with our settings if missing) and has a leader.

        A replicated stream accepts publishes only once its leader is elected; until then a publish without a
        reply vanishes without a trace, so publishing waits for the leader. `once`: one attempt, no retries.
        """
        s = self.settings
        delay = 0.1  # doubles to 5 s: a stream that cannot be made (subjects taken by another) must not spin
        while not self._closing:
            try:
                info = await self.js.stream_info(s.nats_stream)
                if info.cluster is None or info.cluster.leader:
                    return True
                if not once:
                    self._trouble(f"stream {s.nats_stream} has no leader (the cluster has not elected one)",
                                  grace_s=STREAM_GRACE_S)
            except Exception as exc:
                if type(exc).__name__ == "NotFoundError":
                    if await self._create_stream():
                        continue  # now wait for its leader
                elif not once:
                    cause = self._stream_unavailable(exc)
                    # A server without JetStream stays so; a cluster's JetStream answers 503 while it starts.
                    self._trouble(cause, grace_s=0.0 if cause.startswith("the server does not") else STREAM_GRACE_S)
            if once:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        return False

    async def _create_stream(self) -> bool:
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

        s = self.settings
        try:
            await self.js.add_stream(StreamConfig(
                name=s.nats_stream, subjects=stream_subjects(self.prefix), retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD, storage=StorageType.FILE, max_age=s.nats_max_age_s,
                duplicate_window=s.nats_duplicate_window_s, num_replicas=s.nats_replicas))
        except Exception as exc:
            # Another recorder may have created it meanwhile; stream_info tells on the next round.
            self._trouble(f"cannot create stream {s.nats_stream}: {describe(exc)} (a stream that already takes "
                          "subjects ime.> must be used: --nats-stream)")
            return False
        log.info("created NATS stream %s (subjects %s, max age %gs, duplicate window %gs, replicas %d)",
                 s.nats_stream, stream_subjects(self.prefix)[0], s.nats_max_age_s, s.nats_duplicate_window_s,
                 s.nats_replicas)
        return True

    def _stream_unavailable(self, exc: Exception) -> str:
        """Why stream_info failed, in the operator's terms: a server without JetStream is the usual one."""
        from nats import errors as nats_errors
        from nats.js import errors as js_errors

        info = getattr(self.nc, "_server_info", None) or {}
        if (isinstance(exc, js_errors.ServiceUnavailableError | nats_errors.NoRespondersError)
                and not info.get("jetstream")):
            return "the server does not have JetStream enabled (start nats-server with -js)"
        return f"stream {self.settings.nats_stream} not available: {describe(exc)}"

    def _look_at_stream(self) -> None:
        """After a refusal, once connected: is the stream there, with a leader? In a task of its own, so that the
        fences keep being watched meanwhile."""
        if self._check_stream and self._checker is None:
            self._check_stream = False
            self._checker = asyncio.create_task(self._ensure_stream(once=True))
            self._checker.add_done_callback(self._checked)

    def _checked(self, task: asyncio.Task[bool]) -> None:
        self._checker = None
        if not task.cancelled() and task.exception() is None and not task.result():
            self._check_stream = True  # no leader yet (or unreachable): look again on the next round


class NatsPublisher(_Backlog, _Stream):
    """Owns the NATS connection of the hub. `enqueue` never blocks; `close` flushes what it can."""

    def __init__(self, settings: LiveSettings, prefix: str = DEFAULT_PREFIX) -> None:
        _Backlog.__init__(self, settings.nats_backlog)
        _Stream.__init__(self, ", ".join(redact_url(u.strip()) for u in (settings.nats_url or "").split(",")
                                         if u.strip()))
        self.settings = settings
        self.prefix = prefix
        self.kind = settings.kind
        self._subjects: dict[str, bytes] = {}
        self._ids = MsgIds()
        self.nc: Any = None
        self.js: Any = None
        self._inbox = ""
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False
        self.closed = False
        self.stopped_clean = False  # connected when close() began: a stop, not an outage
        self._ack_timeout_log = Throttle(TROUBLE_LOG_S)
        self._last_enqueue = 0.0
        self.unrouted = 0
        self.reconnects = 0
        self.refusals = 0
        self._last_refusal_log = 0.0
        self._hold_until = 0.0  # after a refusal, wait before sending again

    def enqueue(self, rows: Sequence[Row], contracts: Sequence[str | None]) -> None:
        """Messages the workers recorded, each with the contract the hub's router named (None: none, not published)."""
        subjects = self._subjects
        append = self.unsent.append
        headers = _HEADERS
        ids = self._ids
        for (ts_ns, _, _, payload), contract in zip(rows, contracts, strict=True):
            if contract is None:
                self.unrouted += 1  # no contract, no subject (binary frames, non-envelopes)
                continue
            subject = subjects.get(contract)
            if subject is None:
                subject = subjects[contract] = subject_for(self.kind, contract, self.prefix).encode()
            append((subject, headers % (ids(payload), ts_ns), payload))
        self.enqueued += len(rows)
        if rows:
            self._last_enqueue = time.monotonic()
            self._lagging(clock.time_ns() - rows[-1][0])  # the clock the workers stamped them with
        self._trim()
        self._wake.set()

    def status(self) -> NatsFigures:
        yield_s = self.yield_s + (time.monotonic() - self._yield_started if self.yielding else 0.0)
        return NatsFigures(state=self.state, connected=self.connected, closed=self.closed, yielding=self.yielding,
                           problem=self.problem or "", down_since=self._down_wall if self.problem else 0.0,
                           backlog=self.pending, yield_s=round(yield_s, 1), yields=self.yields,
                           confirmed=self.confirmed, dropped=self.dropped, republished=self.republished,
                           unrouted=self.unrouted, reconnects=self.reconnects)

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            log.error("NATS publisher stopped: %s; nothing more is published; recording goes on", describe(exc))

    async def close(self, timeout: float = 5.0) -> None:
        """Give the backlog `timeout` seconds to be confirmed, then hang up."""
        deadline = time.monotonic() + timeout
        self.stopped_clean = self.connected
        self._resume()  # the workers have stopped: the CPU is the hub's now
        while self.pending and self.connected and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)
        if self.pending:
            why = (f"NATS was unavailable: {self.problem}" if not self.connected and self.problem
                   else "NATS was not reached" if not self.connected
                   else f"not confirmed within {timeout:g}s of the stop")
            log.warning("stopping with %d messages not confirmed by NATS (%s)", self.pending, why)
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 2)
        self.connected = False
        self.closed = True

    async def _run(self) -> None:
        await self._connect()
        watchdog = asyncio.create_task(self._watch_fences())
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self.connected and time.monotonic() >= self._hold_until and not self.yielding:
                    await self._send()
        finally:
            watchdog.cancel()

    async def _connect(self) -> None:
        import nats

        s = self.settings
        assert s.nats_url is not None
        delay = RECONNECT_WAIT_S
        while not self._closing:
            try:
                # With reconnects on, nats-py retries the first connection by itself for ever and tells only
                # error_cb (_on_error) why each attempt failed: that is where the operator's warning comes from.
                self.nc = await nats.connect(
                    servers=[u.strip() for u in s.nats_url.split(",")], name="ime-record",
                    connect_timeout=CONNECT_TIMEOUT_S, allow_reconnect=True, max_reconnect_attempts=-1,
                    reconnect_time_wait=RECONNECT_WAIT_S, error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected,
                    pending_size=64 << 20)
                break
            except Exception as exc:
                self._trouble(f"cannot connect: {describe(exc)}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.js = self.nc.jetstream()
        await self._ensure_stream()
        self._inbox = f"_IME_ACK.{self.nc.new_inbox().split('.')[-1]}"
        await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack, pending_msgs_limit=1 << 20,
                                pending_bytes_limit=256 << 20)
        self.connected = True
        self._rewind()
        self._publishing("connected to")

    # -- out -----------------------------------------------------------------------------------------

    async def _send(self) -> None:
        """Send the unsent messages, a chunk of HPUB commands per event-loop turn.

        nats-py's `publish` costs ~10 µs a message in Python (header dict, regex checks, one call chain per
        message), too slow for 100k msgs/s. The protocol bytes are simple and our subjects and header
        values are safe by construction, so a chunk is framed here and handed to the client's own outgoing
        buffer in one call; connecting, auth, TLS, reconnects, subscriptions and acks stay nats-py's.
        """
        nc = self.nc
        send_command = nc._send_command
        generation = self._generation
        inbox = self._inbox.encode()
        while self.connected and self.unsent and generation == self._generation and not self.yielding:
            room = MAX_IN_FLIGHT - len(self.unconfirmed)
            if room <= 0:
                return  # _on_ack wakes the sender when confirmations make room
            commands = self._frame(min(len(self.unsent), SEND_CHUNK, room), inbox)
            try:
                await send_command(commands)
                await nc._flush_pending()
            except Exception as exc:  # closed or buffer full mid-reconnect: nats-py reconnects, we resend
                log.debug("publish failed: %s", exception_text(exc))
                self._rewind()
                await asyncio.sleep(0.05)
                return
            await asyncio.sleep(0)  # acks, the relay and new records get their turn

    async def _on_ack(self, msg: Any) -> None:
        try:
            token = int(msg.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        fence = self.fences.get(token)
        if fence is None:
            return  # from before a rewind
        data: bytes = msg.data
        if b'"error"' in data or not data:
            fence.failed = True
            self.refusals += 1
            now = time.monotonic()
            if now - self._last_refusal_log > 10:
                self._last_refusal_log = now
                log.warning("NATS refused a publish (%s; %d refusals so far); checking the stream and sending the "
                            "unconfirmed messages again in %.0fs", data[:200].decode("utf-8", "replace")
                            or "no responders", self.refusals, REFUSAL_HOLD_S)
            # Not at once: a stream that was deleted or does not take our subjects would refuse again.
            self._hold_until = now + REFUSAL_HOLD_S
            self._check_stream = True
            self._rewind()
            return
        fence.ok = True
        self._advance()
        if self.unsent:
            self._wake.set()

    async def _watch_fences(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_S)
            now = time.monotonic()
            starved, last = now - last > 2 * WATCH_S, now
            if starved:
                # The hub itself did not run (it yields the CPU to the workers): acks may be waiting unread in
                # the socket, and the timers run before the reads. Judge the fences after those reads, next round.
                continue
            if self.yielding and now - self._last_enqueue > WATCH_S:
                self._resume()  # the hub ran a whole round with nothing new from the workers: it is not behind
            if self.connected:
                self._look_at_stream()
            if self._hold_until and time.monotonic() >= self._hold_until:
                self._hold_until = 0.0
                self._wake.set()
            if self.fence_order and self.connected:
                oldest = self.fences[self.fence_order[0]]
                if time.monotonic() - oldest.sent_at > ACK_TIMEOUT_S:
                    if self._ack_timeout_log.hit(now):
                        log.warning("no ack from NATS within %.0fs; sending the %d unconfirmed messages again (%d "
                                    "times so far)", ACK_TIMEOUT_S, len(self.unconfirmed), self._ack_timeout_log.total)
                    self._rewind()

    # -- nats-py callbacks ---------------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        if self._closing:
            return
        if self.connected or (self.nc is not None and self.nc.is_connected):
            # On a working connection (a slow consumer, say), or the drop itself: _on_disconnected tells that.
            log.debug("NATS: %s", exception_text(exc))
            return
        # Each failed attempt to connect or reconnect (about every RECONNECT_WAIT_S): the cause, throttled.
        self._trouble(f"cannot connect: {describe(exc)}")

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        if self.connected:
            last = getattr(self.nc, "last_error", None)
            self.connected = False
            self._trouble_log.reset()  # a new outage: its first line at once
            self._trouble("disconnected from NATS" + (f" ({describe(last)})" if last is not None else ""))
        self.connected = False

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        if not self._inbox:
            return  # dropped while _connect was still making the stream: it goes on and says when it publishes
        self.connected = True
        self._publishing("reconnected to")
        self._rewind()
