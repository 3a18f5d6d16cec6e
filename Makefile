# rtdiff: `make demo` and `make test` each create .venv/ on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all test demo lint typecheck bench clean

all: test

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check runtime policies sims hw_bridge tests examples
	$(BIN)/mypy runtime hw_bridge policies sims
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -m "not slow"

demo: $(STAMP)
	$(BIN)/rtdiff demo

bench: $(STAMP)
	$(BIN)/rtdiff bench tick --rate 1000 --seconds 60
	$(BIN)/rtdiff bench bridge

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
