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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from recorder.errors import exception_text
from recorder.live.fanout import LiveItem
from recorder.live.msgid import MsgIds
from recorder.live.subjects import DEFAULT_PREFIX, MSG_ID_HEADER, RECEIVE_HEADER, stream_subjects, subject_for
from recorder.live.wire import LiveRecord
from recorder.model.settings import LiveSettings

log = logging.getLogger("recorder.live")

FENCE_EVERY = 256
ACK_TIMEOUT_S = 3.0
REFUSAL_HOLD_S = 1.0
SEND_CHUNK = 2048  # messages sent per event-loop turn, so acks and the relay get their turns
RECONNECT_WAIT_S = 0.5


# The NATS header block of one message, formatted once when it is queued (and reused when it is sent again):
# nats-py's publish would build a dict and re-encode it for every send.
_HEADERS = f"NATS/1.0\r\n{MSG_ID_HEADER}: %s\r\n{RECEIVE_HEADER}: %d\r\n\r\n".encode()


# (subject, header block, payload) of one message waiting for NATS; tuples, since a million may be kept.
_Entry = tuple[bytes, bytes, bytes]


class _Fence:
    __slots__ = ("end", "failed", "ok", "sent_at")

    def __init__(self, end: int, sent_at: float) -> None:
        self.end = end  # absolute index just past the fence message
        self.sent_at = sent_at
        self.ok = False
        self.failed = False


