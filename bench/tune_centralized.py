"""Small grid over NeuMF hyper-parameters on ML-100K; selection on the validation item only.

Usage: python bench/tune_centralized.py [--epochs 30] [--seed 0]
Prints one line per configuration and saves results/tune_centralized.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedrec.core.config import load_config
from fedrec.core.training import train_centralized
from fedrec.silo import data as pipeline

GRID = [
    {},
    {"model.embedding_dim": 64, "model.mlp_layers": [128, 64, 32]},
    {"training.n_negatives": 8},
    {"training.weight_decay": 1e-6},
    {"training.lr": 0.0005},
    {"model.embedding_dim": 64, "model.mlp_layers": [128, 64, 32], "training.weight_decay": 1e-6},
    {"model.embedding_dim": 16, "model.mlp_layers": [32, 16, 8]},
    {"training.batch_size": 1024, "training.lr": 0.002},
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; metrics are averaged")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="results/tune_centralized.json")
    ap.add_argument("--grid", default=None, help="JSON list of override dicts (default: the built-in grid)")
    args = ap.parse_args()
    base = load_config(args.params, {"training.epochs": args.epochs, "training.patience": 6})
    data = pipeline.load_union(base, pipeline.ensure_data(base))
    rows = []
    for overrides in json.loads(args.grid) if args.grid else GRID:
        cfg = base.replace(**overrides)
        start = time.perf_counter()
        results = [train_centralized(data, cfg, int(seed)) for seed in args.seeds.split(",")]
        mean = {k: sum(r.test[k] for r in results) / len(results) for k in results[0].test}
        row = {"overrides": overrides, "best_epochs": [r.best_epoch for r in results],
               "val": [r.val for r in results], "test_per_seed": [r.test for r in results], "test_mean": mean,
               "seconds_per_epoch": sum(r.seconds_per_epoch for r in results) / len(results),
               "wall_s": time.perf_counter() - start}
        rows.append(row)
        print(json.dumps({"overrides": overrides, "best_epochs": row["best_epochs"],
                          "test_hr": [round(r.test["hr@10"], 4) for r in results],
                          "mean_hr": round(mean["hr@10"], 4), "mean_ndcg": round(mean["ndcg@10"], 4),
                          "s/epoch": round(row["seconds_per_epoch"], 2)}), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
