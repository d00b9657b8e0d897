"""Fault injection: the seeded schedule, and each fault as a real picows client on loopback sees it."""

from __future__ import annotations

import asyncio
import itertools
import re
import time

import orjson
import pytest
from picows import WSMsgType
from sim_util import Session, picows_session, run, running_sim

from recorder.feed.endpoints import EndpointKind
from recorder.feed.message import parse_envelope, parse_timestamp_ns
from recorder.sim.faults import DROP_SPREAD, JITTER, Fault, FaultConfig, FaultPlan

# -- the schedule (pure) ------------------------------------------------------------------------------


def test_plan_is_deterministic_ordered_and_periodic():
    cfg = FaultConfig(ping_every=1.0, stall_every=2.5, malformed_every=0.7, revoke_after=3.3)
    plan = FaultPlan(cfg, seed=5, connection=1).first(40)
    assert plan == FaultPlan(cfg, seed=5, connection=1).first(40)
    assert plan != FaultPlan(cfg, seed=6, connection=1).first(40)
    assert plan != FaultPlan(cfg, seed=5, connection=2).first(40)
    times = [t for t, _ in plan]
    assert times == sorted(times)
    assert [f for _, f in plan].count(Fault.REVOKE) == 1 and (3.3, Fault.REVOKE) in plan
    for fault, period in ((Fault.PING, 1.0), (Fault.STALL, 2.5), (Fault.MALFORMED, 0.7)):
        ts = [t for t, f in plan if f is fault]
        assert len(ts) >= 3
        for k, t in enumerate(ts, start=1):
            assert abs(t - k * period) <= JITTER * period + 1e-9
    assert len({round(t - k, 6) for k, (t, f) in enumerate(plan) if f is Fault.PING}) > 1  # jittered


def test_delays_come_after_independent_wide_gaps_per_connection():
    cfg = FaultConfig(delay_every=0.5)
    plans = [[t for t, f in FaultPlan(cfg, seed=1, connection=c).first(60)] for c in (1, 2)]
    for times in plans:
        gaps = [b - a for a, b in itertools.pairwise([0.0, *times])]
        assert all((1 - DROP_SPREAD) * 0.5 <= g <= (1 + DROP_SPREAD) * 0.5 for g in gaps)
    # Two copies' 20 ms hiccups overlap rarely (on a +/- 10% grid about a third of them would).
    overlapping = sum(1 for a in plans[0] if any(abs(a - b) < 0.02 for b in plans[1]))
    assert overlapping <= len(plans[0]) // 4, overlapping
    assert FaultConfig().delay_for == 0.02


def test_no_faults_configured():
    assert not FaultConfig().enabled
    assert FaultPlan(FaultConfig(), 1, 1).first(5) == []
    assert FaultConfig(revoke_after=1).enabled and FaultConfig(ping_every=1).enabled


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"drop_every": 0}, "drop-every must be positive"),
    ({"ping_every": -1}, "ping-every"),
    ({"close_code": 1005}, "close code 1005"),
    ({"close_code": 999}, "close code"),
    ({"stall_for": 0}, "stall-for"),
    ({"delay_for": 0}, "delay-for must be positive"),
    ({"delay_every": -0.5}, "delay-every must be positive"),
    ({"fragment_parts": 1}, "fragment-parts"),
    ({"oversized_bytes": 0}, "oversized-bytes"),
])
def test_bad_fault_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FaultConfig(**kwargs)


def test_ends_connection():
    assert {f for f in Fault if f.ends_connection} == {Fault.DROP, Fault.CLOSE, Fault.REVOKE}


# -- on the wire ------------------------------------------------------------------------------------


def faulty_session(faults: FaultConfig, done, timeout: float = 5.0, rate: float = 3000.0,
                   **session_kwargs) -> tuple[Session, dict]:
    async def go() -> tuple[Session, dict]:
        async with running_sim(contracts=3, rate=rate, faults=faults) as sim:
            session = await picows_session(sim.url(EndpointKind.ID), sim.token, done, timeout=timeout,
                                           **session_kwargs)
            await asyncio.sleep(0.05)
            (conn,) = sim.stats()["connections"]
            return session, conn

    return run(go())


_STAMP = re.compile(rb'"timestamp":"([^"]+)"')


