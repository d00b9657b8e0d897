"""ime-sim's ground truth for redundant capture: the market publishes whether or not anyone listens
(`--published-log`), and drops are independent per connection (so redundant copies do not drop together)."""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sim_util import picows_session, run, running_sim

from recorder.events import decode_event
from recorder.feed.endpoints import EndpointKind
from recorder.model.record import Record, RecordKind
from recorder.segment.reader import discover, merge_records, open_segment
from recorder.sim import SimConfig
from recorder.sim.faults import JITTER, FaultConfig, FaultPlan, repeat_schedule
from recorder.sim.market import make_contracts, message_prefix
from recorder.sim.sentlog import PUBLISHED_CONN

IME_SIM = Path(sys.executable).parent / "ime-sim"


def read_log(directory: Path) -> list[Record]:
    segments = [open_segment(p) for p in discover([directory])]
    for seg in segments:
        assert not seg.damage, seg.damage
    return list(merge_records(segments))


def test_published_log_holds_every_message_even_while_nobody_listens(tmp_path):
    published_dir, sent_dir = tmp_path / "published", tmp_path / "sent"

    async def go() -> tuple[dict, list[bytes]]:
        async with running_sim(contracts=4, rate=2000, seed=3, published_log=published_dir,
                               sent_log=sent_dir) as sim:
            await asyncio.sleep(0.4)  # nobody connected: the market publishes anyway
            session = await picows_session(sim.url(EndpointKind.ID, sim.ids[:2]), sim.token, timeout=0.5)
            await asyncio.sleep(0.4)  # and again after the only client has gone
            stats = sim.stats()
        return stats, session.texts()

    stats, received = run(go())
    published = read_log(published_dir)
    sent = read_log(sent_dir)
    opened = [r.ts_ns for r in sent if r.kind == RecordKind.EVENT and decode_event(r.payload)["event"] == "opened"]
    closed = [r.ts_ns for r in sent if r.kind == RecordKind.EVENT and decode_event(r.payload)["event"] == "closed"]
    assert len(opened) == len(closed) == 1

    # Every event the market generated is in the log, once (the log is closed with the simulator).
    assert len(published) == stats["source"]["events"] > 1000
    assert all(r.conn == PUBLISHED_CONN and r.kind == RecordKind.TEXT for r in published)
    before = [r for r in published if r.ts_ns < opened[0]]
    after = [r for r in published if r.ts_ns > closed[0]]
    assert len(before) > 300 and len(after) > 300  # ~0.4 s at 2000/s each side, with room for a slow machine

    # What the client got is exactly the published messages of its contracts while it was connected: the
    # same bytes, in the same order (a by-id subscriber gets the by-id envelope the log holds).
    wanted = [b'"contractId":"1001"', b'"contractId":"1002"']
    during = [r.payload for r in published if opened[0] <= r.ts_ns <= closed[0]
              and any(w in r.payload[:80] for w in wanted)]
    sent_payloads = [r.payload for r in sent if r.kind == RecordKind.TEXT]
    assert received == sent_payloads and len(received) > 100
    it = iter(during)
    assert all(p in it for p in received), "a sent message is missing from the published log, or out of order"
    assert len(during) - len(received) <= stats["totals"]["dropped"] + 2 * 2000 * 0.01  # edges: one tick each


