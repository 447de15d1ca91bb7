# Two entry points: `make demo` runs the whole loop on the embedded default; `make test` runs the suite.
# Each bootstraps .venv (torch pinned to the CPU build) and is idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

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
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
