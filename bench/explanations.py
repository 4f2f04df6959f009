"""How faithful are the explanations (issue #23)? For sampled users of each silo of a finished run: their top item,
the history items its explanation names ("because you liked ..."), and two counterfactuals, each re-fitting the
user's private vectors from scratch by fold-in (fedrec.core.foldin, item tower frozen):

* removed: the user's history without the named items;
* control: the history without as many other items of the user's history, drawn at random.

Counterfactual success = the share of users whose top item leaves their top k when the named items are removed
(against the control's share); fidelity = the mean drop of the item's standardised score when the named items are
removed, against the control's. Writes results/explanations.json.

Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k .venv/bin/python bench/explanations.py [--users 20] [-S k=v]
       (-S model.personalisation=recency: the recommendations and counterfactuals of the recency head)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

from fedrec.core import env
from fedrec.core.config import load_config, parse_overrides


def main() -> None:
    env.apply_defaults()
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[])
    ap.add_argument("--users", type=int, default=20, help="users sampled per silo")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default="results/explanations.json")
    args = ap.parse_args()
    import numpy as np
    import torch

    from fedrec.core import foldin, recency
    from fedrec.silo import data as pipeline
    from fedrec.silo import personal
    from fedrec.silo.recommend import EXPLAIN_ITEMS, SiloRecommender

    cfg = load_config(args.params, parse_overrides(args.sets))
    rng = np.random.default_rng(0)
    rows = []
    for silo in pipeline.ensure_data(cfg):
        rec = SiloRecommender(cfg, silo)
        base = copy.deepcopy(getattr(rec.model, "model", rec.model))
        space = recency.item_space(base)
        users = [u for u in rec.model_users if len(rec.seen[u]) > 2 * EXPLAIN_ITEMS]
        for user in rng.choice(users, min(args.users, len(users)), replace=False):
            user = int(user)
            local, seen = rec.model_users[user], rec.seen[user]
            history = rec.history[user]

            def refit(items: np.ndarray) -> np.ndarray:
                """Scores after a fold-in from scratch on ``items``; under model.personalisation recency the head
                reads the same reduced history (newest first)."""
                model = copy.deepcopy(base)
                with torch.no_grad():
                    for table in model.users.tables.values():
                        table.weight[local] = 0.01 * torch.randn(table.weight.shape[1],
                                                                 generator=torch.Generator().manual_seed(local))
                foldin.fold_in(model, np.array([local]), [items], steps=60, seed=local)
                scorer = model
                if personal.uses_recency(cfg):
                    kept = history[np.isin(history, items)][:cfg.model.recency_length]
                    padded = np.full((len(rec.model_users), cfg.model.recency_length), -1, dtype=np.int64)
                    padded[local, :len(kept)] = kept
                    scorer = personal.recency_head(model, padded, cfg)
                scores = scorer.full_sort_predict(torch.tensor([local]))[0].numpy().astype(np.float64)
                scores = (scores - scores.mean()) / (scores.std() + 1e-9)
                scores[seen] = -np.inf  # the user's whole history stays excluded
                return scores

            full = refit(seen)
            top = int(np.argmax(full))
            named = [h for h, _ in recency.explain(space, history, top, cfg.model.recency_decay, EXPLAIN_ITEMS)]
            if not named:
                continue
            others = np.setdiff1d(seen, named)
            drawn = rng.choice(others, len(named), replace=False)
            removed, control = refit(np.setdiff1d(seen, named)), refit(np.setdiff1d(seen, drawn))

            def out_of_top(scores: np.ndarray) -> bool:
                return int((scores > scores[top]).sum()) >= args.k

            rows.append({"silo": silo, "named": len(named), "removed_out": out_of_top(removed),
                         "control_out": out_of_top(control), "removed_drop": full[top] - removed[top],
                         "control_drop": full[top] - control[top]})
    result = {"users": len(rows), "k": args.k,
              "counterfactual_success": statistics.fmean(r["removed_out"] for r in rows),
              "control_success": statistics.fmean(r["control_out"] for r in rows),
              "fidelity_score_drop": statistics.fmean(r["removed_drop"] for r in rows),
              "control_score_drop": statistics.fmean(r["control_drop"] for r in rows), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
