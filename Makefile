# Two entry points for a fresh machine: `make demo` (set up + evaluate models of a shipped task)
# and `make test` (set up + run the tests). The CPU build of PyTorch is installed first on purpose:
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

# Optional: SUNDIALS CVODES and GNU Scientific Library headers and libraries for compiled
# simulation (nimm_dsl/backends/compiled.py). Installed only as root with apt-get and only when
# missing; without them simulations use the interpreted CasADi integrator (same results, slower).
sundials:
	@if { [ ! -f /usr/include/cvodes/cvodes.h ] || [ ! -f /usr/include/gsl/gsl_odeiv2.h ]; } && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q libsundials-dev libgsl-dev >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libsundials-dev libgsl-dev >/dev/null 2>&1) \
		|| echo "libsundials-dev or libgsl-dev not installed: simulations use the interpreted integrator"; \
	fi

setup: $(VENV)/.installed sundials

# The product's main job on shipped data: score two models of the oncology task (a Gompertz
# tumour under chemotherapy and radiotherapy) — fit, forecast, both counterfactuals, the plots —
# and the true model of the metapop task (eight districts written once as a family, weekly counts).
demo: $(VENV)/.installed
	mkdir -p out
	$(BIN)/nimm check benchmarks/tasks/models/oncology/true.nimm benchmarks/tasks/models/oncology/textbook.nimm
	$(BIN)/nimm evaluate benchmarks/tasks/oncology.toml benchmarks/tasks/models/oncology/true.nimm \
		--output out/oncology_true.json --plot out/oncology_true
	$(BIN)/nimm evaluate benchmarks/tasks/oncology.toml benchmarks/tasks/models/oncology/textbook.nimm \
		--output out/oncology_textbook.json --plot out/oncology_textbook
	$(BIN)/nimm check --task benchmarks/tasks/metapop.toml benchmarks/tasks/models/metapop/true.nimm
	$(BIN)/nimm evaluate benchmarks/tasks/metapop.toml benchmarks/tasks/models/metapop/true.nimm \
		--output out/metapop_true.json --plot out/metapop_true

# The suite runs with a new, empty cache directory, as on a fresh machine: a cache must only
# ever be a speed-up, and one left in ~/.cache once hid a parser bug from CI.
test: $(VENV)/.installed sundials
	cache=$$(mktemp -d) && XDG_CACHE_HOME=$$cache MPLCONFIGDIR=$$cache/mpl $(BIN)/python -m pytest -p no:cacheprovider; \
	status=$$?; rm -rf "$$cache"; exit $$status

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/check_speed.py
	$(BIN)/python benchmarks/simulate_speed.py
	$(BIN)/python benchmarks/compiled_speed.py
	$(BIN)/python benchmarks/batch_speed.py
	$(BIN)/python benchmarks/fit_speed.py

.PHONY: setup sundials demo test bench
