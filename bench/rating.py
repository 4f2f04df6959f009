"""The explicit-rating task (task: rating) on ML-100K region silos: centralized vs federated (CKKS) RMSE/MAE.

Same split, same seed, same model and training settings for both twins:

* split: leave-one-out by time, as the ranking task uses (per user the latest rating is the test item, the second
  latest the validation item that selects the epoch/round, the rest trains); 943 test ratings. Published
  centralized MF figures on ML-100K (RMSE ~0.90-0.93) are on random 80/20 splits, which are easier (a user's
  latest ratings are harder to predict than random ones): ``--random-split`` adds a centralized random 80/20 run
  of the same model code for comparison;
* baselines on the same split: the global mean, mu + b_u + b_i (regularised ALS, lambdas chosen on validation) and
  the same plus the drift head (bias_drift, its weight and decay chosen on validation);
* centralized: `fedrec centralized` (fedrec.orchestration.centralized.run_baseline) with task=rating;
* federated: the Prefect flow `federated_training` (silo agents in host processes, masked CKKS aggregation),
  evaluated each round, the round chosen on validation RMSE.

Everything it writes (data, MLflow, exchange, reports) goes under --work (default results/tmp/rating_bench), not
into the project's data/ and mlflow.db; results go to --out (results/rating_bench.json).

Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k .venv/bin/python bench/rating.py [--models gmf,neumf]
       [--rounds 100] [--random-split] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedrec.core import env
from fedrec.core.config import load_config, parse_overrides

#: the rating task with params.yaml's defaults (its ``rating`` block: GMF, embedding L2 0.1, 60 epochs, patience 8,
#: 100 rounds, the drift head fedrec.core.drift; chosen once on ML-100K's validation ratings); one seed
RATING_SETTINGS = {"task": "rating", "training.seeds": [0]}


def isolated(work: Path) -> dict:
    """Every output of the runs under ``work``."""
    return {"data.work_dir": str(work / "data"), "federation.exchange_url": str(work / "state" / "exchange"),
            "federation.state_dir": str(work / "state"), "tracking.uri": f"sqlite:///{work / 'mlflow.db'}",
            "operations.reports_dir": str(work / "reports")}


def centralized(cfg, model: str) -> dict:
    from fedrec.orchestration.centralized import run_baseline

    start = time.perf_counter()
    report = run_baseline(cfg, model)
    out = report.to_json()
    out["wall_seconds"] = time.perf_counter() - start
    out["best_epochs"] = [s.best_epoch for s in report.seeds]
    return out


def federated(params: str, overrides: dict) -> dict:
    from fedrec.flows.federated import run_demo

    start = time.perf_counter()
    summary = run_demo(params_path=params, overrides=overrides, show_progress=True)
    summary["wall_seconds"] = time.perf_counter() - start
    return summary


def random_split(cfg, seed: int = 0) -> dict:
    """Centralized only: ratings split at random 80/20 (10% of the 80 validates the epoch), same model code."""
    import pandas as pd

    from fedrec.core.metrics import RatingSums
    from fedrec.core.objectives import rating
    from fedrec.core.training import SiloData, make_optimizer, model_config, train_epoch
    from fedrec.models import build_model
    from fedrec.silo import data as pipeline

    silos = pipeline.ensure_data(cfg)
    frame = pd.concat([pipeline.silo_interactions(cfg, s) for s in silos], ignore_index=True)
    catalogue = pipeline.catalogue_ids(cfg)
    users, user_idx = np.unique(frame["user_id"].to_numpy(), return_inverse=True)
    items = pd.Series(np.arange(len(catalogue)), index=catalogue).loc[frame["item_id"]].to_numpy()
    ratings = frame["rating"].to_numpy(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    n_test, n_val = len(frame) // 5, len(frame) // 10
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    dummy = np.zeros(len(users), np.int64)
    data = SiloData(user_ids=users, train_users=user_idx[train].astype(np.int64), train_items=items[train],
                    val_items=dummy, test_items=dummy, negatives=dummy[:, None], n_items=len(catalogue),
                    train_ratings=ratings[train], val_ratings=dummy.astype(np.float32),
                    test_ratings=dummy.astype(np.float32))

    def scores(predict) -> dict:
        return {"val_" + k: v for k, v in RatingSums.from_errors(predict(val), ratings[val]).means().items()} \
            | RatingSums.from_errors(predict(test), ratings[test]).means()

    mu = float(ratings[train].mean())
    out = {"split": "random 80/20 of all ratings (seed 0); 10% of all ratings from the 80% validate the epoch",
           "n_train": len(train), "n_val": len(val), "n_test": len(test),
           "global_mean": scores(lambda rows: np.full(len(rows), mu))}
    fits = [rating.fit_biases(data, ru, ri) for ru in rating.BIAS_REGULARISATION for ri in rating.BIAS_REGULARISATION]
    best = min(fits, key=lambda b: RatingSums.from_errors(b.predict(user_idx[val], items[val]), ratings[val]).sse)
    out["bias"] = {"reg_user": best.reg_user, "reg_item": best.reg_item,
                   **scores(lambda rows: best.predict(user_idx[rows], items[rows]))}
    torch.manual_seed(seed)
    model = build_model(model_config(cfg.model, len(users), len(catalogue), task="rating"),
                        torch.Generator().manual_seed(seed))
    optimizer = make_optimizer(model, cfg.training)
    train_rng = np.random.default_rng(seed)
    best_val, best_state, best_epoch, stale, start = np.inf, None, 0, 0, time.perf_counter()

    def predict(rows):
        return model.predict_rating(torch.from_numpy(user_idx[rows].astype(np.int64)),
                                    torch.from_numpy(items[rows])).numpy()

    for epoch in range(1, cfg.training.epochs + 1):
        train_epoch(model, optimizer, data, cfg.training, train_rng, torch.device("cpu"))
        model.eval()
        value = RatingSums.from_errors(predict(val), ratings[val]).means()["rmse"]
        if value < best_val:
            best_val, best_state, best_epoch, stale = value, {k: v.clone() for k, v in model.state_dict().items()}, epoch, 0
        else:
            stale += 1
            if stale >= cfg.training.patience:
                break
    model.load_state_dict(best_state)
    out[cfg.model.name] = {"best_epoch": best_epoch, "seconds": time.perf_counter() - start, **scores(predict)}
    return out


def main() -> None:
    env.apply_defaults()  # before Prefect or MLflow is first imported
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[])
    ap.add_argument("--models", default="gmf", help="comma-separated: gmf,neumf")
    ap.add_argument("--rounds", type=int, default=0,
                    help="federated rounds (0: params.yaml's; the round is chosen on validation)")
    ap.add_argument("--work", default="results/tmp/rating_bench")
    ap.add_argument("--random-split", action="store_true", help="also a centralized random 80/20 run")
    ap.add_argument("--skip-federated", action="store_true")
    ap.add_argument("--out", default="results/rating_bench.json")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    overrides = (RATING_SETTINGS | isolated(work) | ({"federation.rounds": args.rounds} if args.rounds else {})
                 | parse_overrides(args.sets))
    started = time.perf_counter()
    result: dict = {"split": "leave-one-out by time per user (latest rating = test, second latest = validation); "
                             "ML-100K region silos (first zip digit)",
                    "overrides": {k: v for k, v in overrides.items() if not k.startswith(("data.work", "federation.ex",
                                                                                         "federation.state", "tracking",
                                                                                         "operations"))},
                    "models": args.models.split(","),  # each run overrides model.name with its model
                    "centralized": {}, "federated": {}}
    for model in args.models.split(","):
        ov = overrides | {"model.name": model}
        cfg = load_config(args.params, ov)
        cent = centralized(cfg, model)
        result["baselines"] = cent.pop("baselines")
        result["centralized"][model] = cent
        print(json.dumps({"centralized": model, "rmse": cent["rmse"], "mae": cent["mae"],
                          "best_epochs": cent["best_epochs"], "seconds": round(cent["wall_seconds"], 1),
                          "baselines": {k: v for k, v in result["baselines"].items() if k != "run_id"}}), flush=True)
        if not args.skip_federated:
            fed = federated(args.params, ov)
            keep = ("rmse", "mae", "val", "selected_round", "rounds", "silos", "he", "seconds_per_round",
                    "seconds_per_round_median", "bytes_per_round_mean", "wall_seconds", "mlflow_run_id", "history",
                    "per_silo_test")
            result["federated"][model] = {k: fed[k] for k in keep}
            print(json.dumps({"federated": model, "rmse": fed["rmse"], "mae": fed["mae"],
                              "selected_round": fed["selected_round"], "seconds": round(fed["wall_seconds"], 1)}),
                  flush=True)
            bias = result["baselines"]["bias"]["rmse"]
            result.setdefault("acceptance", {})[model] = {
                "federated_minus_centralized_rmse": fed["rmse"] - cent["rmse"],
                "within_0.01": abs(fed["rmse"] - cent["rmse"]) <= 0.01,
                "federated_below_bias_baseline": fed["rmse"] < bias,
                "federated_minus_bias_rmse": fed["rmse"] - bias,
                "federated_at_least_0.02_below_bias": fed["rmse"] <= bias - 0.02,
                "federated_minus_bias_drift_rmse": fed["rmse"] - result["baselines"]["bias_drift"]["rmse"],
                "centralized_below_bias_baseline": cent["rmse"] < bias}
    if args.random_split:
        result["random_80_20"] = random_split(load_config(args.params, overrides))
        print(json.dumps({"random_80_20": {k: v for k, v in result["random_80_20"].items() if isinstance(v, dict)}}),
              flush=True)
    result["wall_seconds"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result.get("acceptance", {}), indent=2))
    print(f"results: {args.out} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
