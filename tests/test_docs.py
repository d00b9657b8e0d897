"""Every shell and Python example in README.md and docs/ runs, and shows the output it says it shows.

The convention (docs/contributing.md, "Examples in the documentation"):
- ```console blocks: each `$ ` line is a command (a line ending in `\\` continues it), run with bash in the
  page's working directory; the lines after it, up to the next `$ `, are its expected output (stdout and stderr
  together), compared like doctest with ELLIPSIS and NORMALIZE_WHITESPACE: `...` stands for any text (times,
  counts), runs of spaces compare equal. A command without output lines has its output unchecked. Every command
  must exit 0 (show a failure with `; echo "exit $?"`).
- ```python blocks run in one namespace per page: a block starting with `>>>` is a doctest (ELLIPSIS), any
  other block is executed. ```sql blocks run with DuckDB.
- `<!-- not-run: REASON -->` just before a block skips it; every skip is listed in NOT_RUN below, so skipping
  cannot grow silently. `<!-- run-with: "A" => "B", ... -->` runs the block with A replaced by B (a shorter
  --duration, a time inside the recording: `{utc+N}` is the recording's first second + N s as ISO-8601 UTC,
  `{tehran+N}` the same as HH:MM:SS in Asia/Tehran).
- ```sh, ```bash and ```shell blocks are refused: a shell example is runnable (console) or says why not.

Each page runs in a fresh directory holding `demo-data/`, recorded once per session the way `make demo` records
(`ime-record --demo --shards 2 --duration N --out demo-data`), with the tools on PATH running this checkout.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import recorder

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DEMO_SECONDS = 5  # 3 s was enough on a quiet machine; a loaded one may take seconds to connect both shards
COMMAND_TIMEOUT = 120
# The console scripts (pyproject.toml's [project.scripts]) as `python -m` modules, as the other tests run them:
# this checkout's code whichever one the environment has installed.
TOOLS = {name: target.split(":")[0] for name, target
         in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"].items()}
CHECK = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
REFUSED = {"sh", "bash", "shell", "zsh"}

# Every example that does not run, by page and reason. Adding one here is a decision, seen in review.
NOT_RUN = sorted([
    ("README.md", "builds .venv and runs the whole suite; this test records the way make demo does"),
    ("README.md", "needs IME credentials"),
    ("docs/contributing.md", "runs the whole suite or the benchmarks (minutes)"),
    ("docs/live.md", "needs IME credentials"),
    ("docs/live.md", "needs IME credentials and a NATS JetStream server"),
    ("docs/operations-monitoring.md", "installs into a Prometheus server's configuration (root)"),
    ("docs/operations-monitoring.md",
     "run from the repository with promtool installed; tests/test_monitoring.py runs the same checks"),
    ("docs/operations-monitoring.md", "writes into a Grafana server's provisioning directory"),
    ("docs/operations.md", "installs a system service (root, systemd)"),
    ("docs/performance.md", "runs the benchmarks (3-10 minutes)"),
    ("docs/recording.md", "needs IME credentials"),
    ("docs/recording.md", "needs IME credentials"),
    ("docs/recording.md", "needs recordings from two hosts"),
    ("docs/replay.md", "serves until stopped (Ctrl-C)"),
    ("docs/simulator.md", "needs a running ime-sim's token endpoint port"),
])


@dataclass
class Block:
    page: str
    line: int
    lang: str
    text: str
    not_run: str | None = None
    subs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
NOT_RUN_MARK = re.compile(r"^\s*<!--\s*not-run:\s*(.*?)\s*-->\s*$")
RUN_WITH_MARK = re.compile(r"^\s*<!--\s*run-with:\s*(.*?)\s*-->\s*$")
PAIR = re.compile(r'"([^"]*)"\s*=>\s*"([^"]*)"')


def blocks(path: Path, name: str | None = None) -> list[Block]:
    """The fenced blocks of a page, with the mark (if any) on the last non-blank line before each."""
    name = name or str(path.relative_to(ROOT))
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    previous = ""
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            if lines[i].strip():
                previous = lines[i]
            i += 1
            continue
        indent, lang = opening.group(1), opening.group(2)
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        block = Block(name, start + 1, lang, "\n".join(body) + "\n")
        if m := NOT_RUN_MARK.match(previous):
            block.not_run = m.group(1)
        elif m := RUN_WITH_MARK.match(previous):
            block.subs = PAIR.findall(m.group(1))
            if not block.subs:
                raise AssertionError(f"{block.where}: run-with mark without \"A\" => \"B\" pairs: {previous}")
        found.append(block)
        previous = ""
        i += 1
    return found


def commands(text: str) -> Iterator[tuple[str, str | None]]:
    """(command, expected output or None) for each `$ ` line of a console block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise AssertionError(f"console block: output before any `$ ` command: {lines[i]!r}")
        command = lines[i][2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command + "\n" + lines[i]
        i += 1
        output: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        yield command, ("\n".join(output) + "\n") if output else None


@dataclass
class Times:
    first_s: int  # the recording's first receive time, whole seconds since the epoch

    def expand(self, text: str) -> str:
        def utc(m: re.Match[str]) -> str:
            when = datetime.fromtimestamp(self.first_s + int(m.group(2)), UTC)
            if m.group(1) == "utc":
                return when.strftime("%Y-%m-%dT%H:%M:%SZ")
            return when.astimezone(ZoneInfo("Asia/Tehran")).strftime("%H:%M:%S")
        return re.sub(r"\{(utc|tehran)\+(\d+)\}", utc, text)


@dataclass
class Runner:
    """Runs a page's blocks in one working directory and one Python namespace; collects failures."""

    work: Path
    env: dict[str, str] = field(repr=False)
    times: Times = field(repr=False)
    failures: list[str] = field(default_factory=list)
    ran: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    namespace: dict[str, object] = field(default_factory=dict, repr=False)

    def run(self, block: Block) -> None:
        if block.lang in REFUSED:
            self.failures.append(f"{block.where}: a ```{block.lang} block; write it as ```console with `$ ` "
                                 "prompts, or mark it <!-- not-run: REASON -->")
            return
        if block.lang not in ("console", "python", "sql"):
            return
        if block.not_run is not None:
            self.skipped.append((block.page, block.not_run))
            return
        text = block.text
        for old, new in block.subs:
            if old not in text:
                self.failures.append(f"{block.where}: run-with: {old!r} is not in the block")
            text = text.replace(old, self.times.expand(new))
        self.ran += 1
        with contextlib.chdir(self.work), self._tools_on_path():
            getattr(self, f"_{block.lang}")(block, text)

    @contextlib.contextmanager
    def _tools_on_path(self) -> Iterator[None]:
        """Python examples that run a command find the same tools as the console examples."""
        saved = {k: os.environ.get(k) for k in ("PATH", "PYTHONPATH")}
        os.environ.update({k: self.env[k] for k in saved})
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _console(self, block: Block, text: str) -> None:
        for command, expected in commands(text):
            try:
                done = subprocess.run(["bash", "-c", "set -o pipefail\n" + command], env=self.env, cwd=self.work,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
            except subprocess.TimeoutExpired:
                self.failures.append(f"{block.where}: `{command}` did not finish in {COMMAND_TIMEOUT} s")
                return
            if done.returncode != 0:
                self.failures.append(f"{block.where}: `{command}` exited {done.returncode}:\n{done.stdout[-2000:]}")
                return
            if expected is not None and not doctest.OutputChecker().check_output(expected, done.stdout, CHECK):
                self.failures.append(f"{block.where}: `{command}` printed\n{done.stdout[-3000:]}"
                                     f"where the page shows\n{expected}")
                return

    def _python(self, block: Block, text: str) -> None:
        if text.lstrip().startswith(">>>"):
            test = doctest.DocTestParser().get_doctest(text, self.namespace, block.where, block.page,
                                                       block.line)
            out = io.StringIO()
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
            runner.run(test, out=out.write, clear_globs=False)
            self.namespace.update(test.globs)  # DocTest works on a copy; later blocks see what this one defined
            if runner.failures:
                self.failures.append(f"{block.where}: doctest failed\n{out.getvalue()[-3000:]}")
            return
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(text, block.where, "exec"), self.namespace)
        except Exception as e:
            self.failures.append(f"{block.where}: {type(e).__name__}: {e}")

    def _sql(self, block: Block, text: str) -> None:
        duckdb = pytest.importorskip("duckdb")
        try:
            duckdb.sql(text).fetchall()
        except Exception as e:
            self.failures.append(f"{block.where}: {type(e).__name__}: {e}")


pytestmark = pytest.mark.xdist_group("docs")


def tool_env(bindir: Path) -> dict[str, str]:
    """The tools as `ime-…` commands on PATH, each running this checkout's code with this interpreter."""
    bindir.mkdir(exist_ok=True)
    for tool, module in TOOLS.items():
        shim = bindir / tool
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IME_", "PYTEST_"))}
    env["PATH"] = f"{bindir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["TZ"] = "UTC"
    return env


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Times]:
    """A recording made as `make demo` makes it, only shorter."""
    base = tmp_path_factory.mktemp("docs-demo")
    env = tool_env(base / "bin")
    done = subprocess.run(["ime-record", "--demo", "--shards", "2", "--duration", str(DEMO_SECONDS),
                           "--out", "demo-data", "-q"], cwd=base, env=env, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    first = min(m.recv_ns for m in recorder.open_recording(base / "demo-data").messages())
    return base / "demo-data", env, Times(first // 10**9)


def run_page(path: Path, demo: tuple[Path, dict[str, str], Times], work: Path, name: str | None = None) -> Runner:
    recording, env, times = demo
    shutil.copytree(recording, work / "demo-data")
    runner = Runner(work, env, times)
    cwd = os.getcwd()
    try:
        for block in blocks(path, name):
            runner.run(block)
    finally:
        os.chdir(cwd)
    return runner


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_examples_run(page: Path, demo: tuple[Path, dict[str, str], Times], tmp_path: Path) -> None:
    runner = run_page(page, demo, tmp_path)
    print(f"{page.relative_to(ROOT)}: ran {runner.ran} examples, skipped {len(runner.skipped)}")
    assert not runner.failures, "\n\n".join(runner.failures)


def test_every_console_scripts_module_runs_as_the_examples_run_it() -> None:
    """The shims run `python -m MODULE`: each console script's module must run as a program, not only be imported."""
    assert set(TOOLS) == {"ime-record", "ime-replay", "ime-segments", "ime-sim"}
    for tool, module in TOOLS.items():
        got = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60,
                             cwd=ROOT)
        assert got.returncode == 0 and f"Usage: {tool}" in got.stdout, (tool, got.stderr)


def test_skipped_examples_are_the_listed_ones() -> None:
    skipped = sorted((b.page, b.not_run) for page in PAGES for b in blocks(page) if b.not_run is not None)
    runnable = [b for page in PAGES for b in blocks(page) if b.not_run is None and b.lang in ("console", "python",
                                                                                              "sql")]
    print(f"{len(runnable)} examples run, {len(skipped)} not run:")
    for page, reason in skipped:
        print(f"  {page}: {reason}")
    assert skipped == NOT_RUN
    assert len(runnable) > len(skipped)


BROKEN = '''# A page with wrong examples

```console
$ echo one two
one three
$ echo fine
```

```console
$ ime-segments ls no-such-directory
```

```python
>>> 1 + 1
3
```

```python
raise RuntimeError("an example that raises")
```

```sh
echo unmarked
```

<!-- not-run: needs nothing, counted -->
```console
$ false
```

<!-- run-with: "--never-there" => "x" -->
```console
$ echo ok
```
'''


def test_a_wrong_example_fails(demo: tuple[Path, dict[str, str], Times], tmp_path: Path) -> None:
    """The runner is able to fail: each kind of wrong example is reported, the not-run one is counted."""
    page = tmp_path / "broken.md"
    page.write_text(BROKEN)
    (tmp_path / "work").mkdir()
    runner = run_page(page, demo, tmp_path / "work", "broken.md")
    text = "\n".join(runner.failures)
    assert len(runner.failures) == 6, text
    assert "broken.md:3: `echo one two` printed\none two" in text
    assert "broken.md:9: `ime-segments ls no-such-directory` exited 2" in text
    assert "broken.md:13: doctest failed" in text
    assert "broken.md:18: RuntimeError: an example that raises" in text
    assert "broken.md:22: a ```sh block" in text
    assert "'--never-there' is not in the block" in text
    assert runner.skipped == [("broken.md", "needs nothing, counted")]


def test_ellipsis_and_spacing_in_expected_output(demo: tuple[Path, dict[str, str], Times], tmp_path: Path) -> None:
    page = tmp_path / "ok.md"
    page.write_text('```console\n$ printf "a   b 12:34:56\\nlast\\n"\na b ...\nlast\n'
                    '$ echo "one \\\n  continued"\none continued\n```\n'
                    '<!-- run-with: "DAY" => "{utc+0}" -->\n```console\n$ echo DAY\n...T...Z\n```\n')
    (tmp_path / "work").mkdir()
    runner = run_page(page, demo, tmp_path / "work", "ok.md")
    assert runner.failures == []
    assert runner.ran == 2
