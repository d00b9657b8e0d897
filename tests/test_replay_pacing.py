"""Replay pacing and the play loop, on a fake clock: pure, exact."""

from __future__ import annotations

import pytest

from recorder.errors import UserError
from recorder.model.record import Record
from recorder.replay.pacing import Pacer, parse_speed
from recorder.replay.player import play

S = 1_000_000_000


@pytest.mark.parametrize(("text", "factor"), [("1x", 1.0), ("10x", 10.0), ("0.25x", 0.25), ("3", 3.0),
                                              (".5X", 0.5), ("max", None), ("MAX", None)])
def test_parse_speed(text, factor):
    assert parse_speed(text) == factor


@pytest.mark.parametrize("text", ["0x", "-1x", "fast", "x", "10xx", ""])
def test_bad_speed_is_a_usage_error(text):
    with pytest.raises(UserError, match="bad --speed"):
        parse_speed(text)


def test_schedule_is_absolute_and_scaled():
    p = Pacer(10.0)
    assert [p.offset_s(t) for t in (5 * S, 6 * S, 6 * S, 15 * S)] == [0.0, 0.1, 0.1, 1.0]
    assert p.span_s == 10.0


def test_max_gap_compresses_idle_periods_only():
    p = Pacer(1.0, max_gap_ns=2 * S)
    offsets = [p.offset_s(t) for t in (0, S, 10 * S, 10 * S + S // 2, 3600 * S)]
    assert offsets == [0.0, 1.0, 3.0, 3.5, 5.5]
    assert p.compressed_ns == 7 * S + (3600 * S - 10 * S - S // 2 - 2 * S)


def test_a_backward_clock_step_does_not_move_the_schedule_back():
    p = Pacer(1.0)
    assert [p.offset_s(t) for t in (10 * S, 12 * S, 11 * S, 13 * S)] == [0.0, 2.0, 2.0, 3.0]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        self.now += 1e-6  # every look at the clock costs a microsecond
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def rows(times_ns):
    return iter([(Record(t, 0, 1, 1, b"%d" % t), "1001") for t in times_ns])


def test_play_emits_each_record_at_its_due_time():
    clock = FakeClock()
    emitted: list[tuple[float, list[int]]] = []
    report = play(rows([0, S // 2, S // 2, 2 * S]), Pacer(2.0), lambda b: emitted.append(
        (clock.now, [r.ts_ns for r, _ in b])), lambda: None, clock=clock, sleep=clock.sleep)
    # Due at 0, 0.25, 0.25 and 1.0 s after the start; equal times go out together.
    assert [ts for _, ts in emitted] == [[0], [S // 2, S // 2], [2 * S]]
    starts = [t - 100.0 for t, _ in emitted]
    assert starts[1] == pytest.approx(0.25, abs=1e-4) and starts[2] == pytest.approx(1.0, abs=1e-4)
    assert report.records == 4 and report.span_s == 1.0 * 2
    assert report.lateness.count == 4 and report.lateness.max < 100_000  # < 0.1 ms on this clock


def test_when_behind_everything_due_goes_out_at_once():
    clock = FakeClock()
    batches: list[list[int]] = []

    def slow_emit(batch):
        batches.append([r.ts_ns for r, _ in batch])
        clock.now += 0.5  # the sink blocks for half a second

    play(rows([0, S // 10, 2 * S // 10, 3 * S // 10, 4 * S // 10]), Pacer(1.0), slow_emit, lambda: None,
         clock=clock, sleep=clock.sleep)
    # After the first blocking write the next four are all overdue: one batch, no sleeps in between.
    assert batches == [[0], [S // 10, 2 * S // 10, 3 * S // 10, 4 * S // 10]]


def test_max_speed_never_sleeps_and_counts_events():
    clock = FakeClock()
    recs = [(Record(i * S, 0, 1, 3 if i % 10 == 0 else 1, b'{"event":"opened"}' if i % 10 == 0 else b"x"), None)
            for i in range(100)]
    out = []
    report = play(iter(recs), Pacer(None), out.extend, lambda: None, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [] and len(out) == 100
    assert report.events == 10 and report.event_kinds == {"opened": 10}
    assert report.lateness.count == 0


def test_stop_request_ends_the_replay_early():
    clock = FakeClock()
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] > 2

    report = play(rows([i * S for i in range(10)]), Pacer(1.0), lambda b: None, lambda: None, clock=clock,
                  sleep=clock.sleep, should_stop=should_stop)
    # Records 0-2 went out; the stop was noticed while waiting for record 3.
    assert report.stopped_early and report.records == 3 and report.span_s == 2.0
