"""The operators' dashboard and alert rules (deploy/) against what the recorder really exports.

- The series the rules need exist: per-shard group coverage and backpressure, the trading-session gauge, the
  disk guard's levels.
- `promtool check rules` and `promtool test rules` (a firing and a quiet case for every alert, on series shaped
  like the recorder's own /metrics).
- A real recorder is scraped: every metric a dashboard panel or a rule names is in the scrape, with the labels
  the query selects on, so a renamed metric fails here.
- A real Prometheus scrapes a healthy recorder and one that cannot reach its feed, loads the rules, and answers
  every dashboard query: each returns data, no rule fails to evaluate, the healthy recorder raises nothing and the
  cut-off one raises what an operator must hear.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from recorder.record.auth import TokenProvider
from recorder.record.diskguard import GB
from recorder.record.messages import Status
from recorder.record.metrics import render
from recorder.record.operations import Operations, OpsSettings
from recorder.record.sessions import TEHRAN, in_session, parse_sessions
from recorder.record.status import ShardView


def status(**fields: object) -> Status:
    base: dict[str, object] = dict(shard=0, pid=1, sent_ns=0, connections_open=0, connections=0, messages=0,
                                   copies=0, bytes=0, reconnects=0, last_message_ns=0, records_written=0,
                                   bytes_on_disk=0, files_sealed=0, backlog_bytes=0, paused=False)
    return Status(**{**base, **fields})  # type: ignore[arg-type]


# --- the series the rules need ------------------------------------------------------------------------------


def test_group_coverage_and_backpressure_are_exported_per_shard():
    v = ShardView(2, 9, state="running")
    # Three groups recorded twice each (--redundancy 2): four copies open, one group with no copy at all.
    v.update(status(shard=2, connections_open=4, connections=6, groups=3, groups_disconnected=1, paused=True,
                    downtime_ns=7_500_000_000, group_ns=90_000_000_000), now=time.monotonic())
    text = render([v], now_ns=0)
    assert 'ime_recorder_groups{shard="2"} 3.0' in text
    assert 'ime_recorder_groups_disconnected{shard="2"} 1.0' in text
    assert 'ime_recorder_paused{shard="2"} 1.0' in text
    assert 'ime_recorder_disconnected_seconds_total{shard="2"} 7.5' in text
    assert 'ime_recorder_contracts{shard="2"} 9.0' in text  # a shard with none is "empty", not down
    assert "# TYPE ime_recorder_disconnected_seconds_total counter" in text
    # A worker that died holds no connection: every group is uncovered until its successor connects, and the
    # time already counted stays counted.
    v.incarnation_ended()
    text = render([v], now_ns=0)
    assert 'ime_recorder_groups_disconnected{shard="2"} 3.0' in text
    assert 'ime_recorder_paused{shard="2"} 0.0' in text
    assert 'ime_recorder_disconnected_seconds_total{shard="2"} 7.5' in text


def _ops(tmp_path: Path, **settings: object) -> Operations:
    return Operations(OpsSettings.build(notify=False, **settings), tmp_path, "ime",  # type: ignore[arg-type]
                      views=lambda: [], tokens=TokenProvider(token="x"), fail=lambda _: None,
                      broadcast_token=lambda *_: None, send_event=None)


def _figures(ops: Operations) -> dict[str, float]:
    return {f.name: f.value for f in ops.figures()}


def test_the_trading_session_is_a_gauge_whatever_the_stall_alert(tmp_path):
    # Rules can tell silence in a session (an outage) from silence at night (normal) without --stall-alert.
    always, never = _ops(tmp_path, sessions="sun-sat 00:00-24:00"), _ops(tmp_path, sessions="none")
    assert _figures(always)["ime_recorder_trading_session"] == 1.0
    assert _figures(never)["ime_recorder_trading_session"] == 0.0
    assert "ime_recorder_stalled" not in _figures(always)  # the recorder's own alarm is still opt-in
    sat = parse_sessions("sat-wed 10:30-16:00")
    assert in_session(sat, _tehran_ns(2026, 11, 28, 10, 30))  # a Saturday, at the bell
    assert not in_session(sat, _tehran_ns(2026, 11, 28, 16, 0))
    assert not in_session(sat, _tehran_ns(2026, 11, 26, 11, 0))  # a Thursday


def test_a_restarted_recorder_shows_in_its_start_time(tmp_path):
    before = time.time()
    start = _figures(_ops(tmp_path))["ime_recorder_start_time_seconds"]
    assert before - 1 <= start <= time.time()


def test_the_disk_guards_levels_are_exported_beside_the_free_space(tmp_path):
    figures = _figures(_ops(tmp_path, warn_free_gb=20, min_free_gb=5))
    assert figures["ime_recorder_disk_warn_free_bytes"] == 20 * GB
    assert figures["ime_recorder_disk_min_free_bytes"] == 5 * GB
    only_min = _figures(_ops(tmp_path, min_free_gb=5))
    assert "ime_recorder_disk_warn_free_bytes" not in only_min and only_min["ime_recorder_disk_min_free_bytes"]
    assert "ime_recorder_disk_min_free_bytes" not in _figures(_ops(tmp_path))


def _tehran_ns(y: int, mo: int, d: int, h: int, mi: int) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=TEHRAN).timestamp()) * 10**9
