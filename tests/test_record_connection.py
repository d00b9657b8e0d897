"""The connection core (record/connection.py): reconnect policy, failure classes, logging discipline."""

from __future__ import annotations

import logging
import random

import pytest

from recorder.record.connection import (
    ConnectionCore,
    Failure,
    GiveUp,
    Policy,
    Refusal,
    RefusalKind,
    Wait,
    classify_refusal,
)


def core(copy: int = 0, **policy) -> ConnectionCore:
    return ConnectionCore("shard 0 group 1", copy, Policy(**policy), random.Random(3))


def test_a_drop_after_data_reconnects_at_once_however_often_it_happens():
    c = core()
    t = 0.0
    for _ in range(50):  # a server that drops every 20 s: the delay must never grow
        c.opened(t)
        c.data()
        t += 20
        step = c.closed(t, 1006, "")
        assert isinstance(step, Wait)
        assert step.delay_s <= 0.05
    assert c.failures == 0


def test_a_copy_whose_sibling_is_up_reconnects_without_the_jitter():
    alone, beside = core(), core(copy=1)
    delays = []
    for c, copy_open in ((alone, False), (beside, True)):
        c.opened(0.0)
        c.data()
        delays.append(c.closed(5.0, 1006, "", copy_open=copy_open).delay_s)
    assert 0 < delays[0] <= 0.05 and delays[1] == 0.0


def test_backoff_grows_over_consecutive_connect_failures_and_is_capped():
    c = core(backoff_base_s=0.25, backoff_cap_s=8.0)
    delays = [c.connect_failed(float(i), Failure.NETWORK, "refused").delay_s for i in range(12)]
    # Each ceiling doubles: 0.25, 0.5, 1, 2, 4, 8, 8 …; a delay is in [ceiling/2, ceiling].
    for i, d in enumerate(delays):
        ceiling = min(8.0, 0.25 * 2 ** i)
        assert ceiling / 2 <= d <= ceiling, (i, d)
    assert delays[5] > 4 * delays[0]  # exponential, not constant
    assert len(set(delays)) == len(delays)  # jittered


def test_data_resets_the_backoff_but_an_open_without_data_does_not():
    c = core()
    for i in range(5):
        c.connect_failed(float(i), Failure.NETWORK, "x")
    assert c.failures == 5
    c.opened(10.0)
    step = c.closed(10.5, 1000, "bye")  # accepted then closed, nothing delivered: still failing
    assert isinstance(step, Wait) and step.delay_s >= 0.25 * 2 ** 5 / 2
    c.opened(20.0)
    c.data()
    assert c.failures == 0


def test_copies_start_staggered():
    starts = [core(copy=k, stagger_s=0.5).start().delay_s for k in range(3)]
    assert starts[0] == 0
    assert 0.5 <= starts[1] < 1.0 and 1.0 <= starts[2] < 1.5


@pytest.mark.parametrize(("how", "expected"), [(lambda c: c.closed(1.0, 1008, "bad"), "close 1008"),
                                                (lambda c: c.handshake_status(1.0, 403), "HTTP 403"),
                                                (lambda c: c.handshake_status(1.0, 401), "HTTP 401")])
def test_refusals_go_to_the_planner_named_as_what_they_were(how, expected):
    c = core()
    c.opened(0.0)
    step = how(c)
    assert isinstance(step, Refusal)
    assert step.how == expected


def test_a_wrong_path_gives_up_after_a_bounded_number_of_404s_with_an_error_first():
    c = core(wrong_url_attempts=3)
    first = c.handshake_status(0.0, 404)
    assert isinstance(first, Wait)
    assert first.logs and first.logs[0].level == logging.ERROR and "HTTP 404" in first.logs[0].message
    assert isinstance(c.handshake_status(1.0, 404), Wait)
    final = c.handshake_status(2.0, 404)
    assert isinstance(final, GiveUp) and "HTTP 404" in final.message and "\n" not in final.message


def test_http_200_and_garbage_warn_once_then_summarise_at_most_once_a_minute():
    c = core(repeat_log_s=60)
    logs = []
    for i in range(200):
        step = c.handshake_status(float(i), 200)
        assert isinstance(step, Wait)
        logs.extend(step.logs)
    assert logs[0].level == logging.WARNING and "HTTP 200" in logs[0].message
    assert 2 <= len(logs) <= 5  # the first, then one summary per minute of failures
    assert "more failures like this" in logs[1].message
    garbage = c.handshake_status(300.0, None)
    assert garbage.logs and "not HTTP" in garbage.logs[0].message  # a new kind is reported at once


def test_connected_time_is_summed_over_connections():
    c = core()
    c.opened(10.0)
    c.data()
    c.closed(15.0, 1006, "")
    c.opened(15.1)
    c.data()
    c.closed(20.1, 1006, "")
    assert c.connected_s == pytest.approx(10.0)


def test_connection_limit_waits_long():
    c = core(backoff_base_s=0.25, backoff_cap_s=30)
    assert c.connection_limit_wait().delay_s >= 0.25 * 2 ** 6 / 2


@pytest.mark.parametrize(("copy", "accepted", "other_open", "same_token", "kind"), [
    (0, True, True, True, RefusalKind.TOKEN),  # streaming, then refused: expired or revoked, any copy
    (1, True, False, True, RefusalKind.TOKEN),
    (1, False, True, True, RefusalKind.CONNECTION_LIMIT),  # never bisect for an extra copy
    (0, False, True, True, RefusalKind.CONNECTION_LIMIT),
    (1, False, True, False, RefusalKind.FOLLOW),  # the other copy holds an older token: not proof of anything
    (1, False, False, True, RefusalKind.FOLLOW),
    (0, False, False, True, RefusalKind.PLANNER),
])
def test_what_a_refusal_of_one_copy_says(copy, accepted, other_open, same_token, kind):
    assert classify_refusal(copy, accepted, other_open, same_token) is kind
