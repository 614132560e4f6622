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

.PHONY: venv demo test test-fast test-portable test-oldest lint typecheck bench docs docs-serve gpu-check gpu-check-cpu \
	gpu-check-machine-cpu clean

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

# The same toy-size check run the way gpu-check runs on the GPU machines: their python3's torch and packages
# (GPU_MACHINE_SPEC, in a venv of its own with nothing else: none of the explorer's packages, no deconvviz
# install), this checkout on PYTHONPATH. So that the first run on a lent GPU does not fail on a torch API or a
# missing package. The venv is a CUDA build of torch (about 5 GB); it runs on the CPU here.
GPU_MACHINE_VENV ?= .venv-gpu-machine
GPU_MACHINE_SPEC ?= torch==2.11.0 torchvision==0.26.0 timm typer rich matplotlib h5py onnx pytest
$(GPU_MACHINE_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(GPU_MACHINE_VENV)
	$(GPU_MACHINE_VENV)/bin/python -m pip install --quiet --no-cache-dir $(GPU_MACHINE_SPEC)
	touch $@

gpu-check-machine-cpu: $(GPU_MACHINE_VENV)/.installed
	OMP_NUM_THREADS=1 PYTHONPATH="$(CURDIR)" $(GPU_MACHINE_VENV)/bin/python benchmarks/gpu_check.py --device cpu --tiny \
		--out "$(or $(OUT),out/gpu-check-machine-cpu)"

# The fast tests with the oldest torch and torchvision that pyproject.toml admits (torch>=2.1), in a venv of
# their own (a CUDA build, about 5 GB; numpy 1, which torch 2.1 was built against).
OLDEST_VENV ?= .venv-oldest
OLDEST_SPEC ?= torch==2.1.2 torchvision==0.16.2 numpy==1.26.4
$(OLDEST_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --no-cache-dir $(OLDEST_SPEC)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --no-cache-dir -e . $(OLDEST_SPEC) pytest pytest-xdist httpx timm scipy
	touch $@

test-oldest: $(OLDEST_VENV)/.installed
	OMP_NUM_THREADS=1 $(OLDEST_VENV)/bin/python -m pytest -q $(FAST) -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf out site .pytest_cache .mypy_cache .ruff_cache
