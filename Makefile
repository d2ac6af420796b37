# make run   -- set up a virtualenv and run one node on the embedded default (SQLite)
# make test  -- set up everything the tests need (etcd, nsqd) and run the whole suite
# make bench -- a small benchmark in under 2 minutes: one node, nginx + Nchan side by side
#               (skipped without libnginx-mod-nchan), 2-node notification latency (etcd, nsqd)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test test-deps bench cluster clean

$(BIN)/twistd: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(BIN)/twistd
	$(BIN)/twistd -n --pidfile= hpchat --config etc/hpchat.ini

# a local cluster to try the chat page with: etcd, nsqd and two nodes (Ctrl-C stops it)
cluster: $(BIN)/twistd test-deps
	tools/dev-cluster.sh 2

test-deps:
	tools/install-test-deps.sh

test: $(BIN)/twistd test-deps
	$(BIN)/python -m twisted.trial -j 2 tests

# The interpreter with hpchat, twistd, PyJWT (and uvloop) installed; `make bench BENCH_PY=...`.
BENCH_PY  ?= $(PYTHON)
BENCH_OUT ?= .build/bench.jsonl

bench:
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
	rm -rf $(VENV) .build _trial_temp* var
