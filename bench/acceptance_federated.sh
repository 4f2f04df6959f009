#!/usr/bin/env bash
# The federated half of bench/acceptance.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export FEDREC_DATA_DIR="${FEDREC_DATA_DIR:-$(cd ../shared/datasets/ml-100k && pwd)}"
PY=.venv/bin/python
$PY bench/federated.py --out results/federated_bench.json                       # HE and plaintext, federation.seed=0
$PY bench/federated.py --skip-plain -S federation.seed=1 --out results/federated_bench_seed1.json
# round time against Flower on the same work (Flower in its own venv: see bench/round_time.py; without
# FLOWER_VENV only fedrec's rows are measured)
$PY bench/round_time.py ${FLOWER_VENV:+--flower-venv "$FLOWER_VENV"} --out results/round_time_bench.json
