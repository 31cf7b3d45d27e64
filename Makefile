# Two entry points for a fresh machine: `make demo` (set up + fit the Hudson Bay example) and
# `make test` (set up + run the tests). The CPU build of PyTorch is installed first on purpose:
# a bare `torch` requirement would pull several GB of CUDA packages.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "xgrammar==0.2.9"  # its deps are in [dev], minus 1 GB of triton
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	mkdir -p out
	$(BIN)/nimm check examples/lotka_volterra.nimm
	$(BIN)/nimm fit examples/lotka_volterra.nimm examples/data/hudson_bay_lynx_hare.csv \
		--output out/lotka_volterra_fit.json --plot out/lotka_volterra_fit.png

# The suite runs with a new, empty cache directory, as on a fresh machine: a cache must only
# ever be a speed-up, and one left in ~/.cache once hid a parser bug from CI.
test: $(VENV)/.installed
	cache=$$(mktemp -d) && XDG_CACHE_HOME=$$cache MPLCONFIGDIR=$$cache/mpl $(BIN)/python -m pytest -p no:cacheprovider; \
	status=$$?; rm -rf "$$cache"; exit $$status

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/check_speed.py
	$(BIN)/python benchmarks/simulate_speed.py
	$(BIN)/python benchmarks/batch_speed.py
	$(BIN)/python benchmarks/fit_speed.py

.PHONY: setup demo test bench