def test_published_log_in_the_child_process_and_refused_without_a_live_market(tmp_path):
    published = tmp_path / "pub"
    proc = subprocess.run([str(IME_SIM), "--port", "0", "--http-port", "0", "--duration", "0.6", "--rate", "1000",
                           "--published-log", str(published), "-q"], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    records = read_log(published)
    assert 300 < len(records) <= 1000  # nobody ever connected; ~600 published
    seg = open_segment(discover([published])[0])
    assert seg.header.meta["endpoint"] == "id" and seg.header.meta["contracts"][0] == "1001"

    proc = subprocess.run([str(IME_SIM), "--rate", "0", "--published-log", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--published-log needs a live market" in lines[0]


def test_drop_schedule_is_independent_per_connection():
    period = 3.0
    firsts = [FaultPlan(FaultConfig(drop_every=period), seed=7, connection=c).first(1)[0][0] for c in range(1, 41)]
    assert all(0.5 * period <= t <= 1.5 * period for t in firsts)
    # Spread over the whole window, not clustered around S as the +/-10% jitter of other faults would be.
    assert max(firsts) - min(firsts) > 0.8 * period
    assert sum(abs(t - period) > 0.1 * period for t in firsts) > 20
    gaps = [b - a for (a, _), (b, _) in zip(*(2 * [iter(FaultPlan(FaultConfig(drop_every=period), 7, 1).first(40))]),
                                            strict=False)]
    assert all(0.5 * period <= g <= 1.5 * period for g in gaps)
    assert FaultPlan(FaultConfig(drop_every=period), 7, 1).first(5) != FaultPlan(FaultConfig(drop_every=period), 8,
                                                                                  1).first(5)


def test_two_connections_to_the_same_contracts_drop_at_different_times(tmp_path):
    period = 1.0
    seed = 8
    plan = {c: FaultPlan(FaultConfig(drop_every=period), seed, c).first(1)[0][0] for c in (1, 2)}
    assert abs(plan[1] - plan[2]) > 0.6  # the seed gives well-separated drops; the check below measures them
    sent_dir = tmp_path / "sent"

    async def go() -> None:
        async with running_sim(contracts=3, rate=2000, seed=seed, faults=FaultConfig(drop_every=period),
                               sent_log=sent_dir) as sim:
            url = sim.url(EndpointKind.ID)
            await asyncio.gather(picows_session(url, sim.token, timeout=5), picows_session(url, sim.token, timeout=5))

    run(go())
    opened: dict[int, int] = {}
    closed: dict[int, tuple[int, dict]] = {}
    for rec in read_log(sent_dir):
        if rec.kind == RecordKind.EVENT:
            event = decode_event(rec.payload)
            if event["event"] == "opened":
                opened[rec.conn] = rec.ts_ns
            elif event["event"] == "closed":
                closed[rec.conn] = (rec.ts_ns, event)
    assert set(opened) == set(closed) == {1, 2}
    for conn in (1, 2):
        ts, event = closed[conn]
        assert event["by"] == "abort" and event["code"] is None  # a drop: no close handshake
        lived = (ts - opened[conn]) / 1e9
        assert plan[conn] - 0.05 <= lived <= plan[conn] + 0.5, (conn, lived, plan[conn])
    apart = abs(closed[1][0] - closed[2][0]) / 1e9
    assert apart > 0.6 - 0.2 and (closed[1][0] < closed[2][0]) == (plan[1] < plan[2])


# --- --repeat-every: the market publishes old bytes again (the edge of a dedupe window, on purpose) -----------


def test_repeat_schedule_is_the_markets_own_seeded_and_jittered():
    first = list(itertools.islice(repeat_schedule(0.5, seed=3), 40))
    assert first == list(itertools.islice(repeat_schedule(0.5, seed=3), 40))
    assert first != list(itertools.islice(repeat_schedule(0.5, seed=4), 40))
    assert all(abs(t - k * 0.5) <= JITTER * 0.5 + 1e-9 for k, t in enumerate(first, start=1))
    assert first == sorted(first) and len({round(t - k * 0.5, 6) for k, t in enumerate(first, start=1)}) > 1
    assert not FaultConfig(repeat_every=1).enabled  # nothing to inject per connection
    with pytest.raises(ValueError, match="repeat-every must be positive"):
        FaultConfig(repeat_every=0)
    with pytest.raises(ValueError, match="repeat-after must be positive"):
        FaultConfig(repeat_every=1, repeat_after=-1)
    with pytest.raises(ValueError, match="--repeat-every needs a live market"):
        SimConfig(rate=0, faults=FaultConfig(repeat_every=1))


def test_a_repeat_is_the_bytes_published_d_earlier_published_again_and_sent_to_every_subscriber(tmp_path):
    published_dir, sent_dir = tmp_path / "published", tmp_path / "sent"
    after = 0.3

    async def go() -> tuple[dict, list[bytes], list[bytes]]:
        async with running_sim(contracts=3, rate=2000, seed=4, published_log=published_dir, sent_log=sent_dir,
                               faults=FaultConfig(repeat_every=0.1, repeat_after=after)) as sim:
            by_id, by_name = await asyncio.gather(
                picows_session(sim.url(EndpointKind.ID), sim.token, timeout=1.5),
                picows_session(sim.url(EndpointKind.NAME), sim.token, timeout=1.5))
            stats = sim.stats()
        return stats, by_id.texts(), by_name.texts()

    stats, by_id, by_name = run(go())
    published = read_log(published_dir)
    repeats = stats["source"]["repeats"]
    assert repeats >= 8  # ~1.5 s at one a 0.1 s, the first after 0.3 s; more on a slow machine's longer run
    assert len(published) == stats["source"]["events"] + repeats  # each repeat is a published message of its own
    first_seen: dict[bytes, int] = {}
    again = []
    for rec in published:
        if rec.payload in first_seen:
            again.append((rec.ts_ns - first_seen[rec.payload]) / 1e9)
        else:
            first_seen[rec.payload] = rec.ts_ns
    # The market repeats a message on its own now and then (the same tick, microseconds apart); the rest are the
    # repeats, each of the bytes published D earlier (to a tick: ~1 ms, more on a busy machine).
    made = [gap for gap in again if gap > 0.01]
    assert len(made) == repeats and all(abs(gap - after) < 0.1 for gap in made), made

    # Every subscriber got each repeat like any message, in publication order: the by-id one, the published bytes
    # themselves; the by-name one, the same message in its own envelope.
    sent = read_log(sent_dir)
    opened = [r.ts_ns for r in sent if r.kind == RecordKind.EVENT and decode_event(r.payload)["event"] == "opened"]
    closed = [r.ts_ns for r in sent if r.kind == RecordKind.EVENT and decode_event(r.payload)["event"] == "closed"]
    during = [r.payload for r in published if max(opened) <= r.ts_ns <= min(closed)][5:-5]  # edges: a tick each
    assert sum(n - 1 for n in Counter(during).values()) >= 3  # repeats among them
    envelopes = [(message_prefix(EndpointKind.NAME.field, s.name), message_prefix(EndpointKind.ID.field, s.id))
                 for s in make_contracts(3, 4)]
    by_name_as_id = []
    for payload in by_name:
        (name, ident), = [(n, i) for n, i in envelopes if payload.startswith(n)]
        by_name_as_id.append(ident + payload[len(name):])
    for received in (by_id, by_name_as_id):
        it = iter(received)
        assert all(p in it for p in during), "a published message (a repeat?) is missing from what was sent"


def test_repeat_every_from_the_command_line_and_refused_without_a_live_market(tmp_path):
    proc = subprocess.run([str(IME_SIM), "--port", "0", "--http-port", "0", "--duration", "1.5", "--rate", "1000",
                           "--repeat-every", "0.2", "--repeat-after", "0.5", "--published-log", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"the market published (\d+) messages \((\d+) of them repeats\)", proc.stderr)
    assert m is not None and int(m[2]) >= 3, proc.stderr
    assert len(read_log(tmp_path / "p")) == int(m[1])
    proc = subprocess.run([str(IME_SIM), "--rate", "0", "--repeat-every", "1"], capture_output=True, text=True,
                          timeout=20)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--repeat-every needs a live market" in lines[0]
