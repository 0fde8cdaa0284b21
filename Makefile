# Two commands set everything up on a fresh machine:
#   make serve   create .venv with the serving dependencies only (no torch) and serve the bundled models
#   make test    create .venv with training + dev dependencies and run lint + the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
PYTEST_WORKERS ?= auto

PSN_SOAK_SECONDS ?= 300
export PSN_SOAK_SECONDS

# The venvs are installed without byte-compiling every package (~50 s of the dev venv on 2 cores); Python
# compiles each module the first time it is imported and keeps the .pyc. Where the environment says not to
# keep them (PYTHONDONTWRITEBYTECODE, which this project's CI machine sets), every test process would
# compile torch's imports anew (~7 s each) and pytest would rewrite every test module's asserts anew: the
# targets here keep them (__pycache__ is git- and docker-ignored).
export PYTHONDONTWRITEBYTECODE :=

.PHONY: bench-peers serve test zoo-test bench-test docs lint soak image-test cluster-test browser-test bench gpu-check clean help

help:
	@echo "make serve       serve the bundled models on http://$(HOST):$(PORT) (creates .venv)"
	@echo "make test        lint + tests (creates .venv with torch==2.13.0 CPU)"
	@echo "make zoo-test    SpikingJelly's deep model-zoo networks (the ResNet-18s, spiking_vgg11_bn; a CI stage)"
	@echo "make bench-test  quick runs of the serving and peers benchmarks (a CI stage; installs wrk)"
	@echo "make docs        rewrite the generated tables in docs/ (routes, errors, settings) from the code"
	@echo "make soak        long reliability suites (fuzzing, churn, 5-minute soak)"
	@echo "make image-test  lint the Dockerfile, build the CPU image with podman, run and probe it"
	@echo "make browser-test  the demo page (GET /) and /docs in headless Chromium (installs chromium when missing)"
	@echo "make bench       run every benchmark suite; tables in docs/, plots as PNG"
	@echo "make bench-peers psn-serve beside KServe, LitServe, FastAPI, SpikingJelly (.venv-peers) -> docs/"
	@echo "make cluster-test  3 replicas in network namespaces behind nginx: SIGKILL + SIGTERM mid-run, then a rolling model update (root)"
	@echo "make gpu-check   on an NVIDIA GPU host: CUDA venv, parity on CUDA, GPU benchmarks -> docs/gpu/ (~10 min)"

# the venv without ensurepip's copy of pip (slow: it byte-compiles pip and setuptools), then pip from the
# system's pip (pip >= 22.3 installs into another environment with --python); ensurepip where that fails
$(PY):
	$(PYTHON) -m venv --without-pip $(VENV)
	$(PYTHON) -m pip -q --disable-pip-version-check --python $(PY) install --no-compile pip 2>/dev/null \
		|| $(PY) -m ensurepip -q

# ONNX Runtime build for `make serve`: ORT=auto (default) takes onnxruntime-gpu[cuda,cudnn] where an NVIDIA
# driver is present and the CPU onnxruntime elsewhere; ORT=gpu or ORT=cpu chooses. (The image: docker/.)
ORT ?= auto
NVIDIA_DRIVER := $(shell test -e /proc/driver/nvidia/version && echo yes || (nvidia-smi -L >/dev/null 2>&1 && echo yes))
ORT_VARIANT := $(if $(filter auto,$(ORT)),$(if $(NVIDIA_DRIVER),gpu,cpu),$(ORT))
ORT_OTHER := $(if $(filter gpu,$(ORT_VARIANT)),onnxruntime,onnxruntime-gpu)

ifneq ($(wildcard $(VENV)/.dev-stamp),)
# a dev venv (make test) serves as it is: refreshing it is the dev install's job, never a serving-only one's
$(VENV)/.serve-stamp: $(VENV)/.dev-stamp
	@touch $@
