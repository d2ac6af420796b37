# make run   -- set up a virtualenv and run one node on the embedded default (SQLite)
# make test  -- set up everything the tests need (etcd, nsqd) and run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test test-deps bench clean

$(BIN)/twistd: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(BIN)/twistd
	$(BIN)/twistd -n --pidfile= hpchat --config etc/hpchat.ini

test-deps:
	tools/install-test-deps.sh

test: $(BIN)/twistd test-deps
	$(BIN)/python -m twisted.trial -j 2 tests

clean:
	rm -rf $(VENV) .build _trial_temp* var
