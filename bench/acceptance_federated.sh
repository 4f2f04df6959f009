#!/usr/bin/env bash
# The federated half of bench/acceptance.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export FEDREC_DATA_DIR="${FEDREC_DATA_DIR:-$(cd ../shared/datasets/ml-100k && pwd)}"
PY=.venv/bin/python
$PY bench/federated.py --out results/federated_bench.json                       # HE and plaintext, federation.seed=0
$PY bench/federated.py --skip-plain -S federation.seed=1 --out results/federated_bench_seed1.json
