# The README's two commands. Each sets everything up first (idempotent) and then runs.
.PHONY: setup quickstart test lint

setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/python -m metaclinic.fit --config configs/quickstart.yaml

test: setup
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check metaclinic tests scripts benchmarks && .venv/bin/ruff format --check metaclinic tests scripts benchmarks
