"""Round time of fedrec's separate parties against Flower 1.32 on the same work, measured in one go.

The work (the yardstick in ../shared/bench/flower_reference/): NeuMF, E=1, 11 ML-100K region silos, 10 rounds,
plaintext aggregation, evaluation only after the last round. Rows, one after another (never side by side):

1. Flower simulation (2 Ray actors), in its own virtual environment (Flower cannot share one with prefect);
2. the bare single-process PyTorch loop of the same yardstick;
3. fedrec plaintext; 4. fedrec CKKS; 5. fedrec plaintext with evaluation every round.

Each fedrec row is a whole `fedrec run` (a fresh Prefect server, silo host processes, MLflow), timed end to end.
Writes results/round_time_bench.json and a PNG. Usage (see README "Results"):

    FLOWER_VENV=/path/to/.venv-flower .venv/bin/python bench/round_time.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF = (ROOT / ".." / "shared" / "bench" / "flower_reference").resolve()


def _flower(venv: Path, script: str, args: list[str], tag: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="flower-"))
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    start = time.time()
    subprocess.run([str(venv / "bin" / "python"), str(REF / script), *args, "--tag", tag], cwd=work, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    out = json.loads((work / f"{tag}.json").read_text())
    out["wall_seconds_process"] = time.time() - start
    return out


def _fedrec(rounds: int, he: bool, eval_every: int, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="fedrec-")) / "summary.json"
    cmd = [str(ROOT / ".venv" / "bin" / "fedrec"), "run", "--rounds", str(rounds), "--out", str(out), "--json",
           "-S", f"federation.eval_every={eval_every}", *extra] + ([] if he else ["--no-he"])
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads(out.read_text())
    summary["wall_seconds_process"] = time.time() - start
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--flower-venv", default=os.environ.get("FLOWER_VENV"))
    ap.add_argument("--out", default=str(ROOT / "results" / "round_time_bench.json"))
    ap.add_argument("-S", dest="sets", action="append", default=[], help="extra fedrec overrides")
    args = ap.parse_args()
    extra = [x for s in args.sets for x in ("-S", s)]
    rows: dict[str, dict] = {}
    if args.flower_venv:
        venv = Path(args.flower_venv)
        flower = _flower(venv, "flower_ref.py", ["--rounds", str(args.rounds), "--supernodes", "11",
                                                 "--num-cpus", "1"], "flower")
        rows["flower"] = {"median_round": flower["median_round_wall"], "total_wall": flower["t_total_wall_from_exec"],
                          "rounds_sum": flower["sum_round_wall"], "final": flower.get("final")}
        bare = _flower(venv, "flower_ref_bare.py", ["--rounds", str(args.rounds)], "bare")
        rows["bare_loop"] = {"median_round": bare["median_train_agg"], "total_wall": bare["t_total_wall_from_exec"],
                             "rounds_sum": bare["sum_train_agg"], "final": bare.get("final")}
    last_eval = 10 ** 6
    for name, he, every in (("fedrec_plain", False, last_eval), ("fedrec_ckks", True, last_eval),
                            ("fedrec_plain_eval_every_round", False, 1)):
        s = _fedrec(args.rounds, he, every, extra)
        rows[name] = {"median_round": s["seconds_per_round_median"], "mean_round": s["seconds_per_round"],
                      "total_wall": s["wall_seconds_process"], "hr@10": s["hr@10"],
                      "bytes_per_silo_round": s["bytes_per_round_mean"], "phases": s["seconds_per_phase"]}
        print(name, json.dumps(rows[name]), flush=True)
    if "flower" in rows:
        for name in [n for n in rows if n.startswith("fedrec")]:
            rows[name]["median_round_vs_flower"] = rows[name]["median_round"] / rows["flower"]["median_round"]
            rows[name]["total_wall_vs_flower"] = rows[name]["total_wall"] / rows["flower"]["total_wall"]
    rows["fedrec_ckks"]["median_round_vs_plain"] = rows["fedrec_ckks"]["median_round"] / rows["fedrec_plain"]["median_round"]
    result = {"rounds": args.rounds, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{os.cpu_count()} cores", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(rows, indent=1))
    plot(rows, Path(args.out).with_suffix(".png"))


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.barh(names, [rows[n]["median_round"] for n in names], color="tab:blue")
    a.set_xlabel("median round wall time (s)")
    b.barh(names, [rows[n]["total_wall"] or 0 for n in names], color="tab:orange")
    b.set_xlabel("total wall time incl. start-up (s)")
    for ax in (a, b):
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
