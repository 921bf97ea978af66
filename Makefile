# rnncast developer entry points. Recipes stay short: the logic lives in scripts/.
#   make test   bootstrap .venv + system packages + Apache Kafka's jars, then the whole test suite
#   make kafka  fetch the pinned Apache Kafka broker's jars with Maven (cached; a no-op when present)
#   make run    the demo (see below)
#   make lint   ruff (lint + format check, ruff.toml), mypy --strict on the core (mypy.ini), bash -n on the scripts; CI runs it
#   make flink  fetch (pinned, cached) Beam's Flink job server, a Flink 1.19 distribution and Beam's boot
#   make clean  remove caches and build leftovers (make distclean also removes .venv)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PY := .venv/bin/python
DATA := data/elecdemand.csv
ARTIFACT := artifacts/default

.PHONY: venv sysdeps kafka flink test run bench compare accuracy lint clean distclean

venv:
	@bash scripts/bootstrap.sh

sysdeps:
	@bash scripts/install_system_deps.sh

# The Flink cluster of tests/test_flink.py (about 400 MB in ~/.cache/rnncast, a few minutes once).
flink: venv
	@bash scripts/fetch_flink.sh

kafka: sysdeps
	@bash scripts/fetch_kafka.sh

test: venv sysdeps kafka flink
	$(PY) -m pytest

# The streaming demo: train the default model once (about a minute), print its offline evaluation,
# then broker + streaming job + steady replay, shown live. Ctrl-C stops everything it started.
run: venv
	@test -f $(ARTIFACT)/manifest.json || .venv/bin/rnncast train --data $(DATA) --out $(ARTIFACT)
	.venv/bin/rnncast evaluate --artifact $(ARTIFACT) --data $(DATA)
	.venv/bin/rnncast demo --artifact $(ARTIFACT) --data $(DATA)

# Throughput/latency/memory of the job against the bare Kafka pipe and the naive Keras peers (JSON in benchmarks/results/).
bench: venv
	$(PY) -m benchmarks.run

# Train and score every recurrent variant on the bundled data (table in benchmarks/results/compare.md).
compare: venv
	$(PY) scripts/compare_variants.py

# rnncast against statsforecast's MSTL/AutoETS/Holt-Winters on the test sets of data/ (3 seeds each;
# tens of minutes on 2 cores). Table in benchmarks/results/accuracy.md and the README.
accuracy: venv
	$(PY) -m benchmarks.accuracy

lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	bash -n scripts/*.sh .ci/run deploy/launch.sh

clean:
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .hypothesis build *.egg-info

distclean: clean
	rm -rf .venv
