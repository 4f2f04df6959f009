"""The attack suite (issue #20): one or two malicious silos against a federation on ML-100K region silos, through the
real protocol (signed payloads, SecAgg masks, CKKS), every silo agent in one process (fedrec.orchestration.attacks).

Rows: the clean run, then each attack by the malicious silo(s): scale x100, x-100, sign flip, Gaussian noise, a stale
update, targeted promotion of a cold item (model poisoning), fake users (data poisoning) and an attacker who knows the
defence (lie: small shifts inside the honest spread, every round; sneak: promotion whose target rows stay just inside
the row guard: 2 x the others' row, times the ~2 by which its group mates dilute its share: 3.6 own median rows; rig:
a sign flip whose silo also lies in every vote of the vetting, to keep its group in); and
absent: the malicious silo(s) never join, the federation of the others, i.e. the best any defence that leaves them
out can give the honest silos' users. For each: test HR@10 / NDCG@10 at the round chosen on validation and after the
last round; for the targeted rows the target item's exposure ER@10 (the share of honest users with it in their top 10)
beside the clean run's.

Writes results/attacks.json and prints a Markdown table (README, BENCHMARKS.md).

Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k .venv/bin/python bench/attacks.py [--malicious 9] [--rounds 40]
       [--attacks clean,scale,...] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedrec.core import env
from fedrec.core.config import load_config, parse_overrides

#: row -> (attack kind, factor)
ROWS = {"clean": ("none", 1.0), "scale": ("scale", 100.0), "scale_neg": ("scale", -100.0),
        "signflip": ("signflip", -1.0), "noise": ("noise", 10.0), "stale": ("stale", 1.0),
        "promote": ("promote", 30.0), "fakeusers": ("fakeusers", 30.0), "lie": ("lie", 1.5),
        "absent": ("absent", 0.0), "sneak": ("sneak", 3.6), "rig": ("rig", -1.0)}


def main() -> None:
    env.apply_defaults()
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[])
    ap.add_argument("--malicious", default="9", help="comma-separated malicious silo ids")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--attacks", default=",".join(ROWS))
    ap.add_argument("--out", default="results/attacks.json")
    args = ap.parse_args()
    import numpy as np

    from fedrec.orchestration.attacks import Attack, run_in_process
    from fedrec.silo import data as pipeline

    cfg = load_config(args.params, parse_overrides(args.sets))
    data = pipeline.load_union(cfg, pipeline.ensure_data(cfg))
    counts = np.bincount(data.train_items, minlength=data.n_items)
    # a cold, unpopular item: the first (by catalogue order) with exactly two training interactions
    target = int(np.flatnonzero(counts == 2)[0])
    malicious = [s for s in args.malicious.split(",") if s]
    k = cfg.evaluation.k
    out, rows = Path(args.out), {}
    out.parent.mkdir(parents=True, exist_ok=True)
    for row in [r for r in args.attacks.split(",") if r]:
        kind, factor = ROWS[row]
        attacks = {} if kind == "none" else {s: Attack(kind, factor=factor, target=target) for s in malicious}
        start = time.perf_counter()
        result = run_in_process(cfg, attacks, rounds=args.rounds, target=target)
        result["seconds"] = time.perf_counter() - start
        result["honest_users"] = honest_metrics(result, malicious)
        rows[row] = result
        print(json.dumps({"row": row, "selected_round": result["selected_round"],
                          f"hr@{k}": result["selected"][f"hr@{k}"], f"last_hr@{k}": result["last"][f"hr@{k}"],
                          f"honest_hr@{k}": result["honest_users"].get(f"hr@{k}"),
                          "exposure": result["exposure"], "seconds": round(result["seconds"], 1)}), flush=True)
        out.write_text(json.dumps({"malicious": malicious, "target_item": target, "target_train_count": 2,
                                   "rounds": args.rounds, "rows": rows}, indent=2))
    print(markdown(rows, k))


def honest_metrics(result: dict, malicious: list[str]) -> dict[str, float]:
    """The selected round's test metrics over the honest silos' users only (the malicious silos' own users left out
    of every row, the clean one included, so rows compare the same users): what the federation owes its members."""
    per, users = result.get("per_silo_selected") or {}, result.get("silo_users") or {}
    honest = [s for s in per if s not in malicious and users.get(s)]
    total = sum(users[s] for s in honest)
    if not total:
        return {}
    return {m: sum(per[s][m] * users[s] for s in honest) / total for m in per[honest[0]]}


def markdown(rows: dict, k: int) -> str:
    lines = [f"| run | selected round | HR@{k} (selected) | NDCG@{k} | HR@{k}, honest silos' users | "
             f"HR@{k} (last round) | target ER@{k} |", "|---|---|---|---|---|---|---|"]
    for row, r in rows.items():
        honest = r.get("honest_users", {}).get(f"hr@{k}")
        lines.append(f"| {row} | {r['selected_round']} | {r['selected'][f'hr@{k}']:.4f} | "
                     f"{r['selected'][f'ndcg@{k}']:.4f} | {'–' if honest is None else f'{honest:.4f}'} | "
                     f"{r['last'][f'hr@{k}']:.4f} | {r['exposure']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
