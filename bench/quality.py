"""One table of recommendation quality on ML-100K region silos (issue #19), every row over the same seeds, mean ±
std, sampled and full ranking, the test item selecting nothing:

- popularity; implicit's ALS with the hyper-parameters bench/tune.py chose on validation (results/tune.json);
- the centralized model of params.yaml (its defaults: bench/tune.py --apply), pooled data;
- federated with CKKS and masks, without and with personalisation (``--personalisation``, default recency, plus
  ``-P`` settings for that row only: by default the shared next-item tables, model.transition_dim 32).

Writes results/quality.json and prints the Markdown table (README, BENCHMARKS.md); one MLflow run (``quality``).
The per-silo comparison with training alone is bench/local_only.py.

Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k .venv/bin/python bench/quality.py [--seeds 0,1,2,3,4]
       [--rows pop,als,centralized,federated,personalised] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedrec.core import env
from fedrec.core.config import load_config, parse_overrides

ROWS = ("pop", "als", "centralized", "federated", "personalised")
LABELS = {"pop": "popularity", "als": "ALS (implicit, tuned on validation)", "centralized": "centralized {model}",
          "federated": "federated {model}, CKKS + masks", "personalised": "personalised federated {model} ({personalisation}{extra})"}


def main() -> None:
    env.apply_defaults()
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--tune", default="results/tune.json", help="bench/tune.py's output (the ALS it chose)")
    ap.add_argument("--out", default="results/quality.json")
    ap.add_argument("--personalisation", default="recency", help="the personalised row's model.personalisation")
    ap.add_argument("-P", "--personal-set", dest="personal_sets", action="append",
                    default=["model.transition_dim=32"],
                    help="key=value for the personalised row only (default: the shared next-item tables, "
                         "model.transition_dim 32; their lr and pairs from params.yaml)")
    args = ap.parse_args()
    from fedrec.core.training import evaluate_targets, train_centralized
    from fedrec.flows.federated import run_demo
    from fedrec.models.popularity import PopularityModel
    from fedrec.orchestration import tuning
    from fedrec.orchestration.tracking import mlflow_run
    from fedrec.silo import data as pipeline

    overrides = parse_overrides(args.sets)
    cfg = load_config(args.params, overrides)
    k = cfg.evaluation.k
    keys = [f"hr@{k}", f"ndcg@{k}", f"full_hr@{k}", f"full_ndcg@{k}"]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for r in args.rows.split(",") if r]
    data = pipeline.load_union(cfg, pipeline.ensure_data(cfg))
    als_params = json.loads(Path(args.tune).read_text())["als"]["best_params"] if "als" in rows else {}
    per_seed: dict[str, list[dict]] = {r: [] for r in rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for seed in seeds:
        for row in rows:
            t0 = time.perf_counter()
            if row == "pop":
                test = evaluate_targets(PopularityModel(data.train_items, data.n_items), data, k, ("test",))["test"]
                test, extra = test.means(k), {}
            elif row == "als":
                test, extra = tuning.als_test(data, k, True, seed, **als_params), {}
            elif row == "centralized":
                res = train_centralized(data, cfg, seed)
                test, extra = res.test, {"selected": res.best_epoch}
            else:
                more = {"federation.seed": seed, "training.seeds": [seed]}
                if row == "personalised":
                    more |= {"model.personalisation": args.personalisation} | parse_overrides(args.personal_sets)
                summary = run_demo(params_path=args.params, overrides=overrides | more)
                test, extra = {m: summary[m] for m in keys}, {"selected": summary["selected_round"],
                                                              "run_id": summary["run_id"],
                                                              **{f"val_{m}": summary["val"][m] for m in keys[:2]}}
            record = {"seed": seed, **{m: float(test[m]) for m in keys}, **extra,
                      "seconds": time.perf_counter() - t0}
            per_seed[row].append(record)
            print(json.dumps({"row": row, **record}), flush=True)
            result = {"seeds": seeds, "overrides": overrides, "personalisation": args.personalisation,
                      "personal_sets": parse_overrides(args.personal_sets), "als": als_params, "per_seed": per_seed,
                      "summary": {r: {m: tuning.seeds_stats([x[m] for x in v]) for m in keys}
                                  for r, v in per_seed.items() if v},
                      "wall_seconds": time.perf_counter() - started}
            out.write_text(json.dumps(result, indent=2))
    with mlflow_run(cfg, "quality", {"kind": "quality"}) as run:
        run.log_params({"seeds": args.seeds, "rows": args.rows})
        run.log_metrics({f"{r}_{m.replace('@', '_at_')}": s["mean"] for r, v in result["summary"].items()
                         for m, s in v.items()})
        run.log_dict(result, "quality.json")
    print(markdown(result, keys, cfg.model.name, args.personalisation))


def markdown(result: dict, keys: list[str], model: str, personalisation: str = "recency") -> str:
    extra = "".join(f", {k} {v}" for k, v in result.get("personal_sets", {}).items())
    lines = ["| model | " + " | ".join(keys) + " | seeds |", "|---|" + "---|" * (len(keys) + 1)]
    for row, stats in result["summary"].items():
        cells = " | ".join(f"{stats[m]['mean']:.4f} ± {stats[m]['std']:.4f}" for m in keys)
        lines.append(f"| {LABELS[row].format(model=model, personalisation=personalisation, extra=extra)} | {cells} | {len(result['per_seed'][row])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
