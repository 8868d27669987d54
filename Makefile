# `make run` and `make test` each set everything up on a fresh machine, then do their job.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# DVC stage commands call `python`: make it the project's interpreter.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup run test lint browser format clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "nntune needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# DVC (and dvclive) need a git repository with at least one commit. A copy without git
# history gets one; an existing repository is never committed to behind your back.
setup: $(STAMP)
	@if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git init --quiet && git add -A && \
	  git -c user.name="$$(git config user.name || echo nntune)" \
	    -c user.email="$$(git config user.email || echo nntune@localhost)" \
	    commit --quiet -m "nntune: initial commit"; \
	elif ! git rev-parse --verify --quiet HEAD >/dev/null; then \
	  echo "error: this git repository has no commit yet; DVC needs one:" \
	    "git add -A && git commit -m 'initial commit'" >&2; exit 1; \
	fi
	@[ -d .dvc ] || $(BIN)/dvc init --quiet
	@$(BIN)/dvc config core.analytics false

# The main job on the embedded digits data: the baseline, then the default grid
# (grid.yaml) as DVC experiments on 2 workers, then the ranking and the winner.
JOBS ?= 2
run: setup
	$(BIN)/nntune check params.yaml
	$(BIN)/dvc repro
	$(BIN)/nntune summary
	$(BIN)/nntune grid
	$(BIN)/nntune run --jobs $(JOBS)
	$(BIN)/nntune compare --top 10
	$(BIN)/nntune best

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src

# The Keras-side unit tests run a second time on JAX (runtime.backend: jax); the end-to-end
# tests cover JAX through a project whose params.yaml picks it.
JAX_TESTS := tests/test_backend.py tests/test_device.py tests/test_diagnosis.py \
  tests/test_evaluate.py tests/test_lr_find.py tests/test_model.py tests/test_predict.py \
  tests/test_pretrain.py tests/test_training.py tests/test_warmstart.py tests/test_export.py \
  tests/test_tabular.py

test: lint browser
	$(BIN)/pytest
	KERAS_BACKEND=jax $(BIN)/pytest -m "not e2e" $(JAX_TESTS)

# Headless Chromium for the test that opens `nntune plots` output; installed only if missing
# (Debian package, needs root, as on CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends chromium) >/dev/null; \
	  else echo "warning: chromium missing; install it (apt-get install chromium)" \
	    "or the browser test is skipped" >&2; fi; }

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