class NatsPublisher:
    """Owns the NATS connection of the hub. `enqueue` never blocks; `close` flushes what it can."""

    def __init__(self, settings: LiveSettings, prefix: str = DEFAULT_PREFIX) -> None:
        self.settings = settings
        self.prefix = prefix
        self.kind = settings.kind
        self.max_backlog = settings.nats_backlog
        # Sent on this connection and waiting for a fence ack, then not sent yet; together the backlog.
        self.unconfirmed: deque[_Entry] = deque()
        self.unsent: deque[_Entry] = deque()
        self.base = 0  # absolute index of unconfirmed[0] (of unsent[0] when nothing is unconfirmed)
        self._generation = 0  # bumped by every rewind, so a send loop in progress starts over
        self.fences: dict[int, _Fence] = {}
        self.fence_order: deque[int] = deque()
        self._fence_seq = 0
        self._since_fence = 0
        self._subjects: dict[str, bytes] = {}
        self._ids = MsgIds()
        self.nc: Any = None
        self.js: Any = None
        self._inbox = ""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False
        # Figures.
        self.enqueued = 0
        self.confirmed = 0
        self.dropped = 0
        self.republished = 0
        self.unrouted = 0
        self.reconnects = 0
        self.refusals = 0
        self._last_refusal_log = 0.0
        self._hold_until = 0.0  # after a refusal, wait before sending again
        self._check_stream = False
        self._checker: asyncio.Task[bool] | None = None

    # -- in ------------------------------------------------------------------------------------------

    def enqueue(self, records: Sequence[LiveRecord], items: Sequence[LiveItem]) -> None:
        subjects = self._subjects
        append = self.unsent.append
        headers = _HEADERS
        ids = self._ids
        for (_, ts_ns, _, _, payload), (contract, _, _) in zip(records, items, strict=True):
            if contract is None:
                self.unrouted += 1  # no contract, no subject (binary frames, non-envelopes)
                continue
            subject = subjects.get(contract)
            if subject is None:
                subject = subjects[contract] = subject_for(self.kind, contract, self.prefix).encode()
            append((subject, headers % (ids(payload), ts_ns), payload))
        self.enqueued += len(records)
        over = self.pending - self.max_backlog
        if over > 0:
            # Keep the newest: a live consumer wants what is happening now; the recording has the rest.
            self.dropped += over
            self.base += over
            for queue in (self.unconfirmed, self.unsent):
                n = min(over, len(queue))
                for _ in range(n):
                    queue.popleft()
                over -= n
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self.unconfirmed) + len(self.unsent)

    def status(self) -> dict[str, Any]:
        return {"nats_connected": int(self.connected), "nats_backlog": self.pending,
                "nats_confirmed": self.confirmed, "nats_dropped": self.dropped,
                "nats_republished": self.republished, "nats_unrouted": self.unrouted,
                "nats_reconnects": self.reconnects}

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("NATS publisher stopped: %s", task.exception())

    async def close(self, timeout: float = 5.0) -> None:
        """Give the backlog `timeout` seconds to be confirmed, then hang up."""
        deadline = time.monotonic() + timeout
        while self.pending and self.connected and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)
        if self.pending:
            log.warning("stopping with %d messages not confirmed by NATS", self.pending)
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 2)

    async def _run(self) -> None:
        await self._connect()
        watchdog = asyncio.create_task(self._watch_fences())
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self.connected and time.monotonic() >= self._hold_until:
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
                self.nc = await nats.connect(
                    servers=[u.strip() for u in s.nats_url.split(",")], name="ime-record", connect_timeout=2,
                    allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT_S,
                    error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected, pending_size=64 << 20)
                break
            except Exception as exc:
                log.warning("cannot connect to NATS (%s); retrying in %.1fs; recording goes on", exception_text(exc),
                            delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.js = self.nc.jetstream()
        await self._ensure_stream()
        self._inbox = f"_IME_ACK.{self.nc.new_inbox().split('.')[-1]}"
        await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack, pending_msgs_limit=1 << 20,
                                pending_bytes_limit=256 << 20)
        self.connected = True
        self._rewind()
        log.info("connected to NATS; publishing to stream %s", s.nats_stream)

    async def _ensure_stream(self, once: bool = False) -> bool:
        """Make sure the stream exists (created with our settings if missing) and has a leader.

        A replicated stream accepts publishes only once its leader is elected; until then a publish without a
        reply vanishes without a trace, so publishing waits for the leader. `once`: one attempt, no retries.
        """
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

        s = self.settings
        delay = 0.1  # doubles to 5 s: a stream that cannot be made (subjects taken by another) must not spin
        last_logged: dict[str, float] = {}

        def warn(kind: str, message: str) -> None:
            # The first time, then at most once a minute: visible, never a flood.
            now = time.monotonic()
            if now - last_logged.get(kind, -1e9) >= 60.0:
                last_logged[kind] = now
                log.warning("%s", message)

        while not self._closing:
            try:
                info = await self.js.stream_info(s.nats_stream)
                if info.cluster is None or info.cluster.leader:
                    return True
            except Exception as exc:
                if type(exc).__name__ == "NotFoundError":
                    try:
                        await self.js.add_stream(StreamConfig(
                            name=s.nats_stream, subjects=stream_subjects(self.prefix),
                            retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD, storage=StorageType.FILE,
                            max_age=s.nats_max_age_s, duplicate_window=s.nats_duplicate_window_s,
                            num_replicas=s.nats_replicas))
                        log.info("created NATS stream %s (subjects %s, max age %gs, duplicate window %gs, "
                                 "replicas %d)", s.nats_stream, stream_subjects(self.prefix)[0], s.nats_max_age_s,
                                 s.nats_duplicate_window_s, s.nats_replicas)
                        continue  # now wait for its leader
                    except Exception as exc2:
                        # Another recorder may have created it meanwhile; stream_info tells on the next round.
                        warn("create", f"cannot create NATS stream {s.nats_stream} ({exception_text(exc2)}); retrying "
                                       "(a stream that already takes subjects ime.> must be used: --nats-stream)")
                elif not once:
                    warn("info", f"NATS stream {s.nats_stream} not available ({exception_text(exc)}); retrying")
            if once:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        return False

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
        while self.connected and self.unsent and generation == self._generation:
            unsent, unconfirmed = self.unsent, self.unconfirmed
            parts: list[bytes] = []
            append = parts.append
            since = self._since_fence
            end = self.base + len(unconfirmed)  # absolute index just past the message being framed
            for _ in range(min(len(unsent), SEND_CHUNK)):
                entry = unsent.popleft()
                unconfirmed.append(entry)
                subject, hdr, payload = entry
                end += 1
                since += 1
                size = len(hdr)
                if since >= FENCE_EVERY or not unsent:
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
            try:
                await send_command(b"".join(parts))
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

    def _advance(self) -> None:
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

    async def _watch_fences(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            if self._check_stream and self.connected and self._checker is None:
                self._check_stream = False
                # Its own task: the fence timeouts below must keep being watched meanwhile.
                self._checker = asyncio.create_task(self._ensure_stream(once=True))
                self._checker.add_done_callback(self._checked)
            if self._hold_until and time.monotonic() >= self._hold_until:
                self._hold_until = 0.0
                self._wake.set()
            if self.fence_order and self.connected:
                oldest = self.fences[self.fence_order[0]]
                if time.monotonic() - oldest.sent_at > ACK_TIMEOUT_S:
                    log.warning("no ack from NATS within %.0fs; sending the unconfirmed messages again", ACK_TIMEOUT_S)
                    self._rewind()

    def _checked(self, task: asyncio.Task[bool]) -> None:
        self._checker = None
        if not task.cancelled() and task.exception() is None and not task.result():
            self._check_stream = True  # no leader yet (or unreachable): look again on the next round

    # -- nats-py callbacks ---------------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS: %s", exception_text(exc))

    async def _on_disconnected(self) -> None:
        if self.connected and not self._closing:
            log.warning("disconnected from NATS; keeping up to %d messages until it is back; recording goes on",
                        self.max_backlog)
        self.connected = False

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        self.connected = True
        log.info("reconnected to NATS; sending %d unconfirmed messages", self.pending)
        self._rewind()
