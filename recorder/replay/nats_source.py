"""`ime-replay --from-nats`: read the live feed from NATS JetStream, from a start time, then follow it live.

A bot on another machine catches up on, say, the last hour and goes on with the live messages, through an
ordered push consumer per contract (JetStream recreates it from the last sequence seen after a server or
leader change, so nothing is skipped or repeated). Output is ime-replay's: JSON lines (receive time,
contract, frame byte for byte) or raw payloads, one per line. Stops cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

import click

from recorder.errors import RuntimeFailure, UserError, exception_text
from recorder.live.subjects import DEFAULT_PREFIX, RECEIVE_HEADER, contract_of, filter_subject
from recorder.model.record import Record, RecordKind
from recorder.redact import redact_url
from recorder.segment.output import jsonl_line
from recorder.timeparse import UTC_LOCALE, TimeLocale

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
CONNECT_WITHIN_S = 5.0
log = logging.getLogger("recorder.replay")


def parse_since(text: str | None, now_ns: int | None = None, where: TimeLocale = UTC_LOCALE) -> int | None:
    """None (live only), 'all', a relative '90s'/'30m'/'1h'/'2d' (that long ago), or an absolute time."""
    if text is None:
        return None
    if text.strip().lower() == "all":
        return 0
    m = _RELATIVE.match(text)
    if m:
        now = time.time_ns() if now_ns is None else now_ns
        return now - int(float(m.group(1)) * _UNIT_S[m.group(2)] * 1e9)
    return where.parse_time(text)


def _rfc3339(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Out:
    def __init__(self, stream: IO[bytes], fmt: str, shown: TimeLocale = UTC_LOCALE) -> None:
        self.stream = stream
        self.raw = fmt == "raw"
        self.shown = shown
        self.count = 0

    def write(self, msg: Any) -> None:
        payload: bytes = msg.data
        if self.raw:
            self.stream.write(payload + b"\n")
        else:
            headers = msg.headers or {}
            ts = int(headers.get(RECEIVE_HEADER, "0") or 0)
            contract = contract_of(msg.subject.split(".", 2)[2])
            self.stream.write(jsonl_line(Record(ts, -1, -1, RecordKind.TEXT, payload), contract, self.shown))
        self.count += 1


async def _follow(url: str, stream: str, contracts: tuple[str, ...], since_ns: int | None, fmt: str,
                  limit: int | None, shown: TimeLocale = UTC_LOCALE) -> int:
    from nats.js.api import ConsumerConfig, DeliverPolicy

    nc = await _connect(url)
    out = _Out(sys.stdout.buffer, fmt, shown.gregorian)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    js = nc.jetstream()
    try:
        try:
            await js.stream_info(stream)
        except Exception:
            raise RuntimeFailure(f"NATS has no stream {stream!r} (is ime-record --publish running?)") from None
        if since_ns is None:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        elif since_ns == 0:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=_rfc3339(since_ns))

        async def on_msg(msg: Any) -> None:
            if done.is_set():
                return  # deliveries already under way when --count was reached or a signal came
            out.write(msg)
            if limit is not None and out.count >= limit:
                done.set()

        subjects = [filter_subject(c, prefix=DEFAULT_PREFIX) for c in contracts] or [f"{DEFAULT_PREFIX}.>"]
        for subject in subjects:
            await js.subscribe(subject, stream=stream, cb=on_msg, ordered_consumer=True, config=config,
                               idle_heartbeat=2.0)
        flusher = asyncio.create_task(_flush_every(sys.stdout.buffer, 0.05))
        await done.wait()
        flusher.cancel()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.buffer.flush()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2)
    return out.count


async def _connect(url: str) -> Any:
    """Connected, or a RuntimeFailure within CONNECT_WITHIN_S saying why; never a retry loop on stderr.

    Once connected, the client reconnects for ever (a server restart must not end a bot's feed); the first
    connection gets a deadline, since a wrong URL or a server that is not running would otherwise be retried
    silently for ever, and nats-py's default error callback prints a traceback for every attempt.
    """
    import nats

    last_error: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        last_error[:] = [exc]
        log.debug("NATS: %s", exception_text(exc))

    try:
        return await asyncio.wait_for(
            nats.connect(servers=[u.strip() for u in url.split(",")], name="ime-replay",
                         connect_timeout=CONNECT_WITHIN_S / 2, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                         error_cb=on_error),
            CONNECT_WITHIN_S)
    except Exception as exc:
        why = exception_text(last_error[0] if last_error else exc)
        raise RuntimeFailure(f"cannot connect to NATS at {redact_url(url)} within {CONNECT_WITHIN_S:g}s ({why}): "
                             "check the URL and that nats-server is running there") from None


async def _flush_every(stream: IO[bytes], period: float) -> None:
    while True:
        await asyncio.sleep(period)
        stream.flush()


def follow_nats(url: str, stream: str, contracts: tuple[str, ...], since: str | None, fmt: str,
                limit: int | None = None, shown: TimeLocale = UTC_LOCALE) -> int:
    try:
        import nats  # noqa: F401
    except ImportError:
        raise UserError("--from-nats needs the NATS client: pip install 'ime-recorder[nats]'") from None
    if not url.startswith(("nats://", "tls://")):
        raise UserError("--from-nats needs a URL such as nats://127.0.0.1:4222")
    import uvloop

    count = uvloop.run(_follow(url, stream, contracts, parse_since(since, where=shown), fmt, limit, shown))
    click.echo(f"ime-replay: {count} messages from NATS stream {stream}", err=True)
    return count
