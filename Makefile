# handfuse: two commands do everything on a fresh machine.
#   make reproduce   # the main job: every table, figure and animation on the synthetic benchmark (cpu preset)
#   make test        # the test suite, notebooks included (smoke preset)
# Each bootstraps .venv from requirements.txt the first time (idempotent: a stamp file
# records that the pinned set is installed; editing requirements.txt re-installs).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PRESET ?= cpu
OUT    ?= runs/$(PRESET)

# glibc tunables that avoid page-fault storms in torch on these VMs (docs/benchmarks.md);
# exported so that papermill kernels and benchmark processes inherit them.
export MALLOC_MMAP_THRESHOLD_ := 4294967296
export MALLOC_TRIM_THRESHOLD_ := 68719476736
export PYTHONUNBUFFERED := 1

.PHONY: reproduce test bench env clean-data

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

env: $(STAMP)

reproduce: $(STAMP)
	$(BIN)/python -m handfuse reproduce --preset $(PRESET) --out $(OUT) --figures figures

# the suite trains into a temporary folder (runs/ and figures/ are never touched): removed after a run that
# passed, kept and named after one that did not, so that a failure can be looked into
test: $(STAMP)
	bash scripts/ensure-test-tools.sh  # Debian's chromium (tests/test_browser.py) and ffmpeg (the MP4 export; once, no-op after)
	tmp=$$(mktemp -d) && mkdir $$tmp/figures $$tmp/runs && \
	HANDFUSE_PRESET=smoke HANDFUSE_FIGURES=$$tmp/figures HANDFUSE_RUNS=$$tmp/runs $(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder tests --nbval-lax --nbval-cell-timeout=900 notebooks -p no:cacheprovider; \
	rc=$$?; if [ $$rc -eq 0 ]; then rm -rf $$tmp; else echo "make test: this run's trained models and figures are kept in $$tmp"; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean-data:
	rm -rf data runs
