# sbldm — set-up and the two jobs a newcomer runs.
#
#   make smoke     # create .venv, then run the notebook chain at `smoke` -> results/smoke/
#   make test      # create .venv, then run the test suite (what .ci/run calls)
#   make test-fast # the inner loop: the suite without the tests marked slow
#   make browser-check  # notebook 08 in JupyterLab in a real (headless) Chromium, screenshots
#   make gpu-check      # paper-scale GPU timings and memory in < 8 min (refuses without a CUDA GPU)
#   make bench-paper-cpu  # the paper-size efficiency claim on this CPU (~1 h; run it with nothing else running)
#
# torch: `pip install torch==$(TORCH_VERSION)` takes the CPU build on a CPU-only
# machine that carries it locally and the CUDA build from PyPI elsewhere. To force a
# particular build, point TORCH_INDEX at a PyTorch wheel index, e.g.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu     (CPU only)
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128   (CUDA 12.8)
# Once installed, torch is held fixed by .venv/torch-constraint.txt so that no later
# install (e.g. the nnunet extra) swaps it for another build.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev,nnunet
SCALE ?= smoke
BIN := $(VENV)/bin
STAMP := $(VENV)/.sbldm-installed

.PHONY: setup smoke small paper test test-fast kernel browser-check gpu-check bench-paper-cpu

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[$(EXTRAS)]"
	$(BIN)/python -m ipykernel install --sys-prefix --name sbldm --display-name "Python (sbldm)" > /dev/null
	touch $(STAMP)

setup: $(STAMP)

smoke small paper: $(STAMP)
	$(BIN)/python -m sbldm.runner --scale $@

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow'

kernel: $(STAMP)
	$(BIN)/python -m ipykernel install --user --name sbldm --display-name "Python (sbldm)"

# Debian's Chromium (installed if missing; apt needs root or sudo) driven by Playwright's
# Python driver (the `browser` extra); screenshots go to results/small/figures/.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-check: $(STAMP)
	@command -v chromium > /dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)
	$(BIN)/python -m pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[browser]"
	$(BIN)/python -m sbldm.report.browser_check

gpu-check: $(STAMP)
	$(BIN)/python -m sbldm.runner.gpu_check

# every training step of the paper's networks at 192x192x96 in its own process, allowed to grow by
# BENCH_MEMORY_GIB (a network that runs out is measured smaller and extrapolated), and DDIM-50 per
# volume in fp32 and bf16, SBLDM's and the 3D-LDM's -> results/bench/paper_cpu-*_fp32.{json,md}; the 3D
# networks at batch 1. BENCH_ARGS="--sampling-from results/bench/paper_cpu-....json" keeps that result's
# sampling rows (timing the 3D-LDM only where they lack it), BENCH_ARGS="--training-from ..." its training
# steps; naming one result in both times only what it lacks (the 3D-LDM's sampling).
BENCH_MEMORY_GIB ?= 16
bench-paper-cpu: $(STAMP)
	$(BIN)/python -m sbldm.runner.bench --scale paper --device cpu --dtype fp32 --sampling-dtypes fp32 bf16 \
		--steps 50 --no-ddpm --repeats 1 --warmup 0 --train-batch 1 --memory-limit-gib $(BENCH_MEMORY_GIB) $(BENCH_ARGS)
