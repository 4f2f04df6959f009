"""How much of a full retraining's gain does fold-in recover for users who just gave feedback (issue #23)?

The feedback loop as a silo lives it, on ML-100K region silos, through the real pipeline:

1. The data is provisioned into a scratch workspace (`fedrec prepare`, `fedrec partition`).
2. Feedback users: in each silo, ``--share`` of the users with at least ``--min-history`` interactions, drawn at
   random; their ``--m`` latest interactions before their validation and test items (the last two by time, as the
   leave-one-out split orders them) are taken out of the silo's data and kept back as their feedback.
3. Run A (`fedrec run`, the project's defaults, CKKS + masks): the model before the feedback.
4. "Folded in": the feedback users' private vectors refitted by `fedrec serve`'s fold-in (fedrec.core.foldin with
   its defaults, the item tower frozen) on their history plus the feedback, without their validation and test
   items (serving folds in everything a user did; here that would include the item the evaluation hides). Then
   the kept rows go in through the real feedback path (`append_feedback`: validated with the silo's suite,
   appended as a batch), and a fresh recommender is checked to fold them into exactly those users' vectors.
5. Run B (`fedrec run` again): the next federated run trains on the batch: "retrained".

Each feedback user's test item is ranked among 99 items the user never touched (drawn once, the same for the three
models); HR@10 / NDCG@10 before, folded in and retrained, and share = (folded − before) / (retrained − before)
of the seeds' mean gains. A control refits the same users' vectors the same way without the feedback (how much of
the fold-in's gain is the refit itself).
Users without feedback are reported too (the retrain moves them as well). Writes results/foldin_gain.json.

Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k .venv/bin/python bench/foldin_gain.py [--m 10] [--share 0.5]
       [--rounds 40] [--seeds 0,1,2] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchkit import (  # bench/benchkit.py (this script's directory is on sys.path)
    RESULTS,
    ROOT,
    ROW_TIMEOUT_S,
    Workspace,
    as_sets,
    begin,
    init_store,
    provision_data,
    run_fedrec_summary,
)

WORK = ROOT / ".bench" / "foldin_gain"


def held_out_feedback(frame, m: int, share: float, min_history: int, seed: int, rng):
    """(the silo's rows without the feedback, the feedback rows, its users' validation and test items by user): ``m``
    latest training rows of a drawn ``share`` of the users with at least ``min_history`` interactions (the last two,
    validation and test, stay)."""
    import numpy as np

    from fedrec.core.data.split import leave_one_out

    train, holdout = leave_one_out(frame, seed)  # ordered by user, time, tie-break
    sizes = frame.groupby("user_id").size()
    eligible = np.sort(sizes[sizes >= min_history].index.to_numpy())
    chosen = rng.choice(eligible, int(round(share * len(eligible))), replace=False)
    rank_from_end = train.groupby("user_id").cumcount(ascending=False)
    feedback = train[train["user_id"].isin(chosen) & (rank_from_end < m)]
    key = ["user_id", "item_id", "timestamp"]
    kept = frame.merge(feedback[key].assign(_fb=True), on=key, how="left")
    return (frame[kept["_fb"].isna().to_numpy()].reset_index(drop=True), feedback.reset_index(drop=True),
            holdout.set_index("user_id"))


def ranks(rec, users, test_items, negatives, model=None) -> list[int]:
    """The rank (0 = best) of each user's test item among its negatives under ``model`` (default: ``rec``'s)."""
    import numpy as np
    import torch

    index = {int(i): j for j, i in enumerate(rec.catalogue["item_id"].to_numpy(np.int64))}
    with torch.no_grad():
        scores = (model or rec.model).full_sort_predict(torch.tensor([rec.model_users[u] for u in users]))
    scores = scores.cpu().numpy()
    out = []
    for row, test, negs in zip(scores, test_items, negatives):
        candidates = row[[index[int(i)] for i in negs]]
        out.append(int((candidates > row[index[int(test)]]).sum()))
    return out


def metrics(rank_list, k: int) -> dict:
    import numpy as np

    r = np.asarray(rank_list)
    return {"hr@10": float((r < k).mean()), "ndcg@10": float(np.where(r < k, 1 / np.log2(r + 2), 0).mean())}


def run_seed(seed: int, args) -> dict:
    """One seed: provision, hold the feedback back, run A, fold in, feed back, run B; the three models' metrics."""
    import copy

    import numpy as np
    import pandas as pd

    from fedrec.core import foldin
    from fedrec.core.config import load_config, parse_overrides
    from fedrec.core.data.split import sample_user_negatives
    from fedrec.silo import data as pipeline
    from fedrec.silo import personal
    from fedrec.silo.feedback import append_feedback
    from fedrec.silo.recommend import SiloRecommender

    ws = Workspace.under(WORK / f"seed-{seed}")
    logs = WORK / f"seed-{seed}" / "logs"
    sets = [f"training.seeds=[{seed}]", *args.sets]
    provision_data(ws, sets, logs)
    init_store(ws.mlflow_db, logs / "store")
    cfg = load_config(str(ROOT / "params.yaml"), parse_overrides(ws.overrides()[1::2] + as_sets(sets)[1::2]))
    if personal.uses_recency(cfg) or cfg.model.personalisation != "none":
        raise SystemExit("foldin_gain.py measures the shared model's fold-in: model.personalisation none")
    rng = np.random.default_rng(seed)
    catalogue = pipeline.catalogue_ids(cfg)
    plan = {}  # silo -> (feedback rows, users, their test items, their negatives)
    for silo in sorted(pipeline.silo_sizes(cfg)):
        base = pipeline.silo_base_file(cfg, silo)
        full = pd.read_parquet(base)
        kept, feedback, holdout = held_out_feedback(full, args.m, args.share, args.min_history, cfg.evaluation.seed,
                                                    rng)
        users = sorted(int(u) for u in holdout.index)
        negatives = {u: sample_user_negatives(full.loc[full["user_id"] == u, "item_id"].to_numpy(np.int64),
                                              catalogue, 99, seed + 1, u) for u in users}
        kept.to_parquet(base, index=False)  # the silo's data before the feedback
        plan[silo] = (feedback, users, holdout, negatives, set(feedback["user_id"].astype(int)))
    for marker in (pipeline.Paths.of(cfg).validation / "summary.json",):
        marker.unlink(missing_ok=True)  # validated and split again from the reduced data
    started = time.perf_counter()
    summary_a, _ = run_fedrec_summary(args.rounds, True, ws, sets, logs / "run_a", ROW_TIMEOUT_S)
    before, refit, folded, retrained = {}, {}, {}, {}
    for silo, (feedback, users, holdout, negatives, fb_users) in plan.items():
        rec = SiloRecommender(cfg, silo)
        before[silo] = ranks(rec, users, holdout.loc[users, "test_item"], [negatives[u] for u in users])
        # the fold-in `fedrec serve` runs on POST /feedback (fedrec.core.foldin, its defaults), on each feedback user's
        # history without the validation and test items: serving folds in everything the user did, which here would
        # include the very item the evaluation hides
        index = pd.Series(np.arange(len(rec.catalogue)), index=rec.catalogue["item_id"].to_numpy(np.int64))
        held = set(zip(holdout.index, holdout["val_item"])) | set(zip(holdout.index, holdout["test_item"]))
        full = pd.concat([pd.read_parquet(pipeline.silo_base_file(cfg, silo)), feedback], ignore_index=True)
        keep = np.array([(u, i) not in held for u, i in zip(full["user_id"], full["item_id"])])
        histories = full[keep].groupby("user_id")["item_id"].agg(lambda s: index[s.to_numpy(np.int64)].to_numpy())
        without = full[keep & ~np.r_[np.zeros(len(full) - len(feedback), bool), np.ones(len(feedback), bool)]]
        histories_before = without.groupby("user_id")["item_id"].agg(
            lambda s: index[s.to_numpy(np.int64)].to_numpy())
        who = sorted(fb_users)
        local = np.array([rec.model_users[u] for u in who])
        control, model = copy.deepcopy(rec.model), copy.deepcopy(rec.model)
        foldin.fold_in(control, local, [histories_before[u] for u in who], seed=1)  # the same refit, no feedback
        foldin.fold_in(model, local, [histories[u] for u in who], seed=1)
        refit[silo] = ranks(rec, users, holdout.loc[users, "test_item"], [negatives[u] for u in users], control)
        folded[silo] = ranks(rec, users, holdout.loc[users, "test_item"], [negatives[u] for u in users], model)
        if len(feedback):  # the real feedback path: validated, appended; the next run trains on it
            append_feedback(cfg, silo, feedback[["user_id", "item_id", "rating", "timestamp"]],
                            record_dvc=False)  # the scratch workspace is not the project's DVC data
        served = SiloRecommender(cfg, silo)  # and serving folds the new batch into exactly those users' vectors
        assert set(served.folded_in) == fb_users, (silo, len(served.folded_in), len(fb_users))
    summary_b, _ = run_fedrec_summary(args.rounds, True, ws, sets, logs / "run_b", ROW_TIMEOUT_S)
    for silo, (feedback, users, holdout, negatives, fb_users) in plan.items():
        rec = SiloRecommender(cfg, silo)  # run B: its model trained on the feedback
        assert rec.run_id == summary_b["run_id"] and not rec.folded_in, (rec.run_id, rec.folded_in)
        retrained[silo] = ranks(rec, users, holdout.loc[users, "test_item"], [negatives[u] for u in users])

    def pooled(table, who) -> list[int]:
        return [r for silo, (_, users, _, _, fb) in plan.items() for u, r in zip(users, table[silo]) if who(u, fb)]

    groups = {"feedback users": lambda u, fb: u in fb, "other users": lambda u, fb: u not in fb}
    result = {"m": args.m, "share": args.share, "min_history": args.min_history,
              "rounds": args.rounds, "seed": seed, "runs": [summary_a["run_id"], summary_b["run_id"]],
              "feedback_rows": int(sum(len(p[0]) for p in plan.values())), "wall_s": time.perf_counter() - started}
    for name, who in groups.items():
        row = {"users": len(pooled(before, who))}
        for label, table in (("before", before), ("refit_without_feedback", refit), ("folded_in", folded),
                             ("retrained", retrained)):
            row[label] = metrics(pooled(table, who), 10)
        for metric in ("hr@10", "ndcg@10"):
            gain = row["retrained"][metric] - row["before"][metric]
            row[f"share_of_retrain_gain_{metric}"] = (
                (row["folded_in"][metric] - row["before"][metric]) / gain if abs(gain) > 1e-12 else None)
        result[name] = row
    print(json.dumps({k: v for k, v in result.items() if k != "command"}, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=10, help="feedback interactions per feedback user")
    ap.add_argument("--share", type=float, default=0.5, help="share of eligible users who give feedback")
    ap.add_argument("--min-history", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2])
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", default=str(RESULTS / "foldin_gain.json"))
    args = ap.parse_args(argv)
    command = begin(WORK, "foldin_gain.py", argv)

    import numpy as np

    from fedrec.core import env

    env.apply_defaults()
    per_seed = [run_seed(seed, args) for seed in args.seeds]
    summary = {}
    for group in ("feedback users", "other users"):
        summary[group] = {}
        for label in ("before", "refit_without_feedback", "folded_in", "retrained"):
            for metric in ("hr@10", "ndcg@10"):
                values = [r[group][label][metric] for r in per_seed]
                summary[group][f"{label} {metric}"] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
        for metric in ("hr@10", "ndcg@10"):
            gains = [(r[group]["folded_in"][metric] - r[group]["before"][metric],
                      r[group]["retrained"][metric] - r[group]["before"][metric]) for r in per_seed]
            fold, full = float(np.mean([g[0] for g in gains])), float(np.mean([g[1] for g in gains]))
            summary[group][f"share_of_retrain_gain {metric}"] = fold / full if abs(full) > 1e-12 else None
    result = {"command": command, "seeds": args.seeds, "summary": summary, "per_seed": per_seed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
