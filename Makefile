# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch and torchvision are installed first, on their own, so that the project's own install
# never pulls another torch build. Override TORCH_SPEC for another platform or CUDA version.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# The edit-test loop: everything but real-size models, registry fetches and the browser, in JOBS processes of
# one thread each (one per core).
JOBS ?= 2
FAST := -m "not slow and not network and not browser" -n $(JOBS)

.PHONY: venv demo test test-fast test-portable lint typecheck bench docs docs-serve gpu-check gpu-check-cpu clean

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
	$(PY) -m deconvviz.cli.demo --out out/demo

lint: venv
	$(PY) -m ruff check deconvviz tests benchmarks examples cli.py docs/hooks
	$(PY) -m ruff format --check deconvviz tests benchmarks examples cli.py docs/hooks

typecheck: venv
	$(PY) -m mypy

test: lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(FAST) $(PYTEST_ARGS)

# The fast tests again with the kernels of CPUs without AVX-512 (oneDNN) and without any vector extension
# (ATen's own kernels), so that a test passing only on this CPU's kernels fails here too.
test-portable: venv
	OMP_NUM_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q $(FAST) $(PYTEST_ARGS)
	OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q $(FAST) $(PYTEST_ARGS)

# The documentation site, from docs/ and the docstrings, into site/; --strict turns a broken link, a missing
# page or a docstring reference that does not resolve into an error. (The dev extra includes the docs extra.)
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

bench: venv
	$(PY) benchmarks/projection.py
	$(PY) benchmarks/scan.py

# The prepared check on a CUDA machine (docs/gpu.md): the system's python3 and its own torch, nothing installed,
# this checkout on the path; the table and raw JSON go to OUT. Without a GPU it stops in one line.
GPU_PYTHON ?= python3
OUT ?=
gpu-check:
	@PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(GPU_PYTHON) benchmarks/gpu_check.py --device cuda --out "$(or $(OUT),out/gpu-check)"

# The same check at toy size on the CPU, with the project's environment (seconds; CI runs it).
gpu-check-cpu: venv
	OMP_NUM_THREADS=1 $(PY) benchmarks/gpu_check.py --device cpu --tiny --out "$(or $(OUT),out/gpu-check-cpu)"

clean:
	rm -rf out site .pytest_cache .mypy_cache .ruff_cache
