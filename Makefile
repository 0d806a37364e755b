# Every target bootstraps .venv on a fresh machine from the committed lock (exact versions and
# hashes; `make lock` rewrites it from pyproject.toml's ranges, see DEVELOPERS.md). torch is
# locked to 2.13.0+cpu: on the dev and CI machines that is the CPU wheel already on disk.
# Byte-code: pip installs with --no-compile, and every target lets Python write byte-code on
# first import (PYTHONDONTWRITEBYTECODE is unexported below: the dev and CI machines set it, and
# every process of the suite, two workers, multi-rank launches and subprocesses, then compiled
# torch and jax from source again). Compiling on first import compiles the ~5,500 files the
# suite imports (about 35 s of CPU) where compileall of all site-packages compiled ~17,000
# (about 67 s of a fresh `make test` on 2 cores).
unexport PYTHONDONTWRITEBYTECODE
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements-dev.lock

.PHONY: venv lock demo test test-fast test-gpu coverage bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# resolve pyproject.toml's ranges afresh and rewrite the lock (then run `make test`, commit both)
lock:
	$(PYTHON) scripts/lock.py $(LOCK)

demo: $(STAMP)
	$(PY) examples/demo.py

# one pytest worker per CPU (pytest-xdist), each taking whole test files: a module's shared
# set-up (a multi-rank launch, the demo run) happens once, in one worker; files are handed out
# in collection order, the costliest first (conftest.py's HEAVY), not xdist's default order
# (most tests first, which left the few-but-slow files to the end)
XDIST := -n auto --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu" -p no:cacheprovider $(XDIST)

# the inner loop: everything but the multi-process, peer-library and demo tests
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not gpu and not slow" -p no:cacheprovider $(XDIST)

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu -p no:cacheprovider

# the CPU suite under coverage, then the report of the leaf kernels (lines no CPU test runs are
# listed; the CUDA-only modules are run by `make test-gpu`)
coverage: $(STAMP)
	$(PY) -m coverage run --branch --source=ema_core -m pytest -q -m "not gpu" -p no:cacheprovider
	$(PY) -m coverage report --show-missing --include='ema_core/backends/*'

bench: $(STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(PY) -m ruff check ema_core tests benchmarks examples scripts conftest.py
	$(PY) -m mypy ema_core

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
