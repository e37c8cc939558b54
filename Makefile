# The two commands of README.md. Both create .venv with the pinned stack on first use.
PY := .venv/bin/python
DATA ?= data/synthetic_ctr

.PHONY: setup run data test test-all bench clean

setup:
	@bash scripts/setup.sh

# Main job on the built-in default: generate the synthetic Criteo-like set (once; it is seeded,
# `make data` regenerates it), then train DLRM with full tables on it and print AUC vs the oracle.
CONFIG ?= configs/ctr_synthetic_full.yaml

run: setup
	@test -f $(DATA)/manifest.json || $(PY) -m jobs.cli synth ctr --out $(DATA)
	$(PY) -m jobs.cli train $(CONFIG) data.path=$(DATA)

data: setup
	$(PY) -m jobs.cli synth ctr --out $(DATA) --overwrite

# Default test run (unit + integration, < 10 minutes on 2 cores); slow and gpu tests are opt-in.
test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "not gpu"

clean:
	rm -rf .venv data runs .pytest_cache .hypothesis
