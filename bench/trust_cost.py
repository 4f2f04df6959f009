"""What the trust model costs: the same federation with pairwise masks on and off (signatures are always on).

Runs `fedrec run` twice on the same data, silos, rounds and seed (CKKS both times), compares the final global
models (masks cancel exactly: expect 0.0), HR/NDCG, the median round time and the bytes each silo sends per
round, and writes results/trust_cost.json.

Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k python bench/trust_cost.py [-S key=value ...]
"""

from __future__ import annotations

from fedrec import env

env.apply_defaults()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from fedrec.config import load_config, parse_overrides  # noqa: E402
from fedrec.federation.aggregate import flatten_state  # noqa: E402
from fedrec.federation.filters import load_global  # noqa: E402
from fedrec.wire.exchange import run_exchange  # noqa: E402

METRICS = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", default="results/trust_cost.json")
    args = ap.parse_args()
    overrides = parse_overrides(args.sets)
    from flows.federated import run_demo

    runs = {}
    for mode in ("masks", "no_masks"):
        ov = overrides | {"federation.masking": mode == "masks"}
        start = time.perf_counter()
        summary = run_demo(params_path=args.params, overrides=ov, show_progress=True)
        runs[mode] = {k: summary[k] for k in (*METRICS, "selected_round", "seconds_per_round",
                                              "seconds_per_round_median", "bytes_per_round_mean", "run_id")}
        runs[mode]["wall_seconds"] = time.perf_counter() - start
        print(json.dumps({mode: runs[mode]}), flush=True)
    cfg = load_config(args.params, overrides)
    final = {m: flatten_state(load_global(run_exchange(cfg, runs[m]["run_id"]), cfg.federation.rounds)) for m in runs}
    result = {
        "config_overrides": overrides, "runs": runs,
        "max_abs_param_diff": float(np.max(np.abs(final["masks"] - final["no_masks"]))),
        "hr@10_diff": runs["masks"]["hr@10"] - runs["no_masks"]["hr@10"],
        "extra_seconds_per_round_median": runs["masks"]["seconds_per_round_median"]
        - runs["no_masks"]["seconds_per_round_median"],
        "extra_bytes_per_silo_round": runs["masks"]["bytes_per_round_mean"] - runs["no_masks"]["bytes_per_round_mean"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
