# rnncast developer entry points. Recipes stay short: the logic lives in scripts/.
#   make test   bootstrap .venv + system packages, then the whole test suite
#   make run    the demo (see below)
#   make lint   syntax/compile check of the Python sources
#   make clean  remove caches and build leftovers (make distclean also removes .venv)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PY := .venv/bin/python
DATA := data/elecdemand.csv
ARTIFACT := artifacts/default

.PHONY: venv sysdeps test run lint clean distclean

venv:
	@bash scripts/bootstrap.sh

sysdeps:
	@bash scripts/install_system_deps.sh

test: venv sysdeps
	$(PY) -m pytest

# For now `make run` trains the default model (once) and evaluates it on the CSV.
# It will become the streaming demo: broker + replay + serve, with Prometheus metrics.
run: venv
	@test -f $(ARTIFACT)/manifest.json || .venv/bin/rnncast train --data $(DATA) --out $(ARTIFACT)
	.venv/bin/rnncast evaluate --artifact $(ARTIFACT) --data $(DATA)

lint: venv
	$(PY) -m compileall -q models pipeline tests >/dev/null
	bash -n scripts/*.sh .ci/run

clean:
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .hypothesis build *.egg-info

distclean: clean
	rm -rf .venv
