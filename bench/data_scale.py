"""Past one machine's size: whole `fedrec run`s (Prefect, GE validation, split, CKKS + masks, MLflow) on synthetic data
shaped like MovieLens-20M (27,278 items, ~145 interactions per user) at growing interaction counts, split IID into
64 silos whose agents run in several silo-host processes.

Per point: provisioning (generate + partition), the whole run, median round, bytes per silo per round, peak RSS of
the whole tree, of the largest single silo-host process (each runs several silos: divided by its silos = per silo) and
of the coordinator's process; a power law y = a * x^b over interactions is fitted to each (log-log least squares).

Usage (results/data_scale.json; BENCHMARKS.md quotes it):

    .venv/bin/python bench/data_scale.py --interactions 1e6,4e6,2e7 [--silos 64] [--rounds 2] [--timeout 7200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from benchkit import (
    RESULTS,
    BenchError,
    RunFailed,
    Workspace,
    begin,
    init_store,
    machine,
    provision_data,
    run_fedrec_summary,
    run_figures,
)
from scaling import fit_power_law

WORK = RESULTS / "tmp" / "data_scale"
ITEMS = 27_278  # MovieLens-20M's catalogue
PER_USER = 145  # MovieLens-20M: 20,000,263 ratings / 138,493 users
DIM = 32


def point_sets(n_interactions: float, n_silos: int) -> list[str]:
    users = max(n_silos * 3, round(n_interactions / PER_USER))
    params = ITEMS * DIM + DIM + 1
    return ["data.source=synthetic", f"data.synthetic.n_users={users}", f"data.synthetic.n_items={ITEMS}",
            "data.synthetic.n_factors=16", f"data.synthetic.interactions_per_user={PER_USER}",
            "partition.scheme=iid", f"partition.n_silos={n_silos}", "model.name=gmf", f"model.embedding_dim={DIM}",
            "federation.local_epochs=1", "federation.he=true", "federation.max_parallel_silos=0",
            "federation.round_timeout_s=7200", "federation.join_timeout_s=7200",
            f"federation.max_payload_bytes={max(268_435_456, 64 * params)}", "training.batch_size=4096"]


def measure(n_interactions: float, n_silos: int, rounds: int, timeout_s: float) -> dict:
    root = WORK / f"i{int(n_interactions)}"
    ws = Workspace(data=root / "data", state=root / "state", mlflow_db=WORK / "mlflow.db")
    sets = point_sets(n_interactions, n_silos)
    point = {"interactions_target": n_interactions, "silos": n_silos, "items": ITEMS}
    try:
        point["provision_s"] = provision_data(ws, sets, root / "provision", timeout_s)
        summary, measured = run_fedrec_summary(rounds, True, ws, sets, root, timeout_s)
        point |= run_figures(summary, measured)
        roles = measured.peak_rss_by_role
        point["coordinator_peak_rss_mb"] = roles.get("root", 0) / 2 ** 20
        point["silo_host_peak_rss_mb"] = roles.get("silo_host", 0) / 2 ** 20
        point["hr@10"] = summary.get("hr@10")
        point["seconds_per_phase"] = summary.get("seconds_per_phase")
    except (RunFailed, BenchError, KeyError) as exc:
        point["error"] = str(exc)[-2000:]
    finally:
        shutil.rmtree(root / "data", ignore_errors=True)
        shutil.rmtree(root / "state", ignore_errors=True)
    return point


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interactions", default="1e6,4e6,2e7")
    ap.add_argument("--silos", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--out", type=Path, default=RESULTS / "data_scale.json")
    args = ap.parse_args(argv)
    command = begin(WORK, "data_scale.py", argv)
    init_store(WORK / "mlflow.db", WORK / "mlflow")
    points = []
    previous = json.loads(args.out.read_text()).get("points", []) if args.out.exists() else []
    for n in (float(x) for x in args.interactions.split(",")):
        print(f"[data_scale] {n:,.0f} interactions, {args.silos} silos, {ITEMS} items", flush=True)
        start = time.perf_counter()
        point = measure(n, args.silos, args.rounds, args.timeout)
        print(f"[data_scale]    {json.dumps(point)} ({time.perf_counter() - start:.0f} s)", flush=True)
        points.append(point)
    kept = {p["interactions_target"]: p for p in previous if not p.get("error")}
    kept |= {p["interactions_target"]: p for p in points}
    ok = sorted((p for p in kept.values() if not p.get("error")), key=lambda p: p["interactions_target"])
    fits = {}
    for key in ("median_round_s", "total_wall_s", "bytes_per_silo_round", "peak_rss_mb", "coordinator_peak_rss_mb",
                "silo_host_peak_rss_mb", "provision_s"):
        xs = [p["interactions_target"] for p in ok if p.get(key)]
        fits[key] = fit_power_law(xs, [p[key] for p in ok if p.get(key)]) if len(xs) >= 2 else None
    result = {"command": command.strip(), "machine": machine(), "rounds": args.rounds, "items": ITEMS,
              "model": {"name": "gmf", "embedding_dim": DIM, "shared_params": ITEMS * DIM + DIM + 1},
              "points": sorted(kept.values(), key=lambda p: p["interactions_target"]), "fits": fits}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(markdown(result), flush=True)
    return result



def markdown(result: dict) -> str:
    """The BENCHMARKS.md section for ``result``."""
    rows = ["| interactions | users | provision (s) | whole run (s) | mean round (s) | bytes/silo/round | peak RSS all "
            "(MB) | silo host (MB) | coordinator (MB) | HR@10 | status |", "|" + " --- |" * 11]
    for p in result["points"]:
        n = p["interactions_target"]
        if p.get("error"):
            rows.append(f"| {n:,.0f} | | | | | | | | | | failed: {p['error'][:80]} |")
            continue
        rows.append(f"| {n:,.0f} | {round(n / PER_USER):,} | {p['provision_s']:.0f} | {p['total_wall_s']:.0f} | "
                    f"{p['median_round_s']:.1f} | {p['bytes_per_silo_round'] / 1e6:.2f} MB | {p['peak_rss_mb']:,.0f} | "
                    f"{p['silo_host_peak_rss_mb']:,.0f} | {p['coordinator_peak_rss_mb']:,.0f} | {p['hr@10']:.4f} | ok |")
    fits = ", ".join(f"{k} b = {f['b']:.2f}" for k, f in result["fits"].items() if f)
    return "\n".join(rows) + f"\n\nGrowth exponents over interactions (y ≈ a·x^b): {fits}.\n"


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"data_scale: {exc}")
