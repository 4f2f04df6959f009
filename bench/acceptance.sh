#!/usr/bin/env bash
# The acceptance figures of issues #2 and #3 on ML-100K region silos, run one after another
# (2 cores: never side by side). Results land in results/.
set -euo pipefail
cd "$(dirname "$0")/.."
export FEDREC_DATA_DIR="${FEDREC_DATA_DIR:-$(cd ../shared/datasets/ml-100k && pwd)}"
PY=.venv/bin/python
$PY bench/centralized.py --models pop,gmf,neumf --out results/centralized_bench.json
bench/acceptance_federated.sh
