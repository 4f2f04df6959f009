#!/usr/bin/env bash
# The README's operations commands, run as written in a fresh clone after `make run`'s set-up (ML-100K):
#   make run (40 rounds) -> recommend / serve / feedback -> demo-db + a run on the per-silo SQLite databases
#   -> fedrec ui + deploy + a triggered scheduled run served by `fedrec worker --run-once` -> cleanup --dry-run
#   -> headless-Chromium screenshots of the real run's Prefect and MLflow pages (docs/screenshots/).
# Writes results/fresh_clone.log (what ran, what it answered). Needs FEDREC_DATA_DIR. ~15 min on 2 cores.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-$(mktemp -d)}"
LOG="$ROOT/results/fresh_clone.log"
: "${FEDREC_DATA_DIR:?point FEDREC_DATA_DIR at ML-100K}"
unset PREFECT_API_URL MLFLOW_TRACKING_URI PREFECT_HOME
git clone -q "$ROOT" "$WORK/fedrec" && cd "$WORK/fedrec"
exec > >(grep --line-buffered -v "WARNING: Location .file:" | tee "$LOG") 2>&1
step() { printf '\n$ %s\n' "$*"; "$@"; }
echo "fresh clone of $(git rev-parse --short HEAD) in $WORK/fedrec, $(date -u +%FT%TZ)"
START=$(date +%s)
step make run
echo "make run: $(( $(date +%s) - START )) s (install included)"
F=.venv/bin/fedrec
export PATH="$PWD/.venv/bin:$PATH" PREFECT_HOME="$PWD/.prefect" MLFLOW_TRACKING_URI="sqlite:///$PWD/mlflow.db" \
  DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
step $F recommend --silo 3 --user 102 -k 10
step $F recommend --silo 3 --user 102 -k 5 --json
$F recommend --silo 3 --user 42 -k 5 && exit 1 || echo "(exit $? as expected: user 42 is not a user of silo 3)"
$F serve --silo 3 --port 8765 & SERVE=$!
for _ in $(seq 60); do curl -sf http://127.0.0.1:8765/health >/dev/null && break; sleep 0.5; done
step curl -s "http://127.0.0.1:8765/recommend/102?k=3"; echo
step curl -s -o /dev/null -w "unknown user: HTTP %{http_code}\n" "http://127.0.0.1:8765/recommend/42"
kill -INT $SERVE; wait $SERVE || true
python - > new_clicks.csv <<'PY'
import json, subprocess
recs = json.loads(subprocess.run([".venv/bin/fedrec", "recommend", "--silo", "3", "--user", "102", "-k", "3",
                                  "--json"], capture_output=True, text=True, check=True).stdout)
print("user_id,item_id,rating")
for item in recs["items"]:
    print(f'102,{item["item_id"]},5')
PY
printf 'user_id,item_id,rating\n102,1,9\n' > bad_clicks.csv
$F feedback bad_clicks.csv --silo 3 && exit 1 || echo "(exit $? as expected: invalid feedback refused)"
step $F feedback new_clicks.csv --silo 3
step $F recommend --silo 3 --user 102 -k 5
step $F demo-db
step $F run -S silo.source='sqlite:///data/db/{silo}.sqlite' -S federation.rounds=2 --json
step $F recommend --silo 3 --user 102 -k 5
$F ui --prefect-port 4311 --mlflow-port 5311 & UI=$!
for _ in $(seq 120); do curl -sf http://127.0.0.1:4311/api/health >/dev/null && curl -sf http://127.0.0.1:5311/health >/dev/null && break; sleep 1; done
step $F deploy --cron "0 3 * * *" -S federation.rounds=3 --json
step prefect deployment run scheduled_retraining/scheduled-retraining
step timeout 900 $F worker --run-once
step $F cleanup --dry-run --json
python - <<'PY'
import asyncio, json, mlflow, sqlite3
from pathlib import Path
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from support.screenshot import browser, screenshot

async def runs():
    async with get_client() as client:
        found = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["federated_training"])))
        return sorted(found, key=lambda r: r.start_time or r.created)
flow_runs = asyncio.run(runs())
print("federated_training runs in the Prefect UI:", [(r.name, r.state_name) for r in flow_runs])
ml = mlflow.MlflowClient("sqlite:///" + str(Path("mlflow.db").resolve()))
run = ml.search_runs([ml.get_experiment_by_name("fedrec").experiment_id], order_by=["start_time ASC"])[0]  # make run's
print("MLflow run", run.info.run_id, "tags:", {k: v for k, v in run.data.tags.items() if k.startswith("data_version")})
if browser():
    first = flow_runs[0]
    out = Path("docs/screenshots")
    screenshot(f"http://127.0.0.1:4311/runs/flow-run/{first.id}", out / "prefect-flow-run.png", budget_ms=20000)
    screenshot(f"http://127.0.0.1:5311/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
               out / "mlflow-run.png", budget_ms=20000)
    print("screenshots:", sorted(str(p) for p in out.iterdir()))
PY
kill -TERM $UI; wait $UI || true  # (a background job ignores SIGINT in a script; Ctrl-C works interactively)
if [ -d docs/screenshots ]; then mkdir -p "$ROOT/docs" && cp -r docs/screenshots "$ROOT/docs/"; fi
echo "done in $(( $(date +%s) - START )) s"
