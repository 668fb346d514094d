# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create the virtual environment first if it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgecv-installed

.PHONY: demo test test-fast lint clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,android,serve,ray]'
	touch $(STAMP)

## the main job on the built-in default dataset (digits): compress -> export -> bench -> predict
demo: $(STAMP)
	bash scripts/demo.sh $(VENV)/bin/edgecv runs/demo

## the import-layering contract, then the whole test suite, slow tests included (this is what CI runs).
## Tests that start process groups of their own (torchrun, a Ray instance, interrupted CLI runs) run after the
## rest, one at a time and outside xdist: two of them at once thrash the 2 cores, and under xdist a worker died
## during the torchrun test (twice, not reproduced alone).
SPAWNING := tests/test_distributed.py tests/test_serve_ray.py tests/test_signals.py tests/test_softlabels_distributed.py \
            tests/test_decode_cache.py
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "slow or not slow" -n 2 -q $(addprefix --ignore=,$(SPAWNING))
	$(PY) -m pytest -m "slow or not slow" -p no:xdist -q $(SPAWNING)

## the fast subset, for development
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -q

lint: $(STAMP)
	$(VENV)/bin/ruff check edgecv tests benchmarks
	$(VENV)/bin/lint-imports

clean-venv:
	rm -rf $(VENV)
