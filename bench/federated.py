"""Federated vs centralized on ML-100K region silos, and HE vs plaintext aggregation.

Runs the Prefect flow `federated_training` twice in the same configuration (CKKS on, then
`he: false`), compares their final global parameters, wall time per round and bytes per
silo, and writes results/federated_bench.json plus a plot of validation/test HR@10 per round.

Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k python bench/federated.py [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fedrec.core import env
from fedrec.core.config import load_config, parse_overrides
from fedrec.core.state import flatten_state
from fedrec.protocol.reads import load_global
from fedrec.wire.exchange import run_exchange


def main() -> None:
    env.apply_defaults()  # before Prefect or MLflow is first imported
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[])
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--out", default="results/federated_bench.json")
    args = ap.parse_args()
    overrides = parse_overrides(args.sets)
    from fedrec.flows.federated import run_demo

    runs = {}
    for mode in (["he"] if args.skip_plain else ["he", "plain"]):
        ov = overrides | {"federation.he": mode == "he"}
        start = time.perf_counter()
        summary = run_demo(params_path=args.params, overrides=ov, show_progress=True)
        summary["wall_seconds"] = time.perf_counter() - start
        runs[mode] = summary
        print(json.dumps({mode: {k: summary[k] for k in ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10",
                                                           "selected_round", "seconds_per_round", "seconds_per_round_median",
                                                           "bytes_per_round_mean")}}), flush=True)
    cfg = load_config(args.params, overrides)
    result = {"config_overrides": overrides, "runs": runs}
    if "plain" in runs:
        he = flatten_state(load_global(run_exchange(cfg, runs["he"]["run_id"]), cfg.federation.rounds))
        plain = flatten_state(load_global(run_exchange(cfg, runs["plain"]["run_id"]), cfg.federation.rounds))
        result["he_vs_plain"] = {
            "max_abs_param_diff": float(np.max(np.abs(he - plain))),
            "seconds_per_round_he": runs["he"]["seconds_per_round"],
            "seconds_per_round_plain": runs["plain"]["seconds_per_round"],
            "median_round_he": runs["he"]["seconds_per_round_median"],
            "median_round_plain": runs["plain"]["seconds_per_round_median"],
            "time_ratio": runs["he"]["seconds_per_round"] / runs["plain"]["seconds_per_round"],
            "bytes_per_silo_he": runs["he"]["bytes_per_round_mean"],
            "bytes_per_silo_plain_fp64_payload": runs["plain"]["bytes_per_round_mean"],
            "fp32_bytes": runs["he"]["plaintext_fp32_bytes"],
            "ciphertext_to_fp32_ratio": runs["he"]["bytes_per_round_mean"] / runs["he"]["plaintext_fp32_bytes"],
        }
        print(json.dumps(result["he_vs_plain"], indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    plot(runs, Path(args.out).with_suffix(".png"), result.get("he_vs_plain"))


def plot(runs: dict, path: Path, comparison: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    style = {"he": dict(linewidth=5, alpha=0.35), "plain": dict(linewidth=1.2, marker=".", markersize=4)}
    for mode, summary in runs.items():
        rounds = [h["round"] for h in summary["history"] if "val_hr@10" in h]
        ax.plot(rounds, [h["val_hr@10"] for h in summary["history"] if "val_hr@10" in h], color="tab:blue",
                label=f"{mode} validation HR@10", **style[mode])
        ax.plot(rounds, [h["test_hr@10"] for h in summary["history"] if "test_hr@10" in h], color="tab:red",
                label=f"{mode} test HR@10", **style[mode])
    if comparison is not None:
        ax.set_title(f"CKKS vs plaintext aggregation: max |param diff| = {comparison['max_abs_param_diff']:.1e}, "
                     f"time x{comparison['time_ratio']:.2f}", fontsize=9)
    ax.set_xlabel("round")
    ax.set_ylabel("HR@10 (sampled, 99 negatives)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
