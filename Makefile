# fedrec: two commands. `make run` and `make test` create/refresh .venv as needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Offline hygiene and project-local state for every entry point (override by exporting your own).
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DVC_NO_ANALYTICS ?= 1
export HF_HUB_OFFLINE ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export GX_ANALYTICS_ENABLED ?= false
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export FEDREC_DATA_DIR ?= $(wildcard $(abspath $(CURDIR)/../shared/datasets/ml-100k))

.PHONY: install run centralized test test-fast lint bench acceptance repro exps clean ui tune quality
SEEDS ?= 0,1,2,3,4

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a bare `torch` pulls a multi-GB CUDA build on CPU-only machines.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## federated training on ML-100K region silos (HE on); not through DVC (`make repro` is)
	@echo "make run: fedrec run on params.yaml, outside the DVC pipeline (make repro / dvc exp run version it)" >&2
	$(VENV)/bin/fedrec run

centralized: $(STAMP)
	$(VENV)/bin/fedrec centralized --model neumf

repro: $(STAMP)  ## the DVC pipeline (its stages call bin/fedrec: no PATH set-up needed)
	$(VENV)/bin/dvc repro

# `make exps` shows the params that differ between experiments and the headline metrics, nothing else (dependencies,
# run ids, timings, per-seed lists are dropped: a bare `dvc exp show` prints some 200 columns)
EXPS_SHOWN := (Experiment|rev|typ|parent|Created|State|Executor)$$|(task|data|partition|evaluation|model|training|federation|privacy|crypto|operations|silo|item_text)(\.|$$)|(results/[a-z]+\.json:)?((full_)?(hr|ndcg)@[0-9]+|rmse|mae)$$
exps: $(STAMP)  ## DVC experiments: the params that differ between them and the headline metrics
	$(VENV)/bin/dvc exp show --only-changed --drop '^(?!$(EXPS_SHOWN))' --no-pager

test: $(STAMP)  ## everything, slow tests included (CI runs this after `make lint`)
	$(PY) -m pytest

test-fast: $(STAMP)  ## the inner loop: every test not marked slow (no servers, no whole federations)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)  ## ruff (imports at the top, import order, pyflakes) and the import-linter contracts (layers by party)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

ui: $(STAMP)  ## Prefect UI + MLflow UI on 127.0.0.1 over this project's stores (Ctrl-C stops both)
	$(VENV)/bin/fedrec ui

bench: $(STAMP)  ## fedrec HE / plaintext / Flower (FLOWER_VENV) / centralized + scaling curves -> BENCHMARKS.md, results/
	$(PY) bench/harness.py --scaling

acceptance: $(STAMP)  ## quality figures of README "Results" on ML-100K (~16 min on 2 cores): results/
	bench/acceptance.sh

tune: $(STAMP)  ## Optuna search of the centralized models and ALS on the validation item (~35 min) -> results/tune.json
	$(PY) bench/tune.py

quality: $(STAMP)  ## the quality table (pop, tuned ALS, centralized, federated, personalised; SEEDS) + each silo vs alone
	$(PY) bench/quality.py --seeds $(SEEDS)
	$(PY) bench/local_only.py --seeds $(SEEDS)

clean:
	rm -rf data state mlflow.db mlartifacts .prefect reports
