"""tools/bench_report.py renders pytest-benchmark JSON; the live status console redraws in place."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from recorder.histogram import Histogram
from recorder.record.status import Console

ROOT = Path(__file__).resolve().parents[1]


def bench_json(path: Path) -> Path:
    def entry(key, **info):
        return {"name": key, "extra_info": {"key": key, **info}}

    cdf = [(50.0, 0.1), (80.0, 0.5), (150.0, 0.99), (400.0, 1.0)]
    lat = {"count": 100, "mean": 90.0, "p50": 80.0, "p90": 120.0, "p99": 150.0, "p99.9": 300.0, "max": 400.0}
    data = {
        "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}, "python_version": "3.11.7"},
        "benchmarks": [
            entry("throughput/ceiling", msgs_per_s=600_000),
            entry("throughput/seed", msgs_per_s=30_000),
            entry("throughput/recorder", msgs_per_s=540_000, lost=0, compression_ratio=24.0,
                  worker_peak_rss_mib=41.0),
            entry("throughput/recorder x2", msgs_per_s=500_000),
            entry("latency/ceiling/20000", latency_us=lat, latency_cdf_us=cdf),
            entry("latency/recorder/20000", latency_us=lat, latency_cdf_us=cdf),
            entry("ratios", ratios={"throughput_vs_ceiling": 0.9}, floors={"throughput_vs_ceiling": 0.5}),
        ],
    }
    path.write_text(json.dumps(data))
    return path


def test_bench_report_writes_markdown_and_plots(tmp_path):
    src = bench_json(tmp_path / "b.json")
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_report.py"), str(src), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = (out / "REPORT.md").read_text()
    assert "| recorder | 540,000 | 0.90× |" in text
    assert "| 2 | 500,000 |" in text
    assert "| ceiling | 80 | 120 | 150 | 300 | 400 |" in text
    assert "| throughput_vs_ceiling | 0.900 | ≥ 0.5 |" in text
    for png in ("latency_cdf.png", "throughput_shards.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_report_missing_input_is_one_line_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_report.py"), str(tmp_path / "nope.json")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no such file" in done.stderr


def test_console_redraws_the_table_in_place_and_logs_above_it():
    stream = io.StringIO()
    console = Console(stream, live=True)
    console.draw(["a", "b"])
    console.log("hello")
    console.draw(["c", "d"])
    console.close()
    text = stream.getvalue()
    # Before the log line and before the redraw, the two table lines are erased (cursor up 2, clear below).
    assert text == "a\nb\n\x1b[2F\x1b[Jhello\nc\nd\n\x1b[2F\x1b[J"


def test_console_without_a_terminal_writes_only_log_lines():
    stream = io.StringIO()
    console = Console(stream, live=False)
    console.draw(["table"])
    console.log("line")
    assert stream.getvalue() == "line\n"


def test_histogram_percentiles_are_within_one_percent():
    h = Histogram(range(1, 1_000_001))
    for p in (50, 90, 99, 99.9):
        exact = p / 100 * 1_000_000
        assert abs(h.percentile(p) - exact) / exact < 0.01
    assert h.max == 1_000_000 and h.min == 1 and h.count == 1_000_000
    other = Histogram([5_000_000])
    h.merge(other)
    assert h.max == 5_000_000 and h.count == 1_000_001


def _run_complexity(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "complexity.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_complexity_reports_a_branchy_function_and_a_long_class(tmp_path):
    # 15 ifs: cyclomatic complexity 16, one over the limit.
    branchy = "def branchy(x):\n" + "".join(f"    if x == {i}:\n        return {i}\n" for i in range(15)) + \
        "    return -1\n"
    # The class line, a docstring and 249 methods' single lines: 251 lines.
    long_class = "class Long:\n    '''doc'''\n" + "".join(f"    def m{i}(self): return {i}\n" for i in range(249))
    (tmp_path / "bad.py").write_text(branchy + "\n\n" + long_class)
    done = _run_complexity(str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith("bad.py:1 branchy: cyclomatic complexity 16 > 15")
    assert lines[1].endswith("bad.py:35 Long: class lines 251 > 250")


def test_complexity_passes_code_at_the_limits(tmp_path):
    at_limit = "def fine(x):\n" + "".join(f"    if x == {i}:\n        return {i}\n" for i in range(14)) + \
        "    return -1\n"
    long_class = "class Long:\n" + "".join(f"    def m{i}(self): return {i}\n" for i in range(249))
    (tmp_path / "good.py").write_text(at_limit + "\n\n" + long_class)
    done = _run_complexity(str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("complexity OK: 1 files")


def test_complexity_unreadable_input_is_one_line_exit_2(tmp_path):
    (tmp_path / "broken.py").write_text("def (:\n")
    for target in (tmp_path / "nope", tmp_path / "broken.py"):
        done = _run_complexity(str(target))
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr


def test_xdist_loadgroup_keeps_a_group_on_one_worker(tmp_path):
    """make test's `--dist loadgroup` must keep each xdist_group on one worker: the invariant matrix, the report's
    and the guide's tests record once per group. pytest 9.2 broke this silently (pytest-xdist#1386): every
    recording was then made twice and the suite ran a minute and a half longer."""
    (tmp_path / "test_grouped.py").write_text(
        "import os, pathlib, pytest\n"
        "def grouped(name):\n"
        "    return pytest.param(name, marks=pytest.mark.xdist_group(f'g-{name}'))\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "@pytest.mark.parametrize('name', [grouped('a'), grouped('b')])\n"
        "def test_where(name, i):\n"
        "    (pathlib.Path(os.environ['WHERE']) / f'{name}-{i}').write_text(os.environ['PYTEST_XDIST_WORKER'])\n")
    where = tmp_path / "where"
    where.mkdir()
    got = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:randomly",
                          "-p", "no:cacheprovider", "test_grouped.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "WHERE": str(where)})
    assert got.returncode == 0, got.stdout + got.stderr
    workers = {name: {(where / f"{name}-{i}").read_text() for i in range(6)} for name in "ab"}
    assert all(len(ran_on) == 1 for ran_on in workers.values()), workers