def sender_stamps(session: Session) -> list[int]:
    """Each distinct send stamp (epoch ns) of the text frames received, in order (a drain-mode batch shares one).
    A regex, not parse_envelope: a drain session brings hundreds of thousands of frames (~7 µs each parsed)."""
    stamps: list[bytes] = []
    for payload in session.texts():
        m = _STAMP.search(payload)
        assert m is not None, payload[:120]
        if not stamps or stamps[-1] != m.group(1):
            stamps.append(m.group(1))
    return [parse_timestamp_ns(s.decode()) for s in stamps]


def test_drop_cuts_tcp_without_close_after_delivering_every_counted_frame():
    session, conn = faulty_session(FaultConfig(drop_every=0.4), lambda s: False)
    assert session.disconnected_at is not None and session.close_code is None
    assert conn["faults"] == {"drop": 1} and conn["closed_by"] == "abort"
    assert conn["sent"] > 500
    assert len(session.texts()) == conn["sent"]  # what the server counted as sent, the client got


def test_drop_in_drain_mode_delivers_every_counted_frame_too():
    session, conn = faulty_session(FaultConfig(drop_every=0.3), lambda s: False, rate=0, keep_text=False)
    assert session.disconnected_at is not None and session.close_code is None
    assert conn["sent"] > 10_000 and len(session.data()) == conn["sent"]


def test_close_with_the_requested_code():
    session, conn = faulty_session(FaultConfig(close_every=0.3, close_code=4001), lambda s: False)
    assert (session.close_code, session.close_reason) == (4001, "simulated close")
    assert session.texts() and conn["close_code"] == 4001 and conn["faults"] == {"close": 1}


@pytest.mark.parametrize("rate", [3000.0, 0.0])
def test_stall_leaves_a_gap(rate):
    session, conn = faulty_session(FaultConfig(stall_every=0.4, stall_for=0.25), lambda s: False, timeout=1.5,
                                   rate=rate)
    # Measured on the sender's clock (each frame's stamp is when it was published or rendered): nothing is
    # stamped while a connection stalls, so a gap of stall_for lies between two stamps it received, however late
    # a loaded machine let the client read (which shortens the gap seen at receipt: 0.21 s of a 0.25 s stall).
    stamps = sender_stamps(session)
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(stamps)]
    assert max(gaps) >= 0.25 - 1e-3, max(gaps)  # 1 ms: the wall clock the stamps use may be slewed
    assert conn["faults"]["stall"] >= 1
    # Sending resumed after the stall: a gap lies between two received frames, so one followed it. (The former
    # "span > 0.7 s" check failed when a loaded machine delayed the connection's start.)
    if rate:
        assert conn["dropped"] > 0  # a live market does not wait for a stalled connection
    else:
        assert conn["dropped"] == 0


@pytest.mark.parametrize("rate", [3000.0, 0.0])
def test_delay_holds_the_messages_then_sends_every_one(rate):
    wall_minus_perf = time.time() - time.perf_counter()
    session, conn = faulty_session(FaultConfig(delay_every=0.5, delay_for=0.3), lambda s: False, timeout=1.5,
                                   rate=rate)
    frames = session.data()
    times = [f.at for f in frames]
    assert conn["faults"]["delay"] >= 1
    if rate:
        # A held frame reaches the client delay_for after it was published and stamped; without a delay, within
        # milliseconds. The margin is for a ticker a loaded machine made late (its backlog is stamped when sent).
        last_of_stamp = {m.group(1): f.at for f in frames if (m := _STAMP.search(f.payload))}
        late = max(at + wall_minus_perf - parse_timestamp_ns(stamp.decode()) / 1e9
                   for stamp, at in last_of_stamp.items())
        assert late >= 0.15, late
    else:
        # A drain connection renders its next batch when the hiccup ends: a gap on the sender's clock (a client
        # reading slowly also leaves gaps, 0.13 s seen, so lateness at receipt would tell nothing here).
        gap = max((b - a) / 1e9 for a, b in itertools.pairwise(sender_stamps(session)))
        assert gap >= 0.2, gap
    # A hiccup is not a stall: what was published meanwhile arrives late, not never.
    assert conn["dropped"] == 0
    # The client hangs up mid-stream: what was on the wire then is the only difference (tests/test_record_e2e.py
    # checks every message against the sent and published logs).
    assert len(times) > 100
    if rate:
        # At most a release (delay_for of messages) and 0.1 s more were on the wire when it hung up.
        assert 0 <= conn["sent"] - len(times) <= rate * 0.4, (conn["sent"], len(times))


