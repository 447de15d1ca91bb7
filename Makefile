# Two entry points: `make demo` runs the whole loop on the embedded default; `make test` runs the suite.
# Each bootstraps .venv (torch pinned to the CPU build) and is idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhfkit demo

test: $(STAMP)
	bash scripts/test-setup.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# rlhfkit against TRL (pinned, in its own bench/.venv-trl): tables into BENCHMARKS.md. Not part of `make test`.
# Flags through BENCH_ARGS, e.g. `make bench BENCH_ARGS="--repeats 1 --tasks sft,dpo"`.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs
