"""Every silo against training alone, on ML-100K region silos: for each silo, HR@10 / NDCG@10 (sampled and full
ranking) of the model it trains on its own data alone, of the federation (the round selected on the federation's
validation item, scored on this silo's users) and of centralized training on the pooled data (scored on this
silo's users). The same split, held-out items and candidates everywhere; every choice on a validation item.

Per seed s: federation.seed = s for the federated run (CKKS and masks on, the defaults of params.yaml), and s as the
training seed of the local-only and centralized models. Writes results/local_only.json and results/local_only.png
(per silo: local-only, federated, centralized HR@10, mean over seeds with its std), logs one MLflow run
(``local-only-vs-federated``), and prints the table as Markdown (README, BENCHMARKS.md).

Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k .venv/bin/python bench/local_only.py [--seeds 0,1,2,3,4] [-S k=v]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from fedrec.core import env
from fedrec.core.config import load_config, parse_overrides

METRICS = ("hr", "ndcg", "full_hr", "full_ndcg")


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: dict, datas: dict, seeds: list[int], overrides: dict, kinds: list[str], keys, k: int,
              wall: float) -> dict:
    """The per-silo table (mean ± std over the seeds run so far) and its summary figures."""
    rows = []
    for s in sorted(datas, key=lambda s: -datas[s].n_users):
        row = {"silo": s, "users": datas[s].n_users, "interactions": datas[s].n_train}
        for kind in runs:
            row[kind] = {m: _stats(runs[kind][s][m]) for m in keys}
        if "federated" in kinds and "local_only" in kinds:
            row["gain_hr"] = row["federated"][keys[0]]["mean"] - row["local_only"][keys[0]]["mean"]
        rows.append(row)
    result = {
        "seeds": seeds, "overrides": overrides, "kinds": kinds, "k": k,
        "wall_seconds": wall, "rows": rows,
        "users_weighted": {kind: {m: sum(r["users"] * r[kind][m]["mean"] for r in rows) / sum(r["users"] for r in rows)
                                  for m in keys} for kind in runs},
    }
    if "gain_hr" in rows[0]:
        smallest = sorted(rows, key=lambda r: r["users"])[:3]
        result |= {"mean_gain_hr": statistics.fmean(r["gain_hr"] for r in rows),
                   "smallest_silos_gain_hr": {r["silo"]: r["gain_hr"] for r in smallest},
                   "every_silo_gains": all(r["gain_hr"] >= 0 for r in rows)}
    return result


def main() -> None:
    env.apply_defaults()  # before Prefect or MLflow is first imported
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--out", default="results/local_only.json")
    ap.add_argument("--kinds", default="local_only,federated,centralized",
                    help="which of local_only, federated, centralized to run (e.g. local_only alone under -S)")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    from fedrec.core.training import train_centralized
    from fedrec.flows.federated import run_demo
    from fedrec.orchestration.centralized import per_silo_sums
    from fedrec.silo import data as pipeline
    from fedrec.silo.local_only import train_alone

    overrides = parse_overrides(args.sets)
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = load_config(args.params, overrides)
    k = cfg.evaluation.k
    keys = [f"{m}@{k}" for m in METRICS]
    silos = pipeline.ensure_data(cfg)
    union = pipeline.load_union(cfg, silos)
    datas = {s: pipeline.load_silo_data(cfg, s) for s in silos}
    runs: dict[str, dict[str, dict[str, list[float]]]] = {
        kind: {s: {m: [] for m in keys} for s in silos} for kind in kinds}
    started = time.perf_counter()
    for seed in seeds:
        if "federated" in kinds:
            print(f"[local_only] seed {seed}: federated run", flush=True)
            summary = run_demo(params_path=args.params, overrides=overrides | {"federation.seed": seed})
            for s in silos:
                for m in keys:
                    runs["federated"][s][m].append(summary["per_silo_test"][s][m])
        if "local_only" in kinds:
            print(f"[local_only] seed {seed}: each silo alone", flush=True)
            for s in silos:
                alone = train_alone(cfg, s, seed)
                for m in keys:
                    runs["local_only"][s][m].append(alone.test[m])
        if "centralized" in kinds:
            print(f"[local_only] seed {seed}: centralized on the pooled data, scored per silo", flush=True)
            pooled = train_centralized(union, cfg, seed)
            for s, sums in per_silo_sums(pooled.model, union, datas, k).items():
                for m, v in sums.means(k).items():
                    runs["centralized"][s][m].append(v)
        partial = summarise(runs, datas, seeds[:seeds.index(seed) + 1], overrides, kinds, keys, k,
                            time.perf_counter() - started)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(partial, indent=2))  # a run cut short keeps the seeds it finished
    result = summarise(runs, datas, seeds, overrides, kinds, keys, k, time.perf_counter() - started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if len(kinds) < 3:  # a part of the comparison: its figures only
        print(json.dumps(result["users_weighted"], indent=2), flush=True)
        return
    plot(result, out.with_suffix(".png"), keys[0])
    log_mlflow(cfg, result, keys)
    print(markdown(result, keys), flush=True)


def markdown(result: dict, keys: list[str]) -> str:
    hr, ndcg, full_hr = keys[0], keys[1], keys[2]
    lines = [f"| silo | users | interactions | local-only {hr} | federated {hr} | centralized {hr} | gain | "
             f"local-only {ndcg} | federated {ndcg} | local-only {full_hr} | federated {full_hr} |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(cell):
        return f"{cell['mean']:.4f} ± {cell['std']:.4f}"

    for r in result["rows"]:
        lines.append(f"| {r['silo']} | {r['users']} | {r['interactions']} | {f(r['local_only'][hr])} | "
                     f"{f(r['federated'][hr])} | {f(r['centralized'][hr])} | {r['gain_hr']:+.4f} | "
                     f"{f(r['local_only'][ndcg])} | {f(r['federated'][ndcg])} | {f(r['local_only'][full_hr])} | "
                     f"{f(r['federated'][full_hr])} |")
    w = result["users_weighted"]
    lines.append(f"| **all users** | | | {w['local_only'][hr]:.4f} | {w['federated'][hr]:.4f} | "
                 f"{w['centralized'][hr]:.4f} | {w['federated'][hr] - w['local_only'][hr]:+.4f} | "
                 f"{w['local_only'][ndcg]:.4f} | {w['federated'][ndcg]:.4f} | {w['local_only'][full_hr]:.4f} | "
                 f"{w['federated'][full_hr]:.4f} |")
    return "\n".join(lines)


def plot(result: dict, path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = range(len(rows))
    for offset, kind, label in ((-0.27, "local_only", "alone"), (0.0, "federated", "federated (CKKS)"),
                                (0.27, "centralized", "centralized (pooled)")):
        ax.bar([x + offset for x in xs], [r[kind][metric]["mean"] for r in rows], width=0.27, label=label,
               yerr=[r[kind][metric]["std"] for r in rows], capsize=2)
    ax.set_xticks(list(xs), [f"{r['silo']}\n{r['users']} users" for r in rows], fontsize="small")
    ax.set_ylabel(f"test {metric} (sampled)")
    ax.set_title(f"each silo's users: trained alone vs federated vs pooled (mean ± std, seeds {result['seeds']})")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def log_mlflow(cfg, result: dict, keys: list[str]) -> None:
    from fedrec.orchestration.tracking import mlflow_run

    with mlflow_run(cfg, "local-only-vs-federated", {"kind": "local-only-baseline"}) as run:
        run.log_params({"seeds": ",".join(map(str, result["seeds"]))})
        metrics = {"mean_gain_hr": result["mean_gain_hr"]}
        for r in result["rows"]:
            for kind in ("local_only", "federated", "centralized"):
                metrics |= {f"silo/{r['silo']}/{kind}_{m}": r[kind][m]["mean"] for m in keys}
        run.log_metrics(metrics)
        run.log_dict(result, "local_only.json")


if __name__ == "__main__":
    main()