else
# serving-only install: numpy, onnxruntime (CPU or GPU build, above), fastapi, uvicorn, pydantic(-settings),
# prometheus-client; the requirements are pyproject's, with ONNX Runtime chosen by docker/serve_requirements.py
$(VENV)/.serve-stamp: pyproject.toml docker/serve_requirements.py | $(PY)
	@case "$(ORT_VARIANT)" in cpu|gpu) ;; *) echo "ORT=$(ORT): expected auto, cpu or gpu" >&2; exit 2;; esac
	@echo "onnxruntime: $(ORT_VARIANT) build (NVIDIA driver: $(or $(NVIDIA_DRIVER),none); ORT=cpu|gpu chooses)"
	$(PY) docker/serve_requirements.py --variant $(ORT_VARIANT) pyproject.toml > $(VENV)/serve-requirements.txt
	@# the two builds share the onnxruntime package folder: never leave both installed
	@if $(PIP) show $(ORT_OTHER) >/dev/null 2>&1; then $(PIP) uninstall -y onnxruntime onnxruntime-gpu; fi
	@# --no-compile: Python compiles what it imports when it first imports it, not all of every package
	$(PIP) install --no-compile -r $(VENV)/serve-requirements.txt
	$(PIP) install --no-compile --no-deps -e .
	@touch $@
endif

# The dev install is uv's (https://docs.astral.sh/uv): one resolve for every requirement, downloads in
# parallel, no byte-compilation (above): 39-45 s on a fresh 2-core machine where pip took ~180 s. The
# package sources stay pip's to say (pip.conf, PIP_*): docker/pip_to_uv.py passes them on. torch is pinned
# to 2.13.0 so the CPU build on this machine's disk is taken (an unpinned torch pulls CUDA).
UV_INSTALL = $(VENV)/bin/uv pip install --python $(PY) -q $$($(PY) docker/pip_to_uv.py $(PY))
$(VENV)/.dev-stamp: pyproject.toml docker/pip_to_uv.py | $(PY)
	$(PIP) install --no-compile "uv>=0.5"
	@# a venv that `make serve` made with the CPU onnxruntime: the dev extras bring pyproject's build instead
	@# (the two builds share the onnxruntime package folder: never leave both installed)
	@if $(PIP) show onnxruntime >/dev/null 2>&1; then $(PIP) uninstall -y onnxruntime onnxruntime-gpu; fi
	$(UV_INSTALL) torch==2.13.0 -e ".[train,bench,dev]"
	# --no-deps, each for its reason:
	# - SpikingJelly: its declared deps pull torchvision/torchaudio builds that do not load with the CPU torch;
	#   its activation_based modules need only torch, numpy, tqdm and loguru (train extra)
	# - torchvision, for SpikingJelly's model zoo (spikingjelly.activation_based.model, tests/test_sj_zoo.py,
	#   with h5py from the dev extra): PyPI has no torchvision that loads with the CPU torch: 0.28.0 is the
	#   release built for torch 2.13, but its C ops link the CUDA torch, and its import then fails on two
	#   unguarded op registrations; tests/torchvision_without_ops.py guards them as torchvision guards its
	#   others (its Python code works, its C ops such as nms stay unavailable; docs/export.md)
	# - KServe, for its gRPC client (tests/test_grpc_kserve.py), without its server's dependency tree (the dev
	#   extra has what its client imports)
	# - snnTorch and NIR's torch bridges, for the tests of snnTorch networks and NIR round trips: norse and
	#   nirtorch declare an unpinned torch (and torchvision); norse builds from its sdist
	$(UV_INSTALL) --no-deps spikingjelly==2.0.0 torchvision==0.28.0 kserve==0.21.0 snntorch==1.0.0 \
		nirtorch==2.6 norse==1.1.0
	$(PY) tests/torchvision_without_ops.py
	@touch $(VENV)/.serve-stamp $@

serve: $(VENV)/.serve-stamp
	$(VENV)/bin/psn serve --host $(HOST) --port $(PORT)

