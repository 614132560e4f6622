# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch and torchvision are installed first, on their own, so that the project's own install
# never pulls another torch build. Override TORCH_SPEC for another platform or CUDA version.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv demo test lint typecheck bench clean

venv: $(VENV)/.installed

# Stamp files, so that an interrupted install is resumed rather than taken as done.
$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: venv
	$(PY) -m deconvviz.demo --out out/demo

lint: venv
	$(PY) -m ruff check deconvviz tests benchmarks examples cli.py
	$(PY) -m ruff format --check deconvviz tests benchmarks examples cli.py

typecheck: venv
	$(PY) -m mypy

test: lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/projection.py
	$(PY) benchmarks/scan.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
