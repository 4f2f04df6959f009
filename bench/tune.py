"""The hyper-parameter search behind params.yaml's defaults: Optuna (TPE, median pruning) over the centralized
ranking models and over implicit's ALS, on the pooled ML-100K region silos, chosen on the validation item only
(fedrec.orchestration.tuning: every trial's data has no test items).

Writes results/tune.json (every trial, the best of each), logs one MLflow run (``tune``) and prints the best
configuration; ``--apply`` writes the best neural configuration into params.yaml (comments kept), so that
``make run`` gets it. The test-item figures of the chosen configurations are bench/quality.py's job.

Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k .venv/bin/python bench/tune.py [--trials 40] [--als-trials 30]
       [--timeout-min 30] [--apply]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedrec.core import env


def main() -> None:
    env.apply_defaults()
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--als-trials", type=int, default=30)
    ap.add_argument("--timeout-min", type=float, default=30.0, help="wall budget of the neural search")
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/tune.json")
    ap.add_argument("--apply", action="store_true", help="write the best neural configuration into --params")
    args = ap.parse_args()
    import torch

    from fedrec.core.config import load_config
    from fedrec.orchestration import tuning
    from fedrec.orchestration.tracking import mlflow_run
    from fedrec.silo import data as pipeline

    torch.set_num_threads(1)  # trials are small; a second thread mostly contends
    cfg = load_config(args.params)
    data = pipeline.load_union(cfg, pipeline.ensure_data(cfg))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def show(kind):
        return lambda t: print(json.dumps({"search": kind, **t}, default=str), flush=True)

    als = tuning.tune_als(cfg, data, args.als_trials, args.seed, on_trial=show("als"))
    neural = tuning.tune_neural(cfg, data, args.trials, args.seed, args.timeout_min * 60, args.max_epochs,
                                on_trial=show("neural"))
    result = {"selection": f"val {cfg.evaluation.selection_metric}@{cfg.evaluation.k}", "seed": args.seed,
              "neural": vars(neural), "als": vars(als)}
    out.write_text(json.dumps(result, indent=2, default=str))
    with mlflow_run(cfg, "tune", {"kind": "tune"}) as run:
        run.log_params({f"best.{k}": v for k, v in neural.best_params.items()}
                       | {f"als.{k}": v for k, v in als.best_params.items()})
        run.log_metrics({"best_val": neural.best_value, "best_epoch": neural.best_epoch, "als_best_val": als.best_value,
                         "trials": len(neural.trials)})
        run.log_dict(result, "tune.json")
    print(f"best neural (val {neural.best_value:.4f}, epoch {neural.best_epoch}): {neural.best_params}")
    print(f"best ALS (val {als.best_value:.4f}): {als.best_params}")
    if args.apply:
        path = Path(args.params)
        path.write_text(tuning.apply_to_params(path.read_text(), neural.best_params))
        print(f"written into {path}")


if __name__ == "__main__":
    main()
