# vaelab: `make demo` runs the main job, `make test` the tests, on a fresh clone.
#
#   make demo     create .venv, install torch + vaelab, get Fashion-MNIST (apt, when
#                 missing and usable), train the VAE and the AE baseline, print a summary
#   make test     the fast test suite (the slow ones: make test-slow)
#   make bench    training-throughput benchmark against a plain PyTorch loop
#   make bench-speed  vaelab against a plain loop and pythae (training, k=1000 evaluation, memory,
#                 FLOPs), in the benchmarks' own environment .bench-venv (make bench-env)
#
# TORCH_SPEC picks the PyTorch build: the default is the CPU wheel of 2.13.0; with a
# GPU, e.g. `make demo TORCH_SPEC=torch` (any torch>=2.4 works).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
BENCH_VENV ?= .bench-venv
STAMP := $(VENV)/.vaelab-installed

.PHONY: install data demo test test-slow bench bench-env bench-speed clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian's dataset-fashion-mnist, when it is missing and apt can be used (as root or with sudo).
data:
	@sh scripts/get-fashion-mnist.sh

demo: install data
	$(VENV)/bin/vaelab demo

# one test file per worker, one worker per core, one torch thread each: on the 2-core machine the
# suite took 4.6 minutes this way with CI=true (938 tests, 2026-12-08, a fresh clone, the machine quiet;
# 4.9-6.3 for 933-937 earlier that day; 8.1 with a training job beside it; 8.8 for 930 the day before; 10.6 for 911 while
# benchmarks held the cores; 5.3-5.5 for the 689 tests of 2026-12-06); serially with 2 threads it took 8.7 for 608
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile

test-slow: install data
	$(PY) -m pytest -q --runslow

bench: install data
	$(PY) bench/train_throughput.py

# pythae and whatever it pulls in live here, never in vaelab's own environment
bench-env: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: pyproject.toml bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BENCH_VENV)/bin/python -m pip install --quiet -e . -r bench/requirements.txt
	touch $@

bench-speed: bench-env data
	$(BENCH_VENV)/bin/python bench/speed.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info src/*.egg-info .pytest_cache
