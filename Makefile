# Two commands, on a fresh machine:   make demo   |   make test
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint format bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed  ## install, then sweep the built-in DC sounding model on a local cluster
	$(VENV)/bin/daskbatch demo

test: $(VENV)/.installed  ## install, lint, then run every test (doctests included)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache daskbatch-demo.zarr
