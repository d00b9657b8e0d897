"""What clients of the in-process simulator receive: pacing, sharing, bursts, determinism, timestamps."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson
from sim_util import picows_session, run, running_sim

from recorder.feed.endpoints import EndpointKind
from recorder.feed.message import parse_envelope, parse_timestamp_ns
from recorder.sim.source import MAX_CATCH_UP


def test_paced_rate_is_market_wide_and_shared_by_contracts():
    async def go() -> tuple[list[bytes], int, Mapping[str, Any]]:
        async with running_sim(contracts=10, rate=5000) as sim:
            all_ids, half = sim.ids, sim.ids[:5]
            results = await asyncio.gather(
                picows_session(sim.url(EndpointKind.ID, all_ids), sim.token, timeout=1.0),
                picows_session(sim.url(EndpointKind.ID, half), sim.token, timeout=1.0, keep_text=False),
            )
            return results[0].texts(), len(results[1].data()), sim.stats()["source"]

    texts, half, source = run(go())
    full, skipped, late = len(texts), source["late_skipped"], source["max_late_s"]
    # The rate is checked on the sender's own clock (each frame's `timestamp` is its send time), so a loaded
    # machine that delays the clients cannot move it. A ticker that falls behind sends its backlog (up to
    # MAX_CATCH_UP, older events skipped and counted) with later stamps: between two stamps it sent the schedule's
    # count give or take the backlog it carried (`max_late_s`, a few ms on a quiet machine; CI saw 76 ms).
    span = (parse_timestamp_ns(parse_envelope(texts[-1]).timestamp) -
            parse_timestamp_ns(parse_envelope(texts[0]).timestamp)) / 1e9
    assert span > 0.5, span
    assert late <= MAX_CATCH_UP, late
    low, high = 0.95 * 5000 * (span - late) - 10, 1.05 * 5000 * (span + late) + 10
    assert low <= full + skipped <= high, (full, skipped, span, late)
    assert 0.35 <= half / full <= 0.65, (half, full)  # half the contracts, about half the messages


def test_id_and_name_subscribers_see_the_same_market():
    async def go() -> None:
        async with running_sim(contracts=4, rate=3000) as sim:
            by_id, by_name = await asyncio.gather(
                picows_session(sim.url(EndpointKind.ID), sim.token, lambda s: len(s.texts()) >= 600),
                picows_session(sim.url(EndpointKind.NAME), sim.token, lambda s: len(s.texts()) >= 600),
            )
            name_of = dict(zip(sim.ids, sim.names, strict=True))
            a = [parse_envelope(p) for p in by_id.texts()]
            b = [parse_envelope(p) for p in by_name.texts()]
            assert all(e.identifier_field == "contractId" for e in a)
            assert all(e.identifier_field == "contractName" for e in b)
            # Align on the first message both saw; from there the streams agree message by message.
            keys_a = [(e.timestamp, e.data) for e in a]
            keys_b = [(e.timestamp, e.data) for e in b]
            if keys_a[0] in keys_b:
                b = b[keys_b.index(keys_a[0]):]
            else:
                a = a[keys_a.index(keys_b[0]):]
            pairs = list(zip(a, b, strict=False))
            assert len(pairs) >= 400
            for x, y in pairs:
                assert name_of[x.identifier] == y.identifier and x.timestamp == y.timestamp and x.data == y.data

    run(go())


def test_timestamps_are_send_times_in_microseconds():
    async def go() -> None:
        async with running_sim(contracts=3, rate=2000) as sim:
            session = await picows_session(sim.url(EndpointKind.ID), sim.token, lambda s: len(s.texts()) >= 200)
            now = time.time_ns()
            stamps = [parse_timestamp_ns(orjson.loads(p)["timestamp"]) for p in session.texts()]
            assert stamps == sorted(stamps)
            assert all(s % 1000 == 0 for s in stamps)  # microsecond precision
            assert now - 2 * 10**9 < stamps[0] and stamps[-1] <= now
            assert len(set(stamps)) > 20  # re-rendered per batch, not once

    run(go())


def test_bursts_arrive_together():
    async def go() -> None:
        async with running_sim(contracts=3, rate=1000, burst=400, burst_every=0.2) as sim:
            # Until a second burst was published (bursts are timed from the last one, so a loaded machine spaces
            # them out): by then every frame of the first had arrived.
            session = await picows_session(sim.url(EndpointKind.ID), sim.token,
                                           lambda s: sim.stats()["source"]["bursts"] >= 2, timeout=10)
            per_stamp = Counter(orjson.loads(p)["timestamp"] for p in session.texts())
            assert per_stamp.most_common(1)[0][1] >= 400
            assert sim.stats()["source"]["bursts"] >= 2

    run(go())


def test_drain_mode_is_deterministic_per_seed():
    def strip_clock(payload: bytes) -> dict:
        obj = orjson.loads(payload)
        del obj["timestamp"], obj["data"]["Aggregate"]["date"], obj["data"]["Aggregate"]["time"]
        return obj

    async def stream(seed: int) -> list[dict]:
        async with running_sim(contracts=5, rate=0, seed=seed, batch_bytes=16 * 1024) as sim:
            s = await picows_session(sim.url(EndpointKind.ID, ["1002", "1004"]), sim.token,
                                     lambda s: len(s.frames) >= 2000)
            return [strip_clock(p) for p in s.texts()[:2000]]

    first, again, other = run(stream(4)), run(stream(4)), run(stream(5))
    assert len(first) == 2000 and first == again and first != other
    assert {m["contractId"] for m in first} == {"1002", "1004"}