def has(msg_type: WSMsgType):
    return lambda s: any(f.msg_type == msg_type for f in s.frames)


def test_malformed_frame():
    def bad(s: Session) -> bool:
        for payload in s.texts():
            try:
                orjson.loads(payload)
            except orjson.JSONDecodeError:
                return True
        return False

    session, conn = faulty_session(FaultConfig(malformed_every=0.15), bad)
    assert bad(session) and conn["faults"].get("malformed", 0) >= 1
    broken = [p for p in session.texts() if not p.endswith(b"}}")]
    assert len(broken) >= 1 and broken[0].startswith(b'{"channel":"IME Stream","contractId":"100')
    broken[0].decode("utf-8")  # a text frame: still valid UTF-8


def test_binary_frame():
    session, conn = faulty_session(FaultConfig(binary_every=0.15), has(WSMsgType.BINARY))
    (payload, *_) = [f.payload for f in session.data(WSMsgType.BINARY)]
    assert payload.startswith(b"\x00\xffIME-SIM binary frame")
    assert conn["faults"]["binary"] >= 1


def test_oversized_frame():
    big = 300_000
    session, conn = faulty_session(FaultConfig(oversized_every=0.15, oversized_bytes=big),
                                   lambda s: any(len(p) == big for p in s.texts()), timeout=20.0)
    # On a busy machine a second one (0.15 s later) may arrive before the session hangs up: every one counts.
    oversized = [p for p in session.texts() if len(p) > 10_000]
    assert oversized and all(len(p) == big for p in oversized)
    for payload in oversized:
        env = parse_envelope(payload)
        assert env.identifier in ("1001", "1002", "1003") and set(env.extra["padding"]) == {"x"}
    assert conn["faults"]["oversized"] >= len(oversized)


def test_fragmented_message_reassembles():
    def fragmented(s: Session) -> bool:
        return any(f.msg_type == WSMsgType.CONTINUATION and f.fin for f in s.frames)

    session, conn = faulty_session(FaultConfig(fragment_every=0.15, fragment_parts=4), fragmented)
    frames = session.frames
    start = next(i for i, f in enumerate(frames) if f.msg_type == WSMsgType.TEXT and not f.fin)
    run_ = frames[start:start + 4]
    assert [f.msg_type for f in run_] == [WSMsgType.TEXT] + [WSMsgType.CONTINUATION] * 3
    assert [f.fin for f in run_] == [False, False, False, True]
    env = parse_envelope(b"".join(f.payload for f in run_))
    assert env.identifier_field == "contractId" and env.data.best_limit is not None
    assert conn["faults"]["fragment"] >= 1 and conn["frames"] >= conn["sent"] + 4


def test_pings_are_sent_and_pongs_counted():
    session, conn = faulty_session(FaultConfig(ping_every=0.1),
                                   lambda s: len(s.data(WSMsgType.PING)) >= 3)
    pings = [f.payload for f in session.data(WSMsgType.PING)]
    assert pings[:3] == [b"ime-sim 1", b"ime-sim 2", b"ime-sim 3"]
    assert conn["pongs"] >= 2 and conn["faults"]["ping"] >= 3


def test_revocation_closes_1008_and_the_token_stays_revoked():
    async def go() -> None:
        async with running_sim(contracts=3, rate=1000, faults=FaultConfig(revoke_after=0.3)) as sim:
            url = sim.url(EndpointKind.NAME)
            first = await picows_session(url, sim.token)
            assert (first.close_code, first.close_reason) == (1008, "token revoked")
            assert first.texts()
            again = await picows_session(url, sim.token)
            assert (again.close_code, again.close_reason) == (1008, "revoked token") and not again.frames
            fresh = await picows_session(url, sim.server.issue_token(), lambda s: len(s.texts()) >= 5)
            assert len(fresh.texts()) >= 5
            stats = sim.stats()
            assert stats["totals"]["faults"]["revoke"] >= 1 and stats["refused"] == {"revoked token": 1}

    run(go())
