# make run   -- set up a virtualenv (runtime only) and run one node on the embedded default
#               (SQLite), with etc/hpchat.ini or `make run CONFIG=path/to.ini`
# make test  -- add the test tools, set up what the tests need (etcd, nsqd), run the suite
# make bench -- a small benchmark in under 2 minutes: one node, nginx + Nchan side by side
#               (skipped without libnginx-mod-nchan), 2-node notification latency (etcd, nsqd)
# make cluster -- etcd, nsqd and two nodes with dev login, to try the chat page
# make dist  -- an sdist and a wheel in dist/ (install the wheel with pip: docs/deployment.md)
# make lint  -- the type checker and the linter (the suite runs both too: tests/test_lint.py)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= etc/hpchat.ini

# Ctrl-C on `make run` and `make cluster` reaches the node (or the cluster script) alone and
# ends cleanly with status 0, instead of make reporting "Interrupt" (tools/foreground.py).
FOREGROUND := $(PYTHON) tools/foreground.py

.PHONY: run test test-deps lint bench cluster dist clean

# The runtime: what `make run` needs (hpchat, Twisted, treq, klein, PyJWT, prometheus_client).
$(VENV)/.runtime: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# The test extra on top: hypothesis, the FoundationDB binding, Playwright, build.
$(VENV)/.test: $(VENV)/.runtime
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.runtime
	@$(FOREGROUND) $(BIN)/twistd -n --pidfile= hpchat --config $(CONFIG)

# a local cluster to try the chat page with: etcd, nsqd and two nodes (Ctrl-C stops it)
cluster: $(VENV)/.runtime test-deps
	@$(FOREGROUND) tools/dev-cluster.sh 2

test-deps:
	tools/install-test-deps.sh

test: $(VENV)/.test test-deps
	$(BIN)/python -m twisted.trial -j 2 tests

# Both tools run before either fails, so that one run lists every finding.
lint: $(VENV)/.test
	@status=0; \
	$(BIN)/mypy hpchat || status=1; \
	$(BIN)/ruff check hpchat tests bench || status=1; \
	exit $$status

# `build` alone (it is in the test extra too): no need for the rest of the test tools.
$(VENV)/.build-tool: $(VENV)/.runtime
	$(BIN)/pip install -q 'build>=1.0'
	touch $@

dist: $(VENV)/.build-tool
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	@ls -1 dist

# The interpreter with hpchat, twistd and PyJWT installed; `make bench BENCH_PY=...` for
# another one (the virtualenv's is set up when it is used).
BENCH_PY  ?= $(BIN)/python
BENCH_OUT ?= .build/bench.jsonl
BENCH_DEPS := $(if $(filter $(BIN)/python,$(BENCH_PY)),$(VENV)/.runtime)

bench: $(BENCH_DEPS) test-deps
	@mkdir -p $(dir $(BENCH_OUT))
	@echo "== hpchat, one node: C=1000 R=300/s for 15 s"
	$(BENCH_PY) bench/lg_node.py -- -c 1000 -r 300 --duration 15 --warmup 3 -q --json-out $(BENCH_OUT) > /dev/null
	@if [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then \
	  echo "== nginx + Nchan, one worker: C=1000 R=300/s for 15 s"; \
	  $(BENCH_PY) bench/lg_nchan.py -- -c 1000 -r 300 --duration 15 --warmup 3 -q --json-out $(BENCH_OUT) > /dev/null; \
	else echo "== Nchan skipped (apt-get install -y nginx-light libnginx-mod-nchan)"; fi
	@echo "== 2-node cluster (etcd, nsqd): notification latency"
	$(BENCH_PY) bench/notify_latency.py --rate 300 --duration 5 --users 100
	@echo "== JSON results appended to $(BENCH_OUT)"

clean:
	rm -rf $(VENV) .build _trial_temp* var dist build