# the routes, errors and settings tables in docs/*.md, from the code (tests/test_docs.py fails when stale)
docs: $(VENV)/.serve-stamp
	$(PY) -m server.docsgen

lint: $(VENV)/.dev-stamp
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# in parallel: pytest-xdist, one worker per core; a module's tests on one worker (--dist loadscope), so a
# module-scoped fixture (a server, an export) is made once; the modules with slow tests start first
# (tests/conftest.py). PYTEST_WORKERS=0: in this process, one test after another.
test: lint
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

# SpikingJelly's model zoo with its four deep networks too (spiking_resnet18, sew_resnet18 twice,
# spiking_vgg11_bn: their exports take 20-60 s each; make test runs the CIFAR10Nets); a stage of .ci/run
zoo-test: $(VENV)/.dev-stamp
	$(VENV)/bin/pytest tests/test_sj_zoo.py --run-zoo -m zoo -p no:cacheprovider $(PYTEST_ARGS)

# the quick runs of the serving and peers benchmarks (real servers under wrk and WebSocket load); a stage of
# .ci/run (installs wrk when missing)
bench-test: $(VENV)/.dev-stamp
	@command -v wrk >/dev/null || apt-get install -y -q wrk || (apt-get update -q && apt-get install -y -q wrk)
	$(VENV)/bin/pytest tests/test_bench_serving_smoke.py tests/test_bench_peers.py --run-bench -m bench \
		-p no:cacheprovider $(PYTEST_ARGS)

soak: $(VENV)/.dev-stamp
	$(VENV)/bin/pytest -m soak --run-soak $(PYTEST_ARGS)

bench: $(VENV)/.dev-stamp
	@command -v wrk >/dev/null || apt-get install -y -q wrk || echo "wrk missing: the serving suite skips classify load"
	$(VENV)/bin/psn bench all

# the peers (KServe's ModelServer, LitServe) in their own venv, never the main one: pinned, no torch pulled,
# the main venv's onnxruntime version; FastAPI + ORT and FastAPI + SpikingJelly run from the main venv
PEERS_VENV ?= .venv-peers
$(PEERS_VENV)/.stamp: $(VENV)/.dev-stamp
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip --disable-pip-version-check -q install kserve==0.21.0 litserve==0.2.19 \
		onnxruntime==$$($(PY) -c "import onnxruntime; print(onnxruntime.__version__)")
	@! $(PEERS_VENV)/bin/python -c "import torch" 2>/dev/null || (echo "$(PEERS_VENV) pulled torch" && exit 1)
	@touch $@

bench-peers: $(PEERS_VENV)/.stamp
	@command -v wrk >/dev/null || apt-get install -y -q wrk
	$(VENV)/bin/psn bench peers --peers-python $(PEERS_VENV)/bin/python

# its own venv (.venv-gpu: CUDA torch, onnxruntime-gpu[cuda,cudnn]); says so and exits 3 without a GPU
gpu-check:
	bash docker/gpu-check.sh

image-test: $(VENV)/.dev-stamp
	bash docker/image-test.sh

# as root: 3 `psn serve` replicas in their own network namespaces behind nginx; resumable streams and a
# classify load through nginx while one replica is SIGKILLed and another SIGTERMed (docs/cluster-test.*),
# then a rolling update from model version 1 to 2 that drops no stream (docs/cluster-test-rollout.*)
cluster-test: $(VENV)/.dev-stamp
	@command -v nginx >/dev/null || apt-get install -y -q nginx || (apt-get update -q && apt-get install -y -q nginx)
	$(PY) tests/cluster/run_cluster.py
	$(PY) tests/cluster/run_rollout.py

# Debian's chromium + chromium-driver (Selenium is pointed at them: no browser or driver is downloaded)
browser-test: $(VENV)/.dev-stamp
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		echo "installing chromium chromium-driver with apt-get"; \
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; \
	fi
	$(VENV)/bin/pytest tests/test_browser.py --run-browser -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
