# Every target bootstraps .venv on a fresh machine. torch is pinned to 2.13.0: on the dev machines
# that pin takes the CPU wheel already on disk, where an unpinned torch downloads a CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: venv demo test test-gpu bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q "jax[cpu]"
	$(PY) -m pip install -q -e . --group dev --group bench --group peers
	# timm needs torchvision, which does not import beside this torch; its model_ema.py needs
	# only torch and is loaded by file path, so timm comes without its dependencies
	$(PY) -m pip install -q --no-deps timm
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu" -p no:cacheprovider

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(PY) -m ruff check ema_core tests benchmarks examples scripts conftest.py
	$(PY) -m mypy ema_core

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
