"""Language-model item features on ML-100K region silos, federated with CKKS: NeuMF vs the hybrid model, and
popularity, on the same held-out cold items (evaluation.cold_item_fraction = 0.1).

Both federations run with the same seeds, silos, rounds and cold items (HE on); popularity is counted on the same
silos' pooled training data (the split the federation made) and ranks the same cold items. Writes
results/hybrid_bench.json: warm and cold HR@10 / NDCG@10 (sampled and full) of each model, the acceptance checks,
and what the text adapter adds to the encrypted aggregation per round (parameters, bytes per silo, HE seconds).

Everything it writes besides the JSON stays under results/tmp/hybrid_bench/ (its own data split, exchange, MLflow
store and reports): the project's data/ and mlflow.db are not touched.

Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k python bench/hybrid.py [--rounds 40] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from fedrec.core import env
from fedrec.core.config import load_config, parse_overrides
from fedrec.silo import data as pipeline

METRICS = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10")
COLD = tuple(f"cold_{m}" for m in METRICS)
HE_PHASES = ("encrypt", "aggregate", "decrypt")


def main() -> None:
    env.apply_defaults()  # before Prefect or MLflow is first imported
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--work", default="results/tmp/hybrid_bench")
    ap.add_argument("--out", default="results/hybrid_bench.json")
    ap.add_argument("--he-micro-only", action="store_true",
                    help="only (re)measure the adapter's HE cost in isolation and add it to an existing --out")
    args = ap.parse_args()
    if args.he_micro_only:
        result = json.loads(Path(args.out).read_text())
        result["adapter_he_cost_isolated"] = _he_micro(result["adapter_he_cost"])
        print(json.dumps(result["adapter_he_cost_isolated"], indent=2))
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        return
    if not os.environ.get("FEDREC_DATA_DIR"):
        raise SystemExit("set FEDREC_DATA_DIR to the ML-100K directory (e.g. ../shared/datasets/ml-100k)")
    work = Path(args.work).resolve()
    overrides = {
        "data.source": "movielens", "partition.scheme": "region", "federation.he": True,
        "federation.rounds": args.rounds, "evaluation.cold_item_fraction": 0.1,
        "data.work_dir": str(work / "data"), "federation.state_dir": str(work / "state"),
        "federation.exchange_url": str(work / "state" / "exchange"), "operations.reports_dir": str(work / "reports"),
        "tracking.uri": f"sqlite:///{work / 'mlflow.db'}", "tracking.experiment": "fedrec-hybrid-bench",
    } | parse_overrides(args.sets)
    work.mkdir(parents=True, exist_ok=True)
    from fedrec.flows.federated import run_demo

    runs: dict[str, dict] = {}
    for model in ("neumf", "hybrid"):
        ov = overrides | {"model.name": model}
        start = time.perf_counter()
        summary = run_demo(params_path=args.params, overrides=ov, show_progress=True)
        summary["wall_seconds"] = time.perf_counter() - start
        runs[model] = summary
        print(json.dumps({model: _row(summary)}), flush=True)

    from fedrec.orchestration.centralized import run_baseline

    cfg = load_config(args.params, overrides)
    start = time.perf_counter()
    pop = run_baseline(cfg, "pop").to_json()
    pop["wall_seconds"] = time.perf_counter() - start
    print(json.dumps({"pop": _row(pop)}), flush=True)

    result = {"config_overrides": overrides, "cold_items": _cold_count(cfg),
              "models": {"neumf": _row(runs["neumf"]), "hybrid": _row(runs["hybrid"]), "pop": _row(pop)},
              "acceptance": _acceptance(runs["neumf"], runs["hybrid"], pop),
              "adapter_he_cost": _adapter_cost(cfg, runs["neumf"], runs["hybrid"]),
              "runs": runs, "pop": pop}
    result["adapter_he_cost_isolated"] = _he_micro(result["adapter_he_cost"], len(runs["hybrid"]["silos"]))
    print(json.dumps({k: result[k] for k in ("models", "acceptance", "adapter_he_cost")}, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))


def _row(summary: dict) -> dict:
    keep = (*METRICS, *COLD, "selected_round", "seconds_per_round", "bytes_per_round_mean", "wall_seconds")
    return {k: summary[k] for k in keep if k in summary}


def _cold_count(cfg) -> int:
    return int(len(pipeline.split_cold_ids(cfg)))


def _acceptance(neumf: dict, hybrid: dict, pop: dict) -> dict:
    return {
        "warm_hr@10_hybrid_ge_neumf": hybrid["hr@10"] >= neumf["hr@10"],
        "warm_full_hr@10_hybrid_ge_neumf": hybrid["full_hr@10"] >= neumf["full_hr@10"],
        "cold_hr@10_hybrid_ge_2x_neumf": hybrid["cold_hr@10"] >= 2 * neumf["cold_hr@10"],
        "cold_full_hr@10_hybrid_ge_2x_neumf": hybrid["cold_full_hr@10"] >= 2 * neumf["cold_full_hr@10"],
        "cold_hr@10_hybrid_ge_pop": hybrid["cold_hr@10"] >= pop["cold_hr@10"],
        "cold_full_hr@10_hybrid_ge_pop": hybrid["cold_full_hr@10"] >= pop["cold_full_hr@10"],
    }


def _adapter_cost(cfg, neumf: dict, hybrid: dict) -> dict:
    """What the text adapter adds per round: its parameters, ciphertexts, bytes per silo, HE seconds (all silos'
    encryption + the sum + the decryption), measured as hybrid minus NeuMF in the same configuration."""
    from fedrec.core.item_text import model_features
    from fedrec.core.training import model_config
    from fedrec.models import build_model

    hcfg = cfg.replace(**{"model.name": "hybrid"})
    model = build_model(model_config(hcfg.model, 1, len(model_features(hcfg)),
                                     item_features=model_features(hcfg)))
    adapter = sum(t.numel() for k, t in model.shared_state().items() if k.startswith("adapter."))
    total = sum(t.numel() for t in model.shared_state().values())
    slots = cfg.crypto.poly_modulus_degree // 2
    he_s = {m: sum(r["seconds_per_phase"].get(p, 0.0) for p in HE_PHASES) for m, r in (("neumf", neumf),
                                                                                     ("hybrid", hybrid))}
    return {
        "adapter_parameters": adapter, "shared_parameters_hybrid": total,
        "shared_parameters_neumf": total - adapter,
        "extra_ciphertexts_per_silo": math.ceil(total / slots) - math.ceil((total - adapter) / slots),
        "bytes_per_silo_per_round_neumf": neumf["bytes_per_round_mean"],
        "bytes_per_silo_per_round_hybrid": hybrid["bytes_per_round_mean"],
        "added_bytes_per_silo_per_round": hybrid["bytes_per_round_mean"] - neumf["bytes_per_round_mean"],
        "added_fp32_bytes_per_silo_per_round": hybrid["plaintext_fp32_bytes"] - neumf["plaintext_fp32_bytes"],
        "he_seconds_per_round_neumf": he_s["neumf"], "he_seconds_per_round_hybrid": he_s["hybrid"],
        "added_he_seconds_per_round": he_s["hybrid"] - he_s["neumf"],
        "seconds_per_round_neumf": neumf["seconds_per_round"], "seconds_per_round_hybrid": hybrid["seconds_per_round"],
    }


def _he_micro(cost: dict, n_silos: int = 11, repeats: int = 3) -> dict:
    """The HE seconds of one round for NeuMF's and the hybrid's shared-state sizes, measured alone (no training
    beside it): every silo's weighting + quantisation + CKKS encryption, the ciphertext sum, the decryption; the
    median of ``repeats`` rounds each. (Round wall times of the runs above include whatever else the machine ran.)"""
    import statistics

    import numpy as np
    import torch

    from fedrec.core.config import CryptoConfig
    from fedrec.crypto.ckks import CKKSCodec, create_keys
    from fedrec.crypto.updates import (
        LocalUpdate,
        aggregate_updates,
        decrypt_aggregate,
        encrypt_update,
    )

    crypto = CryptoConfig()
    keys = create_keys(crypto)
    slots = crypto.poly_modulus_degree // 2
    silo = CKKSCodec(keys.secret_context, slots, public_context=keys.public_context)
    coordinator = CKKSCodec(keys.public_context, slots)
    rng = np.random.default_rng(0)
    out: dict = {"silos": n_silos, "repeats": repeats}
    for name, size in (("neumf", cost["shared_parameters_neumf"]), ("hybrid", cost["shared_parameters_hybrid"])):
        delta = {"w": torch.from_numpy(rng.normal(scale=1e-3, size=size).astype(np.float32))}
        rounds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            updates = [encrypt_update(LocalUpdate(f"s{i}", 1, 1000, delta), silo, crypto, 1000 * n_silos)
                       for i in range(n_silos)]
            t1 = time.perf_counter()
            aggregate = aggregate_updates(updates, coordinator, 1, crypto)
            t2 = time.perf_counter()
            decrypt_aggregate(aggregate, silo)
            t3 = time.perf_counter()
            rounds.append({"encrypt": t1 - t0, "aggregate": t2 - t1, "decrypt": t3 - t2, "total": t3 - t0,
                           "bytes_per_silo": updates[0].nbytes})
        out[name] = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    out["added_he_seconds_per_round"] = out["hybrid"]["total"] - out["neumf"]["total"]
    out["added_ciphertext_bytes_per_silo"] = out["hybrid"]["bytes_per_silo"] - out["neumf"]["bytes_per_silo"]
    return out


if __name__ == "__main__":
    main()
