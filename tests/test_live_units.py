"""Live fan-out pieces on their own: the worker→hub stream, subjects, options, the worker's output, the backlog."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
import uuid
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sim_util import run

from recorder import clock
from recorder.errors import UserError
from recorder.live.fanout import Fanout
from recorder.live.msgid import msg_id
from recorder.live.options import check_live, is_loopback
from recorder.live.output import LiveOutput
from recorder.live.publisher import FENCE_EVERY, NatsPublisher, _Fence
from recorder.live.route import Router
from recorder.live.subjects import contract_of, contract_token, subject_for
from recorder.live.wire import Decoder, WireError, hello, record_header
from recorder.model.record import Row
from recorder.model.settings import LiveSettings, parse_duration

records = st.lists(st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 65535), st.sampled_from([1, 2]),
                             st.binary(max_size=300)), max_size=30)


@given(records, st.lists(st.integers(1, 97), min_size=1, max_size=20))
def test_wire_stream_decodes_whatever_the_chunking(recs, cuts):
    data = hello(3, 4242) + b"".join(record_header(len(p), i, ts, conn, kind) + p
                                     for i, (ts, conn, kind, p) in enumerate(recs))
    dec = Decoder()
    got: list[Row] = []
    seqs: list[tuple[int, int]] = []  # each chunk's first and last sequence number
    pos = 0
    i = 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        decoded = dec.feed(data[pos:pos + step])
        if decoded is not None:
            rows, first, last = decoded
            got += rows
            seqs.append((first, last))
            assert last - first + 1 == len(rows)
        pos += step
        i += 1
    assert (dec.shard, dec.pid) == (3, 4242)
    assert got == [(ts, conn, kind, p) for ts, conn, kind, p in recs]
    assert [n for first, last in seqs for n in range(first, last + 1)] == list(range(len(recs)))
    assert dec.pending == 0


def test_wire_refuses_a_stream_that_is_not_a_workers():
    with pytest.raises(WireError):
        Decoder().feed(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize("name", ["1001", "GOLD-APR", "سکه بهار آزادی", "a.b", "x*y>z", "50% off", "tab\there",
                                  "~tilde", "ملی.1403/12"])
def test_contract_tokens_are_safe_nats_tokens_and_reversible(name):
    token = contract_token(name)
    assert re.fullmatch(r"[A-Za-z0-9_%-]+", token), token
    assert contract_of(token) == name
    assert subject_for("name", name).split(".") == ["ime", "name", token]


def test_plain_ids_stay_readable():
    assert subject_for("id", "1001") == "ime.id.1001"
    assert contract_token("سکه") == "%D8%B3%DA%A9%D9%87"


def test_durations_and_loopback():
    assert parse_duration("24h", "--x") == 86400
    assert parse_duration("90", "--x") == 90
    assert parse_duration("2m", "--x") == 120
    with pytest.raises(UserError, match="--x"):
        parse_duration("soon", "--x")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def live_settings(**options):
    return check_live(LiveSettings.build(**options))


def test_live_settings_checks_options_and_warns_off_loopback(caplog):
    assert live_settings(relay_client_kib=64) is None
    with pytest.raises(UserError, match="--relay"):
        live_settings(relay="host:port")
    with pytest.raises(UserError, match="--nats-stream"):
        live_settings(relay="0", nats_stream="a.b")
    with pytest.raises(UserError, match="duplicate-window"):
        live_settings(relay="0", nats_max_age="1m", nats_duplicate_window="2m")
    with pytest.raises(UserError, match="nats://"):
        live_settings(publish="http://x:4222")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="cannot listen"):
            live_settings(relay=f"127.0.0.1:{busy.getsockname()[1]}")
    s = live_settings(relay="0.0.0.0:0", relay_token="t0k", relay_client_kib=64)
    assert s is not None and s.relay_host == "0.0.0.0" and s.relay_client_buffer == 64 * 1024
    assert "not a loopback address" in caplog.text
    assert "t0k" not in repr(s)


def test_worker_output_keeps_a_bounded_buffer_until_the_hub_listens_then_delivers_in_order():
    address = f"\0ime-test-{uuid.uuid4().hex}"

    async def scenario():
        out = LiveOutput(address, 2, max_buffer=2000)
        for i in range(10):
            out(i, 0, 1, b"early %d " % i + b"x" * 300)
        out(99, 0, 3, b"an event is never relayed")
        await asyncio.sleep(0.01)
        assert out.sent == 0 and out.dropped == 3  # 7 fit (the bound is checked before each); never waited
        received = bytearray()
        got_all = asyncio.Event()

        class Hub(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                received.extend(data)
                if len(received) > 200_000:
                    got_all.set()

        server = await asyncio.get_running_loop().create_unix_server(Hub, address)
        await asyncio.sleep(0.3)  # the output retries on its own, without new messages
        assert out.sent > 0
        for i in range(10, 2010):
            out(i, 1, 1, b"x" * 100)
        await asyncio.wait_for(got_all.wait(), 10)
        out.close()
        server.close()
        dec = Decoder()
        decoded = dec.feed(bytes(received))
        return dec.shard, decoded

    shard, (rows, first, last) = run(scenario())
    assert shard == 2
    assert (first, last, len(rows)) == (0, 2009, 2007)  # 7-9 dropped: the hub counts the gap
    assert [r[0] for r in rows] == [*range(7), *range(10, 2010)]


def _publisher(backlog: int = 10) -> NatsPublisher:
    settings = LiveSettings(address="\0x", kind="id", contracts=("1",), nats_url="nats://127.0.0.1:1",
                            nats_backlog=backlog)

    async def make() -> NatsPublisher:
        return NatsPublisher(settings)

    return run(make())


def _items(n: int, start: int = 0) -> tuple[list[Row], list[str | None]]:
    # Received "an hour from now": however slow the machine running the test, the hub is never behind them (a hub
    # behind the workers pauses publishing: publisher.YIELD_LAG_NS, tested on its own).
    later = clock.time_ns() + 3600 * 10**9
    rows: list[Row] = [(later + i, 0, 1, b"m%d" % i) for i in range(start, start + n)]
    return rows, ["1001" for _ in rows]


def test_backlog_is_bounded_and_keeps_the_newest():
    pub = _publisher(backlog=10)
    pub.enqueue(*_items(25))
    assert pub.pending == 10 and pub.dropped == 15
    assert [payload for _, _, payload in pub.unsent] == [b"m%d" % i for i in range(15, 25)]
    assert pub.status().backlog == 10 and pub.status().dropped == 15


def test_messages_leave_the_backlog_only_behind_acked_fences_and_a_rewind_resends_the_rest():
    pub = _publisher(backlog=100)
    pub.enqueue(*_items(6))
    # As _send does: move to unconfirmed, fence after the 3rd and the 6th.
    for _ in range(6):
        pub.unconfirmed.append(pub.unsent.popleft())
    pub.fences = {1: _Fence(3, 0.0), 2: _Fence(6, 0.0)}
    pub.fence_order.extend([1, 2])
    pub.fences[2].ok = True
    pub._advance()
    assert pub.confirmed == 0, "fence 2 alone proves nothing while fence 1 is outstanding"
    pub.fences[1].ok = True
    pub._advance()
    assert pub.confirmed == 6 and pub.pending == 0
    pub.enqueue(*_items(4, start=6))
    for _ in range(4):
        pub.unconfirmed.append(pub.unsent.popleft())
    pub._rewind()
    assert pub.republished == 4 and [payload for _, _, payload in pub.unsent] == [b"m%d" % i for i in range(6, 10)]
    assert FENCE_EVERY > 1


def test_nats_trouble_is_one_warning_then_at_most_one_a_minute_and_a_line_when_it_is_back(caplog, monkeypatch):
    from recorder.live import publisher as publisher_module

    mono = [1000.0]
    monkeypatch.setattr(publisher_module.time, "monotonic", lambda: mono[0])
    pub = _publisher(backlog=100)
    pub.enqueue(*_items(7))
    caplog.set_level("INFO", logger="recorder.live")
    for _ in range(120):  # nats-py's attempts every 0.5 s for a minute, each refused
        pub._trouble("cannot connect: connection refused")
        mono[0] += 0.5
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["NATS at nats://127.0.0.1:1 unavailable: cannot connect: connection refused; retrying; "
                        "recording goes on: 7 messages kept for it (up to 100)"]
    assert pub.state == "down" and pub.status().problem == "cannot connect: connection refused"
    pub._trouble("cannot connect: connection refused")  # a minute after the first line
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and warnings[1].startswith("NATS at nats://127.0.0.1:1 still unavailable after 60.0s")
    mono[0] += 3
    pub._publishing("connected to")
    assert caplog.records[-1].levelname == "WARNING" and caplog.records[-1].getMessage() == (
        "connected to NATS at nats://127.0.0.1:1 after 63.0s unavailable; publishing to stream IME; sending the 7 "
        "messages kept")
    assert pub.problem is None and pub.state == "connecting"  # (connected is set by _connect itself)
    caplog.clear()
    pub._trouble("disconnected from NATS")  # a new outage: its first line at once
    assert caplog.records[0].getMessage().startswith("NATS at nats://127.0.0.1:1 unavailable: disconnected from NATS")


def test_nats_errors_are_described_without_the_client_s_empty_fields():
    from nats import errors as nats_errors
    from nats.js import errors as js_errors

    from recorder.live.publisher import describe

    assert describe(ConnectionRefusedError(111, "Connection refused")) == "connection refused"
    assert describe(js_errors.ServiceUnavailableError()) == "JetStream did not answer (503 service unavailable)"
    assert describe(js_errors.APIError(code=400, description="stream name already in use")) == \
        "stream name already in use (JetStream error 400)"
    assert "None" not in describe(js_errors.APIError())
    assert describe(nats_errors.NoRespondersError()) == "JetStream did not answer (no responders)"
    assert describe(TimeoutError()) == "no answer in time"


def test_throttle_allows_the_first_then_one_per_interval_and_counts_the_rest():
    from recorder.throttle import Throttle

    t = Throttle(60.0)
    assert t.hit(0.0) and not t.hit(1.0) and not t.hit(59.0)
    assert t.wait_s(30.0) == 30.0 and t.take(61.0) == 2 and t.take(61.0) == 0
    assert not t.hit(62.0) and t.hit(121.0) and t.total == 5
    t.reset()
    assert t.hit(122.0)


def test_the_nats_account_says_what_nats_lacks_and_why():
    from recorder.live.messages import HubStatus, NatsFigures
    from recorder.record.livehub import HubView

    view = HubView(state="stopped")
    nats = NatsFigures(state="down", connected=False, closed=True, yielding=False,
                       problem="cannot connect: connection refused", down_since=0.0, backlog=60, yield_s=0.0, yields=0,
                       confirmed=900, dropped=10, republished=0, unrouted=5, reconnects=0)
    view.status = HubStatus(received=0, worker_dropped=20, links=0, nats=nats)
    account = view.nats_account(handed=1000)
    assert (account.expected, account.confirmed, account.missing) == (995, 900, 95)
    assert account.reasons == ("20 not handed over by the workers (the hub was behind: short of CPU)",
                               "10 dropped from the full backlog (--nats-backlog)",
                               "60 waiting when the hub stopped (NATS unavailable: cannot connect: connection refused)",
                               "5 that never reached the hub or were lost with it (at the stop, or a hub restart)")
    assert "NATS DOWN at stop" in view.line()
    view.status = HubStatus(received=0, worker_dropped=0, links=0,
                            nats=replace(nats, state="stopped", confirmed=995, backlog=0, dropped=0))
    assert view.nats_account(handed=1000).line() == "NATS confirmed all 995 messages published"
    assert "NATS stopped, 995 stored" in view.line() and "DOWN" not in view.line()


def test_msg_id_is_the_xxh3_128_hex_of_the_payload():
    import xxhash

    assert msg_id(b"abc") == xxhash.xxh3_128_digest(b"abc").hex()
    assert len(msg_id(b"")) == 32


def test_msg_ids_number_repeats_alike_in_every_recorder_within_a_bounded_window():
    from recorder.live.msgid import MsgIds

    clock = [0.0]
    feed = [b"a", b"b", b"a", b"a", b"c", b"b"]
    hosts = [MsgIds(window_s=1.0, clock=lambda: clock[0]) for _ in range(2)]
    ids = [[h(p).decode() for p in feed] for h in hosts]
    d = {p: msg_id(p) for p in set(feed)}
    assert ids[0] == ids[1] == [d[b"a"], d[b"b"], f"{d[b'a']}-1", f"{d[b'a']}-2", d[b"c"], f"{d[b'b']}-1"]
    one = hosts[0]
    clock[0] = 1.5  # one window later: the last window's counts still number the next repeat
    assert one(b"a") == f"{d[b'a']}-3".encode()
    clock[0] = 3.6  # two windows without it: a repeat this far apart is a first occurrence again
    assert one(b"a") == d[b"a"].encode()
    bounded = MsgIds(window_s=3600.0, max_entries=10, clock=lambda: 0.0)
    for i in range(1000):
        bounded(b"%d" % i)
    assert len(bounded._current) <= 10 and len(bounded._previous) <= 10, "memory stays bounded at any rate"


def test_router_names_contracts_as_identifier_of_does_and_learns_prefixes():
    from workload_util import sim_payloads

    from recorder.feed.message import identifier_of
    from recorder.live.route import Router

    for field in ("contractId", "contractName"):
        payloads = sim_payloads(field)
        router = Router()
        assert [router.contract(p) for p in payloads] == [identifier_of(p) for p in payloads]
        assert router.parsed <= 20, "after the first message of each contract, no parsing"


@pytest.mark.parametrize("payload", [
    b'{"channel":"x","data":{"contractId":"9"},"contractId":"1"}',  # nested first: not a prefix
    b'{"channel":"x","contractName":"\\u0633\\u06a9\\u0647","timestamp":"t"}',  # escaped: parsed every time
    b'{"channel":"x","contractId":"","contractName":"GOLD"}',  # empty id falls through to the name
    b'[{"contractId":"1"}]',
    b'not json',
])
def test_router_never_learns_what_parsing_would_not_say(payload):
    from recorder.feed.message import identifier_of
    from recorder.live.route import Router

    router = Router()
    for _ in range(3):
        assert router.contract(payload) == identifier_of(payload)
    assert router.contract(b'{"channel":"x","contractId":"2","timestamp":"t"}') == "2"


def test_send_frames_hpub_commands_with_the_msg_id_and_receive_time_and_fences():
    """The bytes _send hands nats-py: one HPUB per message, its headers, a reply subject on every fence."""
    n = FENCE_EVERY + 5
    pub = _publisher(backlog=1000)
    sent: list[bytes] = []

    class Client:
        async def _send_command(self, data: bytes) -> None:
            sent.append(data)

        async def _flush_pending(self) -> None:
            pass

    pub.nc, pub.connected, pub._inbox = Client(), True, "_IME_ACK.x"
    recs, contracts = _items(n)
    recs[3], contracts[3] = (*recs[3][:2], 2, recs[3][3]), None  # a binary frame: no contract, not published
    pub.enqueue(recs, contracts)
    run(pub._send())
    data = b"".join(sent)
    commands = []
    while data:
        line, _, data = data.partition(b"\r\n")
        verb, subject, *reply, hlen, tlen = line.split(b" ")
        body, data = data[:int(tlen)], data[int(tlen) + 2:]
        commands.append((verb, subject, reply, body[:int(hlen)], body[int(hlen):]))
    payloads = [r[3] for i, r in enumerate(recs) if i != 3]
    assert [c[4] for c in commands] == payloads and pub.unrouted == 1
    assert {c[0] for c in commands} == {b"HPUB"} and {c[1] for c in commands} == {subject_for("id", "1001").encode()}
    for (_, _, _, headers, payload), rec in zip(commands, [r for i, r in enumerate(recs) if i != 3], strict=True):
        assert headers == (f"NATS/1.0\r\nNats-Msg-Id: {msg_id(payload)}\r\nIme-Receive-Ns: {rec[0]}\r\n\r\n"
                           .encode())
    fenced = [i for i, c in enumerate(commands) if c[2]]
    assert fenced == [FENCE_EVERY - 1, len(commands) - 1]  # every FENCE_EVERY-th, and the last of the burst
    assert [c[2] for c in commands if c[2]] == [[b"_IME_ACK.x.1"], [b"_IME_ACK.x.2"]]
    assert [pub.fences[t].end for t in pub.fence_order] == [FENCE_EVERY, len(commands)]
    assert pub.pending == len(commands) and not pub.unsent


def test_send_stops_at_the_in_flight_window_and_an_ack_makes_room(monkeypatch):
    """nats-server's queued work is bounded: at most MAX_IN_FLIGHT unconfirmed, the window's last one fenced."""
    from recorder.live import publisher as publisher_module

    monkeypatch.setattr(publisher_module, "MAX_IN_FLIGHT", 600)
    pub = _publisher(backlog=10_000)
    sent: list[bytes] = []

    class Client:
        async def _send_command(self, data: bytes) -> None:
            sent.append(data)

        async def _flush_pending(self) -> None:
            pass

    pub.nc, pub.connected, pub._inbox = Client(), True, "_IME_ACK.x"
    pub.enqueue(*_items(1000))
    run(pub._send())
    assert len(pub.unconfirmed) == 600 and len(pub.unsent) == 400
    assert b"".join(sent).count(b"HPUB") == 600
    assert pub.fences[pub.fence_order[-1]].end == 600, "the window's last message asks for the ack that makes room"

    class Ack:
        def __init__(self, token: int) -> None:
            self.subject, self.data = f"_IME_ACK.x.{token}", b'{"stream":"IME","seq":1}'

    pub._wake.clear()
    for token in list(pub.fence_order):
        run(pub._on_ack(Ack(token)))
    assert pub.confirmed == 600 and pub._wake.is_set()
    run(pub._send())
    assert pub.pending == 400 and not pub.unsent and b"".join(sent).count(b"HPUB") == 1000


def test_publishing_pauses_while_the_hub_is_behind_the_workers_and_resumes_when_it_caught_up(caplog):
    """A hub behind by more than YIELD_LAG_NS (it runs under SCHED_IDLE: the machine has no CPU to spare) sends
    nothing to nats-server, whose work would run beside the workers; it resumes once it has caught up."""
    from recorder.live.publisher import YIELD_LAG_NS

    pub = _publisher(backlog=1000)
    sent: list[bytes] = []

    class Client:
        async def _send_command(self, data: bytes) -> None:
            sent.append(data)

        async def _flush_pending(self) -> None:
            pass

    pub.nc, pub.connected, pub._inbox = Client(), True, "_IME_ACK.x"
    now = clock.time_ns()
    recs: list[Row] = [(now - 2 * YIELD_LAG_NS, 0, 1, b"m%d" % i) for i in range(5)]
    pub.enqueue(recs, ["1001" for _ in recs])
    assert pub.yielding and pub.yields == 1 and pub.status().yielding
    assert "publishing to NATS pauses" in caplog.text
    run(pub._send())
    assert not sent and len(pub.unsent) == 5
    recs = [(clock.time_ns() + 3600 * 10**9, 0, 1, b"m5")]  # "received later": caught up, however slow the test
    pub._wake.clear()
    pub.enqueue(recs, ["1001"])
    assert not pub.yielding and pub._wake.is_set()
    run(pub._send())
    assert b"".join(sent).count(b"HPUB") == 6 and pub.status().yields == 1


class _Counting:
    """A live output's socket, counting the sends that reach it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends = 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def test_worker_output_sends_a_bursts_first_frame_at_once_and_the_rest_in_one_send_at_the_end_of_the_turn():
    address = f"\0ime-test-{uuid.uuid4().hex}"

    async def scenario() -> list[int]:
        received = bytearray()

        class Hub(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                received.extend(data)

        server = await asyncio.get_running_loop().create_unix_server(Hub, address)
        out = LiveOutput(address, 0, max_buffer=8 << 20)
        out(time.time_ns(), 0, 1, b"connects")
        await asyncio.sleep(0.01)
        sock = out._sock = _Counting(out._sock)  # type: ignore[assignment]
        counts = []
        now = time.time_ns()
        out(now, 0, 1, b"first of a burst after a pause")
        counts.append(sock.sends)  # 1: at once
        for i in range(100):
            out(now + i, 0, 1, b"x" * 500)
        counts.append(sock.sends)  # still 1: the rest waits for the end of the turn
        await asyncio.sleep(0)
        counts.append(sock.sends)  # 2: the rest of the burst in one send
        out(out._last_flush_ns + 1_000, 0, 1, b"1 us after the last send: no pause, so with the rest of its turn")
        counts.append(sock.sends)  # still 2
        await asyncio.sleep(0)
        counts.append(sock.sends)  # 3
        await asyncio.sleep(0.01)
        start = time.time_ns()
        # A burst after a pause that takes the worker 1.4 ms to record: at once (+0), then whatever waited past
        # 40 µs (+45), each later send twice as long after the one before (+130: 80 µs after +45's deadline at
        # +125; +300: 160 µs), then every 320 µs at most (+700, +1400).
        burst = (0, 10, 30, 45, 60, 90, 95, 130, 200, 290, 300, 500, 700, 1000, 1019, 1400, 1410)
        for us in burst:
            out(start + us * 1000, 0, 1, b"frame at +%d us" % us)
            counts.append(sock.sends)
        await asyncio.sleep(0)
        counts.append(sock.sends)  # and the rest at the end of the turn
        await asyncio.sleep(0.05)
        out.close()
        server.close()
        rows, first, last = Decoder().feed(bytes(received)) or ([], 0, -1)
        assert (first, last, len(rows)) == (0, 102 + len(burst), 103 + len(burst)) and out.dropped == 0
        return counts

    assert run(scenario()) == [1, 1, 2, 2, 3,
                               4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 7, 7, 8, 8, 8, 9, 9,
                               10]


class _Client:
    """A relay subscriber as LiveSource sees one: its contracts, and how it was closed."""

    def __init__(self, *contracts: str) -> None:
        self.contracts = contracts
        self.closing = False
        self.closed: tuple[int, str] | None = None
        self.faults: list[str] = []

    def close(self, code: int, reason: str) -> None:
        self.closing, self.closed = True, (code, reason)

    def count_fault(self, name: str) -> None:
        self.faults.append(name)


def _stream(shard: int, pid: int, recs: list[tuple[int, bytes]], hello_first: bool = True) -> bytes:
    """What a worker sends the hub: its hello, then (sequence, payload) records of text messages."""
    return (hello(shard, pid) if hello_first else b"") + b"".join(
        record_header(len(p), seq, 10 + seq, 0, 1) + p for seq, p in recs)


def test_a_gap_in_one_shards_stream_cuts_the_relay_clients_of_its_contracts_only():
    from recorder.feed.endpoints import EndpointKind
    from recorder.live.hub import Hub
    from recorder.live.relay import SLOW_CLIENT_CODE, LiveSource

    settings = LiveSettings(address="\0x", kind="id", contracts=("1", "2", "3"), relay_port=0,
                            shard_contracts=(("1", "2"), ("3",)))
    hub = Hub(settings, None)
    hub.fanout = Fanout(Router())
    source = hub.source = LiveSource(EndpointKind.ID, settings.contracts, buffered=lambda sub: 0, fanout=hub.fanout)
    on_0, on_1, on_both = _Reader("1"), _Reader("3"), _Reader("2", "3")
    for c in (on_0, on_1, on_both):
        source.on_subscribe(c)  # type: ignore[arg-type]
    payload = b'{"contractId":"3","channel":"BestLimit"}'
    link = hub.fanout.new_link()
    hub.on_data(link, _stream(1, 77, [(0, payload), (1, payload)]))
    assert hub.worker_dropped == 0 and not any(c.closed for c in (on_0, on_1, on_both))
    assert on_1.messages == on_both.messages == 2 and on_0.messages == 0
    hub.on_data(link, _stream(1, 77, [(5, payload)], hello_first=False))  # 2, 3 and 4 never arrived
    assert hub.worker_dropped == 3 and source.gap_cut == 2
    assert on_0.closed is None
    for c in (on_1, on_both):
        assert c.closed == (SLOW_CLIENT_CODE, "the relay missed 3 messages the recorder could not hand over "
                                              "(CPU overload); reconnect to resume")
        assert c.faults == ["gap_cut"]
        assert c.messages == 2, "a client cut for a gap gets nothing after it"
    # Without the plan (an older supervisor, a test hub) every client is cut.
    bare = Hub(LiveSettings(address="\0y", kind="id", contracts=("1", "3")), None)
    bare.fanout = Fanout(Router())
    bare.source = LiveSource(EndpointKind.ID, ("1", "3"), buffered=lambda sub: 0, fanout=bare.fanout)
    lone = _Reader("1")
    bare.source.on_subscribe(lone)  # type: ignore[arg-type]
    link = bare.fanout.new_link()
    bare.on_data(link, _stream(1, 78, [(0, payload)]))
    bare.on_data(link, _stream(1, 78, [(2, payload)], hello_first=False))
    assert lone.closed is not None and bare.source.gap_cut == 1


class _Reader(_Client):
    """A relay subscriber that keeps what it is written."""

    def __init__(self, *contracts: str) -> None:
        super().__init__(*contracts)
        self.data = bytearray()
        self.messages = 0
        self.dropped = 0

    def write_frames(self, data: bytes, messages: int) -> bool:
        self.data += data
        self.messages += messages
        return True

    def add_dropped(self, n: int) -> None:
        self.dropped += n


def _texts(data: bytes) -> list[bytes]:
    from recorder.server.framing import OP_TEXT

    out, pos = [], 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        assert first & 0x0F == OP_TEXT and second < 126  # the test's payloads are short, unmasked text
        out.append(bytes(data[pos + 2:pos + 2 + second]))
        pos += 2 + second
    return out


class _Worker:
    """Feeds a LiveSource through its fanout as the hub does: the batch's payloads as a worker's stream."""

    def __init__(self, source: object) -> None:
        self.source = source
        self.fanout = source.fanout  # type: ignore[attr-defined]
        self.link = self.fanout.new_link()
        self.seq = 0

    def __call__(self, payloads: list[bytes]) -> None:
        data = _stream(0, 1, list(enumerate(payloads, self.seq)), hello_first=self.seq == 0)
        self.seq += len(payloads)
        self.source.prepare()  # type: ignore[attr-defined]
        self.fanout.feed(self.link, data)
        self.source.deliver(self.fanout.take())  # type: ignore[attr-defined]


def test_relay_delivery_gives_each_client_its_contracts_in_order_framed_once_per_contract_set():
    from recorder.feed.endpoints import EndpointKind
    from recorder.live.relay import LiveSource

    contracts = tuple(str(1001 + i) for i in range(20))
    buffered: dict[int, int] = {}
    source = LiveSource(EndpointKind.ID, contracts, max_client_buffer=10_000, fanout=Fanout(Router()),
                        buffered=lambda sub: buffered.get(id(sub), 0))  # type: ignore[arg-type]
    worker = _Worker(source)
    everything = [_Reader(*contracts) for _ in range(3)]  # one set: framed once, written three times
    tenths = [_Reader(*contracts[i::10]) for i in range(10)]  # disjoint sets
    overlap = _Reader("1001", "1002", "1003")
    for c in (*everything, *tenths, overlap):
        source.on_subscribe(c)  # type: ignore[arg-type]
    rng = random.Random(7)
    batches = [[(c, 1, b'{"contractId":"%s","n":%d}' % (c.encode(), rng.randrange(10**6))) if c is not None
                else (None, 1, b"not an envelope")
                for c in (rng.choice((*contracts, None)) for _ in range(rng.randrange(1, 40)))] for _ in range(30)]
    late = _Reader("1005")
    for i, batch in enumerate(batches):
        if i == 10:
            source.on_subscribe(late)  # type: ignore[arg-type]
        if i == 20:
            source.on_unsubscribe(tenths[0])  # type: ignore[arg-type]
        worker([p for _, _, p in batch])

    def expected(wanted: tuple[str, ...], first: int = 0, last: int = len(batches)) -> list[bytes]:
        return [p for b in batches[first:last] for c, _, p in b if c in wanted]

    for c in everything:
        assert _texts(c.data) == expected(contracts) and c.messages == len(expected(contracts))
    for c in tenths[1:]:
        assert _texts(c.data) == expected(c.contracts)
    assert _texts(tenths[0].data) == expected(tenths[0].contracts, last=20)
    assert _texts(overlap.data) == expected(overlap.contracts)
    assert _texts(late.data) == expected(late.contracts, first=10)
    assert source.unrouted == sum(1 for b in batches for c, _, _ in b if c is None)
    # A client past its buffer is cut (once) and gets nothing more; the others are untouched.
    buffered[id(overlap)] = 9_990
    before = [bytes(c.data) for c in everything]
    worker([b'{"contractId":"1001"}'])
    worker([b'{"contractId":"1002"}'])
    assert overlap.closed is not None and overlap.faults == ["slow_client_cut"] and source.cut == 1
    assert all(bytes(c.data) == b + m for c, b, m in zip(everything, before, [b"\x81\x15"
               b'{"contractId":"1001"}\x81\x15{"contractId":"1002"}'] * 3, strict=True))


def test_a_client_whose_write_raises_is_closed_and_the_others_miss_nothing(caplog):
    from recorder.feed.endpoints import EndpointKind
    from recorder.live.relay import INTERNAL_ERROR_CODE, LiveSource

    class Broken(_Reader):
        def write_frames(self, data: bytes, messages: int) -> bool:
            raise RuntimeError("a bug in the write path")

    source = LiveSource(EndpointKind.ID, ("A", "B"), buffered=lambda sub: 0,  # type: ignore[arg-type]
                        fanout=Fanout(Router()))
    worker = _Worker(source)
    broken, good_a, good_b = Broken("A"), _Reader("A"), _Reader("B")
    for c in (broken, good_a, good_b):
        source.on_subscribe(c)  # type: ignore[arg-type]
    batches = [[("A", 1, b'{"contractId":"A","n":%d}' % i), ("B", 1, b'{"contractId":"B","n":%d}' % i)]
               for i in range(50)]
    for batch in batches:
        worker([p for _, _, p in batch])
    assert broken.closed == (INTERNAL_ERROR_CODE, "relay error; reconnect to resume") and source.errors == 1
    assert broken.faults == ["error_cut"] and "writing to a client failed" in caplog.text
    assert _texts(good_a.data) == [b[0][2] for b in batches] and _texts(good_b.data) == [b[1][2] for b in batches]
    assert source.fanout.take() == [], "nothing is held over from one batch to the next"


def test_a_stream_that_is_not_a_workers_is_refused_and_puts_nothing_into_the_outputs():
    fanout = Fanout(Router())
    fanout.set_routes({"1001": (0,)}, 1)
    with pytest.raises(WireError, match="not a recorder worker stream"):
        fanout.feed(fanout.new_link(), b"GET / HTTP/1.1\r\n\r\n")
    good = b'{"contractId":"1001"}'
    link = fanout.new_link()
    absurd = record_header(64 << 20 | 1, 1, 0, 0, 1)
    with pytest.raises(WireError, match="record of 67108865 bytes"):
        fanout.feed(link, hello(0, 1) + record_header(len(good), 0, 0, 0, 1) + good + absurd)
    assert fanout.take() == [], "the chunk's good record went nowhere: the link is dropped"
    with pytest.raises(ValueError, match="out of range"):
        fanout.set_routes({"1001": (1,)}, 1)
