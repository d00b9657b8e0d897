# The two commands README.md gives, and the benchmark suite. Each target sets up .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench bench-quick report clean nats-server promtool chromium

# setup.py builds the C kernels (recorder/export/_scan.c and recorder/segment/_block.c; IME_NATIVE=0 runs their
# Python twins, recorder/native.py) during the editable install: a change to one reinstalls, so the module
# imported is never older than its source.
$(BIN)/ime-record: pyproject.toml setup.py recorder/export/_scan.c recorder/segment/_block.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Main job: record the built-in IME simulator for 20 s with 2 shards, then list and verify what was written.
demo: $(BIN)/ime-record
	$(BIN)/ime-record --demo --shards 2 --duration 20 --out demo-data
	$(BIN)/ime-segments ls demo-data
	$(BIN)/ime-segments verify -q demo-data && echo "all segments verified"

# The API document's JavaScript example runs against the replay server when node and npm are present.
$(VENV)/node/node_modules/ws:
	-command -v npm >/dev/null && npm install --silent --no-audit --no-fund --prefix $(VENV)/node ws@8

# The NATS tests need a real nats-server (Debian package); installed when missing and we are root,
# otherwise those tests skip and say why.
nats-server:
	@command -v nats-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq nats-server >/dev/null) || \
		echo "nats-server not installed (not root or no apt-get): the NATS tests will be skipped"; }

# The monitoring tests need promtool and prometheus (Debian's prometheus package has both; without recommends,
# so no node exporter comes along). On a machine running systemd the package also enables and starts a
# Prometheus service on port 9090. Installed when missing and we are root, otherwise those tests are skipped.
promtool:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null) || \
		echo "promtool not installed (not root or no apt-get): the monitoring tests will be skipped"; }

# `ime-segments report`'s test renders the page in headless Chromium (Debian's package), installed the same way;
# without it that test skips and says why (and fails under CI=true: .ci/run requires it).
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium not installed (not root or no apt-get): the report's rendering test will be skipped"; }

test: $(BIN)/ime-record $(VENV)/node/node_modules/ws nats-server promtool chromium
	NODE_PATH=$(CURDIR)/$(VENV)/node/node_modules $(BIN)/pytest -n 2 --dist loadgroup

# Besides ruff: no function in recorder/ over cyclomatic complexity 15, no class over 250 lines (radon), and the
# user guide (docs/, mkdocs.yml) builds without a warning: a broken link or anchor fails lint.
lint: $(BIN)/ime-record
	$(BIN)/ruff check recorder tests benchmarks tools
	$(BIN)/python tools/complexity.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(CURDIR)/site

bench: $(BIN)/ime-record
	$(BIN)/pytest benchmarks --benchmark-json=benchmarks/results/latest.json
	$(BIN)/python tools/bench_report.py benchmarks/results/latest.json

bench-quick: $(BIN)/ime-record
	IME_BENCH_QUICK=1 $(BIN)/pytest benchmarks --benchmark-json=benchmarks/results/quick.json
	$(BIN)/python tools/bench_report.py benchmarks/results/quick.json --out benchmarks/results/quick

clean:
	rm -rf $(VENV) demo-data site .pytest_cache .benchmarks build recorder/export/_scan*.so recorder/segment/_dedupe*.so recorder/segment/_block*.so recorder/live/_fanout*.so
