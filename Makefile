# The two commands of the README. Both set everything up first (scripts/setup.sh is idempotent).
.PHONY: setup demo test bench

PY := .venv/bin/python

setup:
	bash scripts/setup.sh

demo:
	bash scripts/setup.sh --data
	.venv/bin/patchgan-fast demo

test:
	bash scripts/setup.sh
	.venv/bin/lint-imports --config .importlinter   # the layers: each imports only from those below it
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q benchmarks --benchmark-disable

bench:
	bash scripts/setup.sh
	$(PY) -m pytest benchmarks --benchmark-only
