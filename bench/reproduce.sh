#!/usr/bin/env bash
# Data-versioned reproduction on ML-100K, as a new user would do it in a clean clone of this repository:
#   dvc exp run (base) -> fedrec feedback at one silo (a new DVC data version) -> dvc exp run (retrained)
#   -> dvc exp apply base -> dvc repro --force federate: the base experiment's metrics again.
# Prints and saves results/reproduce.json. Needs FEDREC_DATA_DIR (ML-100K). ~6 min on 2 cores.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PATH="$ROOT/.venv/bin:$PATH" DVC_NO_ANALYTICS=1 PREFECT_HOME="$WORK/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false
unset PREFECT_API_URL MLFLOW_TRACKING_URI
: "${FEDREC_DATA_DIR:?point FEDREC_DATA_DIR at ML-100K}"
ROUNDS="${ROUNDS:-10}"
git clone -q "$ROOT" "$WORK/clone" && cd "$WORK/clone"
SETS=(-S "federation.rounds=$ROUNDS" -S "training.seeds=[0]" -S "training.epochs=5")
dvc exp run -q -n base "${SETS[@]}" >/dev/null
cp results/federated.json "$WORK/base.json"
USER_ID=$(python -c "import pandas as pd; print(int(pd.read_parquet('data/silos/3/interactions.parquet')['user_id'].iloc[0]))")
BEFORE=$(fedrec recommend --silo 3 --user "$USER_ID" -k 5 --json)
python - "$BEFORE" > "$WORK/fb.csv" <<'PY'
import json, sys
recs = json.loads(sys.argv[1])
print("user_id,item_id,rating")
for item in recs["items"][:3]:
    print(f'{recs["user"]},{item["item_id"]},5')
PY
fedrec feedback "$WORK/fb.csv" --silo 3 --json > "$WORK/feedback.json"
dvc exp run -q -n with-feedback >/dev/null
cp results/federated.json "$WORK/feedback_run.json"
AFTER=$(fedrec recommend --silo 3 --user "$USER_ID" -k 5 --json)
dvc exp apply -q base
rm -f results/federated.json
dvc repro -q --force --single-item federate >/dev/null
cp results/federated.json "$WORK/reproduced.json"
python - "$WORK" "$ROOT/results/reproduce.json" "$BEFORE" "$AFTER" <<'PY'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
runs = {name: json.loads((work / f"{name}.json").read_text()) for name in ("base", "feedback_run", "reproduced")}
keys = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10")
report = {name: {"run_id": r["run_id"], "data_version_silo_3": r["data_versions"]["3"], **{k: r[k] for k in keys}}
          for name, r in runs.items()}
report["identical_metrics_base_vs_reproduced"] = all(runs["base"][k] == runs["reproduced"][k] for k in keys)
report["feedback"] = json.loads((work / "feedback.json").read_text())
report["recommendations_before"] = [i["item_id"] for i in json.loads(sys.argv[3])["items"]]
report["recommendations_after"] = [i["item_id"] for i in json.loads(sys.argv[4])["items"]]
out.write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
PY
