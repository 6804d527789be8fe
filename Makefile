# Two commands, on a fresh machine:   make demo   |   make test
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test docs lint format bench pictures clean system-deps test-deps

# The TEM1D core (daskbatch[tem], in the dev extra) links to the GNU Fortran runtime;
# the tests open the HTML report in a headless chromium and start a one-node SLURM
# (slurm-wlm, munge).
system-deps:
	@python3 -c "import ctypes; ctypes.CDLL('libgfortran.so.5')" 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing libgfortran5 (needed by the TEM1D core)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgfortran5; \
	  else \
	    echo "The TEM1D core needs libgfortran.so.5: run 'sudo apt-get install libgfortran5' (Debian/Ubuntu)"; \
	  fi; }

test-deps: system-deps
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (the tests open the HTML report in it)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "The report test needs chromium: run 'sudo apt-get install chromium' (it is skipped without)"; \
	  fi; }
	@{ command -v slurmctld && command -v munged; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing slurm-wlm and munge (the SLURM tests start a one-node SLURM)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; \
	  else \
	    echo "The SLURM tests need slurmctld, slurmd and munged: run 'sudo apt-get install slurm-wlm munge' (they are skipped without)"; \
	  fi; }

$(VENV)/.installed: pyproject.toml | system-deps
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	touch $@

demo: $(VENV)/.installed  ## install, then sweep the built-in DC sounding model on a local cluster
	$(VENV)/bin/daskbatch demo

test: $(VENV)/.installed test-deps  ## install, lint, then run every test (doctests included)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@# the SLURM tests mostly wait for jobs: one process runs them on one SLURM beside
	@# the others (its output follows theirs); the few that measure time or memory last
	@$(PY) -m pytest -m 'slurm and not serial' > $(VENV)/slurm-tests.log 2>&1 & slurm=$$!; \
	  echo "$(PY) -m pytest -n 2 -m 'not serial and not slurm'  (the SLURM tests beside it: $(VENV)/slurm-tests.log)"; \
	  $(PY) -m pytest -n 2 -m 'not serial and not slurm'; rest=$$?; \
	  wait $$slurm; code=$$?; echo "--- the SLURM tests, run beside them:"; cat $(VENV)/slurm-tests.log; \
	  test $$rest -eq 0 && test $$code -eq 0
	$(PY) -m pytest -m serial

docs: $(VENV)/.installed  ## the documentation site into docs/_build/html (warnings are errors)
	@$(PY) -c "import sphinx, myst_nb, pydata_sphinx_theme, numpydoc, sphinxarg" 2>/dev/null || \
	  $(PY) -m pip install --quiet -e '.[docs]'
	DASKBATCH_DOCS_EXECUTE=force $(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html (it works offline)"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(VENV)/.installed  ## the benchmarks; results go into docs/performance.md
	$(PY) benchmarks/tem1d.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/chunking.py

pictures: $(VENV)/.installed  ## the design pictures of docs/designs.md
	$(PY) docs/design_pictures.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache daskbatch-demo.zarr docs/_build docs/generated
