"""The operators' dashboard and alert rules (deploy/) against what the recorder really exports.

- The series the rules need exist: per-shard group coverage and backpressure, the trading-session gauge, the
  disk guard's levels, the start time; a real worker with --redundancy 2 counts a group as disconnected only
  while none of its copies is.
- `promtool check rules` and `promtool test rules` (a firing and a quiet case for every alert, on series shaped
  like the recorder's own /metrics).
- A real recorder is scraped: every metric a dashboard panel or a rule names is in the scrape, with the labels
  the query selects on, so a renamed metric fails here.
- A real Prometheus scrapes a healthy recorder and one that cannot reach its feed, loads the rules, and answers
  every dashboard query: each returns data, no rule fails to evaluate, the healthy recorder raises nothing, the
  cut-off one raises what an operator must hear, and once it is killed, IMERecorderDown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import yaml
from live_util import free_port, metrics_url
from nats_util import NATS_SERVER, NatsServer
from prometheus_client.parser import text_string_to_metric_families
from record_util import RecorderProcess

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



@pytest.mark.slow
def test_a_group_is_disconnected_only_while_no_copy_of_it_is(sim_process, recorder, tmp_path):
    """--redundancy 2 with copy 1 pointed where nothing listens: copies are down, groups are not; then the feed
    goes away and every group is."""
    sim = sim_process("--contracts", "6", "--rate", "200")
    base = urlsplit(sim.info["base_url"])
    dead = base._replace(netloc=f"127.0.0.1:{free_port()}").geturl()
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--out", str(tmp_path / "out"), "--redundancy", "2",
                   "--base-url", sim.info["base_url"], "--base-url", dead, "--token-url", sim.info["token_url"],
                   "--metrics-port", "0", env={"IME_USERNAME": sim.info["username"],
                                               "IME_PASSWORD": sim.info["password"]})
    url = metrics_url(rec)
    seen: dict[str, float] = {}

    def shard0(name: str) -> float:
        return scrape(url)[name][(("shard", "0"),)]

    def covered_by_one_copy() -> bool:
        seen.update({n: shard0(n) for n in ("ime_recorder_groups", "ime_recorder_connections",
                                            "ime_recorder_connections_open", "ime_recorder_groups_disconnected")})
        groups = seen["ime_recorder_groups"]
        return (groups >= 1 and seen["ime_recorder_connections"] == 2 * groups
                and seen["ime_recorder_connections_open"] == groups and seen["ime_recorder_groups_disconnected"] == 0)

    poll(covered_by_one_copy, 60, lambda: f"each group open on its live copy only: {seen}")
    sim.kill()

    def uncovered() -> bool:
        seen.update({n: shard0(n) for n in ("ime_recorder_connections_open", "ime_recorder_groups_disconnected")})
        return seen["ime_recorder_connections_open"] == 0 and seen["ime_recorder_groups_disconnected"] == groups

    groups = seen["ime_recorder_groups"]
    poll(uncovered, 60, lambda: f"every group disconnected once the feed is gone: {seen}")
    first = shard0("ime_recorder_disconnected_seconds_total")
    poll(lambda: shard0("ime_recorder_disconnected_seconds_total") >= first + groups, 30,
         "the uncovered time grows by a second per group per second")

# --- deploy/: the rules and the dashboard, parsed ------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "ime-record-alerts.yml"
RULE_TESTS = ROOT / "tests" / "promtool" / "ime-record-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
GUIDE = ROOT / "docs" / "operations-monitoring.md"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
# Prometheus makes `up` for every target; the recorder cannot export it.
PROMETHEUS_OWN = frozenset({"up"})
# Exported but deliberately on no panel and in no rule (a new metric must be placed, or listed here with why).
UNUSED = {
    "ime_recorder_messages_per_second": "the dashboard takes rate() of ime_recorder_messages_total instead",
    "ime_recorder_disk_low_warnings_total": "ime_recorder_disk_low and the free bytes say more",
}


def require(path: str | None, what: str) -> str:
    """The tool's path; outside CI a missing tool skips with how to get it, in CI it fails (CI installs it)."""
    if path is None:
        why = f"{what} is not installed (apt-get install prometheus; `make promtool` does it as root)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must run this test")
        pytest.skip(why)
    return path


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def panel_exprs() -> list[str]:
    """The PromQL of every panel target (data expected from a running recorder)."""
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def dashboard_exprs() -> list[str]:
    """Every PromQL in the dashboard: targets, annotations, and the selectors of the variables' label_values()."""
    out = [n["expr"] for n in _walk(dashboard()) if isinstance(n.get("expr"), str)]
    for var in dashboard()["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
        assert m, f"variable {var['name']}: {var['definition']!r} is not label_values(selector, label)"
        out.append(m[1])
    return out


def promql(expr: str, rate_interval: str = "1m") -> str:
    """A Grafana query as Prometheus gets it: the variables substituted (All selects every value)."""
    return (expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
            .replace("$instance", ".*").replace("$shard", ".*"))


_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`|\[[^\]]*\]'
                    r"|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-zA-Z]*|[a-zA-Z_:][a-zA-Z0-9_:]*|=~|!~|!=|==|>=|<=|\S")
# Aggregations can take their label list first (`sum by (x) (...)`), so they are not followed by `(` either.
_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                       "offset", "inf", "nan", "atan2", "sum", "min", "max", "avg", "group", "stddev", "stdvar",
                       "count", "count_values", "bottomk", "topk", "quantile"})
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, labels it matches on) of every vector selector in a PromQL expression.

    A small tokenizer rather than a full parser: strings, ranges and numbers are tokens of their own, a name
    followed by `(` is a function or an aggregation, and label lists after by/without/on/... are skipped.
    """
    tokens = _TOKEN.findall(expr)
    out: list[tuple[str, set[str]]] = []
    i = 0
    while i < len(tokens):
        t, nxt = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
        if t in _LABEL_LISTS and nxt == "(":
            i = tokens.index(")", i) + 1
        elif t == "{":
            raise AssertionError(f"a selector without a metric name in {expr!r}: name the metric")
        elif _IDENT.fullmatch(t) and t.lower() not in _KEYWORDS and nxt != "(":
            labels: set[str] = set()
            i += 1
            if nxt == "{":
                end = tokens.index("}", i)
                labels = {tokens[j] for j in range(i + 1, end) if tokens[j + 1] in ("=", "!=", "=~", "!~")}
                i = end
            out.append((t, labels))
        i += 1
    return out


def test_the_promql_tokenizer_finds_names_and_matched_labels_only():
    expr = ('sum without (shard) (rate(ime_recorder_messages_total{instance=~"a|b", shard!="1"}[5m] offset 1h)) '
            '/ on (instance) group_left () max by (instance) (ime_recorder_groups) > 1e3 '
            'and ignoring (shard) predict_linear(x_total[1h], 6 * 3600) < bool 2 or label_replace(up, "a", "$1", '
            '"b", "(.*)") unless time() - ime_recorder_start_time_seconds > 0')
    assert selectors(expr) == [("ime_recorder_messages_total", {"instance", "shard"}), ("ime_recorder_groups", set()),
                               ("x_total", set()), ("up", set()), ("ime_recorder_start_time_seconds", set())]


def test_every_rule_says_how_long_how_bad_and_what_to_do():
    seen: set[str] = set()
    for rule in rules():
        name = rule["alert"]
        assert name not in seen, f"{name} twice"
        seen.add(name)
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert len(rule["annotations"]["summary"]) > 10 and len(rule["annotations"]["description"]) > 80, name
        assert selectors(rule["expr"]), f"{name}: no metric in {rule['expr']!r}"
    assert len(seen) >= 20


def test_the_operators_guide_explains_every_alert():
    guide = GUIDE.read_text()
    missing = [r["alert"] for r in rules() if f"| `{r['alert']}` | {r['labels']['severity']} |" not in guide]
    assert not missing, f"{GUIDE.name} has no row for {missing}"


def test_promtool_checks_the_rules():
    out = subprocess.run([require(PROMTOOL, "promtool"), "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_promtool_unit_tests_fire_and_stay_quiet_for_every_alert():
    spec = yaml.safe_load(RULE_TESTS.read_text())
    assert spec["rule_files"] == [os.path.relpath(RULES, RULE_TESTS.parent)]
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in spec["tests"]:
        for case in group["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    alerts = {r["alert"] for r in rules()}
    assert alerts - firing == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a quiet case"
    assert (firing | quiet) - alerts == set(), "cases for alerts that do not exist"
    out = subprocess.run([require(PROMTOOL, "promtool"), "test", "rules", str(RULE_TESTS)], capture_output=True,
                         text=True, timeout=120, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dashboard_is_importable_and_its_queries_parse(tmp_path):
    d = dashboard()
    assert d["schemaVersion"] >= 36 and d["uid"] and d["title"]
    assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in d["panels"]:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
            assert p["targets"] and p.get("description"), p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
    assert {v["name"] for v in d["templating"]["list"]} == {"instance", "shard"}
    # promtool parses every expression (as recording rules): a typo in a panel fails here, not in Grafana.
    exprs = dashboard_exprs()
    check = tmp_path / "dashboard-rules.yml"
    check.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": promql(e)} for i, e in enumerate(exprs)]}]}))
    out = subprocess.run([require(PROMTOOL, "promtool"), "check", "rules", str(check)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# --- against a real recorder --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecorderProcess]:
    """A demo recording with everything on that has a metric: two shards, relay, NATS, disk guard, --on-sealed,
    --stall-alert, and a trading session that never ends (so the session rules are live)."""
    require(NATS_SERVER, "nats-server")
    tmp = tmp_path_factory.mktemp("healthy")
    nats = NatsServer(tmp).start()
    rec = RecorderProcess(tmp, "--demo", "--shards", "2", "--out", str(tmp / "out"), "--metrics-port", "0",
                          "--relay", "127.0.0.1:0", "--publish", nats.url, "--warn-free-gb", "0.001",
                          "--min-free-gb", "0.0005", "--on-sealed", "true", "--stall-alert", "600",
                          "--sessions", "sun-sat 00:00-24:00", "--status-interval", "1").start()
    try:
        url = metrics_url(rec)

        def complete() -> bool:
            s = scrape(url)
            return (s.get("ime_recorder_nats_connected", {}).get(()) == 1 and "ime_recorder_relay_clients" in s
                    and list(s.get("ime_recorder_connections_open", {}).values()) == [1.0, 1.0]
                    and s.get("ime_recorder_disk_free_bytes", {}).get((), -1) >= 0)

        poll(complete, 60, "every series of a healthy recorder in its /metrics")
        rec.url = url  # type: ignore[attr-defined]
        yield rec
    finally:
        rec.kill_tree()
        nats.kill()


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name (as exposed: counters with _total) → label set → value."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def poll(condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what() if callable(what) else what}")
        time.sleep(0.2)


def _labels(samples: dict[tuple[tuple[str, str], ...], float]) -> set[str]:
    return {k for key in samples for k, _ in key}


@pytest.mark.slow
def test_every_metric_the_dashboard_and_the_rules_use_is_exported(healthy):
    exported = scrape(healthy.url)
    used: dict[str, set[str]] = {}
    for where, exprs in (("dashboard", dashboard_exprs()), ("rules", [r["expr"] for r in rules()])):
        for expr in exprs:
            for name, labels in selectors(promql(expr)):
                used.setdefault(name, set()).update(labels)
                if name in PROMETHEUS_OWN:
                    continue
                assert name in exported, f"{where}: {name} (in {expr!r}) is not in the recorder's /metrics"
                unknown = labels - {"instance", "job"} - _labels(exported[name])
                assert not unknown, f"{where}: {name} has no label {unknown} (in {expr!r})"
    # The tokenizer missed nothing that looks like one of ours.
    raw = DASHBOARD.read_text() + RULES.read_text()
    assert set(re.findall(r"\bime_recorder_\w+", raw)) - set(used) == set()
    placed = set(exported) - set(used) - set(UNUSED)
    assert not placed, f"exported but on no panel and in no rule: {sorted(placed)} (add them, or to UNUSED with why)"
    undocumented = {n for n in exported if f"`{n}`" not in GUIDE.read_text()}
    assert not undocumented, f"{GUIDE.name}'s metrics table lacks {sorted(undocumented)}"


@pytest.mark.slow
def test_the_promtool_cases_use_series_shaped_like_the_recorders(healthy):
    exported = scrape(healthy.url)
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for series in group["input_series"]:
            m = re.fullmatch(r"(\w+)\{(.*)\}", series["series"])
            assert m, series
            name, labels = m[1], set(re.findall(r'(\w+)="', m[2]))
            assert {"instance", "job"} <= labels, f"{group['name']}: {series['series']} lacks the scrape's labels"
            if name in PROMETHEUS_OWN:
                continue
            assert name in exported, f"{group['name']}: {name} is not in the recorder's /metrics"
            assert labels - {"instance", "job"} == _labels(exported[name]), f"{group['name']}: {series['series']}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_real_prometheus_answers_every_panel_and_alerts_on_what_it_should(healthy, tmp_path):
    """Every panel query returns data from real recorders, and the rules raise exactly what they should for a
    healthy recorder (nothing), one cut off from its feed, and one that is gone."""
    prometheus = require(PROMETHEUS, "prometheus")
    # A recorder cut off from its feed: nothing listens where its base URL points, so it keeps reconnecting.
    cut = RecorderProcess(tmp_path, "--ids", "101,102", "--base-url", f"ws://127.0.0.1:{free_port()}", "--out",
                          str(tmp_path / "cut"), "--metrics-port", "0", "--stall-alert", "600", "--sessions",
                          "sun-sat 00:00-24:00", env={"IME_TOKEN": "not-a-jwt"}).start()
    prom: subprocess.Popen[bytes] | None = None
    try:
        targets = {name: urlsplit(url).netloc for name, url in (("healthy", healthy.url), ("cut", metrics_url(cut)))}
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "ime-record", "static_configs": [{"targets": list(targets.values())}]}],
        }))
        port = free_port()
        with open(tmp_path / "prometheus.log", "wb") as log:
            prom = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                     f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"

        def api(path: str, **params: str) -> Any:
            with urllib.request.urlopen(f"{base}/api/v1/{path}?{urlencode(params)}", timeout=10) as r:
                body = json.loads(r.read())
            assert body["status"] == "success", body
            return body["data"]

        def query(expr: str) -> list[dict[str, Any]]:
            return api("query", query=expr)["result"]

        def ready() -> bool:
            assert prom is not None and prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                got = query("count_over_time(ime_recorder_ready[1m])")
            except OSError:
                return False
            return len(got) == 2 and all(float(r["value"][1]) >= 8 for r in got)

        poll(ready, 90, "Prometheus has scraped both recorders several times")

        # Every panel has data (all variables at All); annotations and variables at least evaluate.
        for expr in panel_exprs():
            assert query(promql(expr, "10s")), f"no data for panel query {expr!r}"
        for ann in dashboard()["annotations"]["list"]:
            if "expr" in ann:
                query(promql(ann["expr"], "10s"))
        instances = {r["metric"]["instance"] for r in query("ime_recorder_ready")}
        assert instances == set(targets.values())
        shards = query(f'ime_recorder_up{{instance="{targets["healthy"]}"}}')
        assert {r["metric"]["shard"] for r in shards} == {"0", "1"}

        # The rules evaluate without error; the healthy recorder raises nothing, the cut-off one what an operator
        # must hear (pending: every rule waits its `for:` before firing).
        expected = {"IMERecorderNoDataInSession", "IMERecorderShardSilentInSession", "IMERecorderShardNotConnected"}
        state: dict[str, Any] = {}

        def alerts_settled() -> bool:
            rule_states = [r for g in api("rules")["groups"] for r in g["rules"]]
            state["errors"] = [(r["name"], r.get("lastError")) for r in rule_states if r["health"] == "err"]
            assert not state["errors"], state["errors"]
            if any(r["health"] != "ok" for r in rule_states):
                return False
            active = api("alerts")["alerts"]
            state["healthy"] = {a["labels"]["alertname"] for a in active
                                if a["labels"].get("instance") == targets["healthy"]}
            state["cut"] = {a["labels"]["alertname"] for a in active if a["labels"].get("instance") == targets["cut"]}
            return not state["healthy"] and state["cut"] == expected

        poll(alerts_settled, 90, lambda: f"the cut-off recorder's alerts pending, none for the healthy one: {state}")

        # A recorder that is gone can only be seen by Prometheus's own `up`.
        cut.kill_tree()

        def down() -> bool:
            active = api("alerts")["alerts"]
            state["cut"] = {a["labels"]["alertname"] for a in active if a["labels"].get("instance") == targets["cut"]}
            return "IMERecorderDown" in state["cut"]

        poll(down, 60, lambda: f"IMERecorderDown pending for the killed recorder: {state}")
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(30)
        cut.kill_tree()
