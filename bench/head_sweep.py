"""The recency head's settings chosen on the federation's validation item (issue #19): one federated run
(CKKS + masks, params.yaml's defaults, ``model.personalisation: recency``), then, on its last round's model, every
silo scores its own users' validation items under each (length, decay, weight) of a grid; the setting with the best
pooled validation HR@10 is reported with its test figures beside the defaults'. The test item selects nothing.

Writes results/head_sweep.json. Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k .venv/bin/python
bench/head_sweep.py [--seed 0] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from fedrec.core import env
from fedrec.core.config import load_config, parse_overrides


def main() -> None:
    env.apply_defaults()
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-id", default="", help="score an earlier run's models instead of training one")
    ap.add_argument("--lengths", default="5,10,20,40")
    ap.add_argument("--decays", default="0.3,0.5,0.7,0.85")
    ap.add_argument("--weights", default="0.25,0.5,0.75,1.0,1.5,2.0")
    ap.add_argument("--out", default="results/head_sweep.json")
    args = ap.parse_args()
    import torch

    from fedrec.core import recency
    from fedrec.core.item_text import model_features
    from fedrec.core.metrics import MetricSums
    from fedrec.core.training import evaluate_targets, model_config
    from fedrec.flows.federated import run_demo
    from fedrec.models import build_model
    from fedrec.protocol.reads import load_global
    from fedrec.silo import data as pipeline
    from fedrec.silo.paths import Paths
    from fedrec.silo.store import SiloStore
    from fedrec.wire.exchange import global_key, run_exchange

    overrides = parse_overrides(args.sets) | {"model.personalisation": "recency", "federation.seed": args.seed,
                                               "training.seeds": [args.seed]}
    cfg = load_config(args.params, overrides)
    started = time.perf_counter()
    run_id = args.run_id or run_demo(params_path=args.params, overrides=overrides)["run_id"]
    exchange = run_exchange(cfg, run_id)
    last = cfg.federation.rounds
    while last > 0 and not exchange.exists(global_key(last)):
        last -= 1
    shared = load_global(exchange, last)
    k = cfg.evaluation.k
    grid = list(itertools.product([int(x) for x in args.lengths.split(",")],
                                  [float(x) for x in args.decays.split(",")],
                                  [float(x) for x in args.weights.split(",")]))
    default = (cfg.model.recency_length, cfg.model.recency_decay, cfg.model.recency_weight)
    grid = grid + [default] if default not in grid else grid
    sums = {g: {"val": MetricSums(), "test": MetricSums()} for g in grid}
    plain = {"val": MetricSums(), "test": MetricSums()}
    trained = [s for s in pipeline.list_silos(Paths.of(cfg).silos) if SiloStore.of(cfg, s, run_id).model_path.exists()]
    for silo in trained:
        data = pipeline.load_silo_data(cfg, silo)
        model = build_model(model_config(cfg.model, data.n_users, data.n_items, task=cfg.task,
                                         item_features=model_features(cfg)))
        model.users.load_state_dict(torch.load(SiloStore.of(cfg, silo, run_id).model_path,
                                               weights_only=True)["users"])
        model.load_shared_state(shared)
        model.eval()
        got = evaluate_targets(model, data, k, ("val", "test"), True)
        plain = {t: plain[t] + got[t] for t in plain}
        space = recency.item_space(model)
        for length, decay, weight in grid:
            history = recency.recent_items(data.train_users, data.train_items, data.n_users, length)
            scorer = recency.RecencyScorer(model, history, decay, weight,
                                           {"val": history, "test": recency.with_latest(history, data.val_items)},
                                           space=space)
            got = evaluate_targets(scorer, data, k, ("val", "test"), True)
            sums[(length, decay, weight)] = {t: sums[(length, decay, weight)][t] + got[t] for t in ("val", "test")}
        print(f"[head_sweep] silo {silo} scored", flush=True)
    rows = [{"length": g[0], "decay": g[1], "weight": g[2], "val": s["val"].means(k), "test": s["test"].means(k)}
            for g, s in sums.items()]
    best = max(rows, key=lambda r: r["val"][f"hr@{k}"])
    defaults = next(r for r in rows if (r["length"], r["decay"], r["weight"]) == default)
    result = {"run_id": run_id, "seed": args.seed, "round": last, "overrides": overrides,
              "no_head": {t: s.means(k) for t, s in plain.items()}, "defaults": defaults, "best_on_val": best,
              "grid": rows, "seconds": time.perf_counter() - started}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for name in ("no_head", "defaults", "best_on_val"):
        r = result[name]
        print(f"{name}: {json.dumps({kk: r[kk] for kk in ('length', 'decay', 'weight') if kk in r})} "
              f"val hr {r['val'][f'hr@{k}']:.4f} test hr {r['test'][f'hr@{k}']:.4f} ndcg {r['test'][f'ndcg@{k}']:.4f} "
              f"full hr {r['test'][f'full_hr@{k}']:.4f}")


if __name__ == "__main__":
    main()
