"""Centralized baselines on ML-100K (region silos pooled): popularity, GMF, NeuMF over the configured seeds.

Test metrics come from the epoch chosen on the validation item. Writes
results/centralized_bench.json and results/centralized_bench.png (validation HR@10 per epoch).

Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k python bench/centralized.py [--models pop,gmf,neumf]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedrec.core import env
from fedrec.core.config import load_config, parse_overrides
from fedrec.orchestration.centralized import run_baseline


def main() -> None:
    env.apply_defaults()  # before Prefect or MLflow is first imported
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--models", default="pop,gmf,neumf")
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", default="results/centralized_bench.json")
    args = ap.parse_args()
    cfg = load_config(args.params, parse_overrides(args.sets))
    results, curves = {}, {}
    for model in args.models.split(","):
        start = time.perf_counter()
        history: dict[int, list[float]] = {}
        report = run_baseline(cfg, model, on_epoch=lambda seed, rec: history.setdefault(seed, []).append(
            rec.val["hr@10"]))
        results[model] = report.to_json() | {"wall_seconds": time.perf_counter() - start}
        curves[model] = history
        per_seed = [(s.seed, round(s.test["hr@10"], 4), round(s.test["ndcg@10"], 4), s.best_epoch) for s in report.seeds]
        print(json.dumps({"model": model, **{k: round(v, 4) for k, v in report.mean().items()},
                          "per_seed(seed,hr,ndcg,best_epoch)": per_seed,
                          "seconds_per_epoch": results[model]["seconds_per_epoch"]}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    plot(curves, Path(args.out).with_suffix(".png"))


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for model, by_seed in curves.items():
        for seed, values in by_seed.items():
            ax.plot(range(1, len(values) + 1), values, label=f"{model} seed {seed}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation HR@10 (sampled)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
