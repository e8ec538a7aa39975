# lhopt: the two commands a fresh machine needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real datasets; tests and benchmarks read them from here (never copied into the repository).
export LHOPT_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install run test docs clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# A CPU build of torch first, so the project does not pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/lhopt validate task_specs/*.yaml
	$(BIN)/lhopt space task_specs/default.yaml
	$(BIN)/lhopt sample task_specs/default.yaml --seed 0 --count 3
	$(BIN)/lhopt trial task_specs/smoke.yaml --seed 3 --steps 100
	# A short meta-training on tiny tasks (a few minutes on two cores); results go to runs/ and mlflow.db.
	$(BIN)/lhopt train task_specs/smoke.yaml --iterations 20
	# ...then a short evaluation against the 35 AdamW baselines (plus Schedule-Free and Prodigy).
	$(BIN)/lhopt eval task_specs/smoke.yaml --policy runs/smoke/policy.pt --tasks 2
	@echo "Results are in runs/ and mlflow.db; browse them with: $(BIN)/lhopt ui  (http://127.0.0.1:5000)"

test: install
	$(BIN)/python -m pytest

docs: install
	$(BIN)/lhopt docs -o docs/dsl.md

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
