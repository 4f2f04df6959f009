"""The one-command benchmark (`make bench`): fedrec against Flower and centralized training, on the same work.

The work: ML-100K region silos (11), NeuMF with the project's defaults, R rounds (default 10) of one local epoch,
evaluation only after the last round, the configured seed. Rows, run one after another (never side by side), the
yardsticks right after ``fedrec_he`` (this machine's speed drifts by tens of per cent within minutes):

1. ``fedrec_he``: ``fedrec run`` with CKKS aggregation;
2. ``bare_loop``: the yardstick's single-process PyTorch loop (flower_ref_bare.py), and ``flower``: Flower FedAvg, the
   yardstick in ../shared/bench/flower_reference (flower_ref.py), both in their own virtual environment
   ``$FLOWER_VENV`` (skipped, with the reason printed, when unset or missing);
3. ``fedrec_plain``: the same as 1 with ``--no-he``; ``fedrec_he_robust``: 1 with the robust rule;
4. ``centralized``: ``fedrec centralized --model neumf`` for R epochs (one epoch per round).

The limit of a round: the silos' training split over the machine's cores. Stated two ways: against the bare loop's
round (another process, run right after) and against the run's own training CPU (each silo's training thread's CPU
seconds, summed per round: the same work, measured in the same seconds as the round, whatever the machine's speed).

Measured per row: median round wall time, the whole process's wall time, bytes each silo sends per round, the peak
of the summed RSS of the whole process tree (sampled every 0.2 s), sampled and full-ranking HR@10 / NDCG@10.
Ratios: every row against ``fedrec_plain`` and against ``flower``; the HE bytes against the fp32 shared parameters.

Writes results/bench.json, results/bench.png and the ``bench`` section of BENCHMARKS.md (``--scaling`` adds the
``scaling`` section from bench/scaling.py). Usage (the project's venv; FLOWER_VENV is optional):

    FLOWER_VENV=/path/to/.venv-flower .venv/bin/python bench/harness.py [--rounds 10] [--quick] [--scaling]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import scaling  # bench/scaling.py
from benchkit import (  # bench/benchkit.py (this script's directory is on sys.path)
    BENCH_MD,
    FLOWER_ENV,
    FLOWER_METRICS,
    METRICS,
    REF,
    RESULTS,
    ROOT,
    ROW_TIMEOUT_S,
    SAMPLE_S,
    BadArgument,
    BenchError,
    K,
    Measured,
    Workspace,
    begin,
    checked,
    child_env,
    fedrec_cmd,
    fmt,
    fmt_bytes,
    init_store,
    machine,
    markdown_table,
    process_figures,
    provision_data,
    read_json,
    replace_section,
    run_fedrec_summary,
    run_figures,
    run_measured,
    shown_path,
)

#: the robust row's settings: 3 groups of >= min_silos, each its own masked CKKS sum, vetted by the silos (candidate
#: models with and without each group scored on their validation users before the round's model is published)
ROBUST_SETS = ["federation.groups=3", "federation.robust_rule=vetted"]
WORK = RESULTS / "tmp" / "bench"  # git-ignored scratch: data, state and MLflow store of the benchmark's runs


# -------------------------------------------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One benchmark row; ``None`` where the row has no such figure (see ``notes``)."""

    name: str
    median_round_s: float | None = None
    total_wall_s: float | None = None
    bytes_per_silo_round: float | None = None
    peak_rss_mb: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    shared_params: int | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    process: dict | None = None
    raw: dict | None = None


def _measured_row(name: str, measured: Measured, **fields) -> Row:
    return Row(name=name, process={k: v for k, v in asdict(measured).items() if k != "stderr_tail"},
               **(process_figures(measured) | fields))


def fedrec_row(name: str, he: bool, rounds: int, ws: Workspace, sets: list[str], timeout_s: float) -> Row:
    """fedrec federated training, CKKS (``he``) or plaintext aggregation, on a fresh state directory."""
    row_dir = WORK / name
    summary, measured = run_fedrec_summary(rounds, he, ws.with_state(row_dir / "state"), sets, row_dir, timeout_s)
    return _measured_row(name, measured, **run_figures(summary, measured),
                         metrics={m: summary.get(f"{m}@{K}") for m in METRICS}, raw=summary)


def centralized_row(rounds: int, ws: Workspace, sets: list[str], seed: int, timeout_s: float) -> Row:
    """`fedrec centralized --model neumf` on the pooled silos, one epoch per federated round (no early stop)."""
    row_dir = WORK / "centralized"
    out = row_dir / "centralized.json"
    args = ["--model", "neumf", "--epochs", str(rounds), "--seeds", str(seed), "--json", "--out", str(out)]
    cmd = fedrec_cmd("centralized", args, ws.with_state(row_dir / "state"), [f"training.patience={rounds}", *sets])
    measured = checked("fedrec centralized", run_measured(cmd, cwd=ROOT, env=child_env(), timeout_s=timeout_s,
                                                          log_dir=row_dir))
    report = read_json(out, "fedrec centralized")
    return _measured_row("centralized", measured, median_round_s=report["seconds_per_epoch"],
                         metrics={m: report.get(f"{m}@{K}") for m in METRICS}, raw=report,
                         notes=["round = one epoch: mean training seconds per epoch (evaluation excluded)",
                                "test metrics of the epoch selected on validation", "nothing is sent"])


def flower_venv_problem(venv: Path | None) -> str | None:
    """Why the Flower rows cannot run, or None."""
    if venv is None:
        return "FLOWER_VENV is not set"
    if not (venv / "bin" / "python").exists():
        return f"FLOWER_VENV={venv} has no bin/python"
    if not REF.is_dir():
        return f"the Flower yardstick is missing: {REF}"
    return None


def run_yardstick(venv: Path, script: str, args: list[str], tag: str, timeout_s: float) -> tuple[dict, Measured]:
    """One script of the Flower yardstick in its own venv and scratch directory; returns its JSON and measurement."""
    row_dir = WORK / tag
    scratch = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=WORK))
    cmd = [str(venv / "bin" / "python"), str(REF / script), *args, "--tag", tag]
    env = child_env(FLOWER_ENV)
    env.pop("PYTHONPATH")  # the yardstick imports nothing of fedrec
    measured = checked(script, run_measured(cmd, cwd=scratch, env=env, timeout_s=timeout_s, log_dir=row_dir))
    return read_json(scratch / f"{tag}.json", script), measured


def _flower_metrics(out: dict) -> dict[str, float | None]:
    final = out.get("final") or {}
    return {m: final.get(key) for m, key in FLOWER_METRICS.items()}


def flower_row(venv: Path, rounds: int, silos: int, timeout_s: float) -> Row:
    """Flower simulation (Ray, 1 CPU per client) of the same FedAvg; bytes = item-side params x 4 (fp32)."""
    out, measured = run_yardstick(venv, "flower_ref.py", ["--rounds", str(rounds), "--supernodes", str(silos),
                                                          "--num-cpus", "1"], "flower", timeout_s)
    params = out.get("n_item_side_params")
    notes = ["bytes/silo/round computed as n_item_side_params x 4 B (fp32, one direction): Flower's JSON has no "
             "byte count"] if params else ["Flower's JSON has no n_item_side_params: no byte figure"]
    return _measured_row("flower", measured, median_round_s=out["median_round_wall"],
                         bytes_per_silo_round=4.0 * params if params else None, metrics=_flower_metrics(out),
                         shared_params=params, notes=notes, raw=_without(out, "client_timing", "per_round_client"))


def bare_row(venv: Path, rounds: int, timeout_s: float) -> Row:
    """The yardstick's bare single-process PyTorch FedAvg loop (silos trained one after another)."""
    out, measured = run_yardstick(venv, "flower_ref_bare.py", ["--rounds", str(rounds)], "bare_loop", timeout_s)
    return _measured_row("bare_loop", measured, median_round_s=out["median_train_agg"], metrics=_flower_metrics(out),
                         notes=["one process: nothing is sent"], raw=_without(out, "rounds"))


def _without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def attempt(name: str, make_row) -> Row:
    """Run one row; a failure becomes a row with its error, and the benchmark goes on."""
    print(f"[bench] {name}: running", flush=True)
    try:
        row = make_row()
    except (BenchError, KeyError) as exc:  # KeyError: a JSON without a figure this benchmark reads
        print(f"[bench] {name}: FAILED {exc!r}", flush=True)
        return Row(name=name, error=repr(exc) if isinstance(exc, KeyError) else str(exc))
    print(f"[bench] {name}: median round {fmt(row.median_round_s)} s, total {fmt(row.total_wall_s)} s, "
          f"peak RSS {fmt(row.peak_rss_mb, 0)} MB, HR@10 {fmt(row.metrics.get('hr'), 4)}", flush=True)
    return row


# ------------------------------------------------------------------------------------------------------------ ratios
def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def add_ratios(rows: list[Row]) -> None:
    """Median round and total wall of every row against fedrec_plain and against flower (where present)."""
    by_name = {r.name: r for r in rows}
    for ref in ("fedrec_plain", "flower", "fedrec_he"):
        base = by_name.get(ref)
        if base is None or base.error:
            continue
        for row in rows:
            row.ratios[f"median_round_vs_{ref}"] = _ratio(row.median_round_s, base.median_round_s)
            row.ratios[f"total_wall_vs_{ref}"] = _ratio(row.total_wall_s, base.total_wall_s)


def round_limits(rows: list[Row], cores: int) -> dict:
    """Each fedrec row's median round against the silos' training split over ``cores``: the bare loop's (its median
    round / cores) and the row's own (its median per-round sum of the silos' training CPU seconds / cores)."""
    by_name = {r.name: r for r in rows if not r.error}
    bare = by_name.get("bare_loop")
    out = {}
    for row in rows:
        if not row.name.startswith("fedrec") or row.error or not row.raw:
            continue
        train_cpu = (row.raw.get("seconds_per_phase_median") or {}).get("train_cpu")
        out[row.name] = {
            "cores": cores, "median_round_s": row.median_round_s,
            "bare_split_s": bare.median_round_s / cores if bare else None,
            "vs_bare_split": _ratio(row.median_round_s, bare.median_round_s / cores) if bare else None,
            "train_cpu_split_s": train_cpu / cores if train_cpu else None,
            "vs_train_cpu_split": _ratio(row.median_round_s, train_cpu / cores) if train_cpu else None}
    return out


def he_bytes_ratio(rows: list[Row]) -> dict | None:
    """fedrec HE bytes per silo per round / (shared parameters x 4 B): the cost of CKKS over fp32 plaintext."""
    by_name = {r.name: r for r in rows if not r.error}
    he = by_name.get("fedrec_he")
    if he is None:
        return None
    plain = by_name.get("fedrec_plain")
    params = he.shared_params or (plain.shared_params if plain else None)
    source = "fedrec summary plaintext_fp32_bytes / 4"
    if params is None and plain is not None:
        params, source = int(plain.bytes_per_silo_round // 4), "fedrec plaintext row's bytes / 4"
    if not params:
        return None
    return {"shared_params": params, "fp32_bytes": 4 * params, "he_bytes": he.bytes_per_silo_round,
            "ratio": he.bytes_per_silo_round / (4 * params), "shared_params_from": source}


def bench_markdown(result: dict) -> str:
    """The BENCHMARKS.md section: the rows, the ratios, the bytes ratio, notes, date, machine, command."""
    rows = [Row(**r) for r in result["rows"]]
    header = ["row", "median round (s)", "total wall (s)", "bytes/silo/round", "peak RSS (MB)", "HR@10", "NDCG@10",
              "full HR@10", "full NDCG@10", "round / plain", "total / plain", "round / Flower", "total / Flower"]
    lines = [[r.name, fmt(r.median_round_s), fmt(r.total_wall_s, 1), fmt_bytes(r.bytes_per_silo_round),
              fmt(r.peak_rss_mb, 0), *(fmt(r.metrics.get(m), 4) for m in METRICS),
              *(fmt(r.ratios.get(f"{k}_vs_{ref}")) for ref in ("fedrec_plain", "flower")
                for k in ("median_round", "total_wall"))] if not r.error else
             [r.name, f"failed: {r.error[:120]}", *[""] * (len(header) - 2)] for r in rows]
    m = result["machine"]
    parts = [f"## One-command benchmark (`bench/harness.py`): fedrec vs Flower vs centralized, "
             f"{result['rounds']} rounds", "",
             f"Measured {m['date_utc']} on {m['cores']} cores, {m['ram_gb']} GB RAM ({m['platform']}), "
             f"commit `{(m['git_commit'] or '?')[:10]}`{' (dirty)' if m['git_dirty'] else ''}. "
             f"Command: `{result['command']}`. Raw: `{result['outputs'][0]}`, plot `{result['outputs'][1]}`.", "",
             markdown_table(header, lines), "", f"![one-command benchmark]({result['outputs'][1]})", ""]
    hb = result.get("he_bytes_ratio")
    if hb:
        parts.append(f"- CKKS bytes per silo per round / fp32 shared parameters: **{hb['ratio']:.2f}×** "
                     f"({hb['he_bytes'] / 1e6:.3f} MB vs {hb['shared_params']:,} params × 4 B).")
    for name, lim in (result.get("round_limits") or {}).items():
        said = [f"{lim['vs_bare_split']:.2f}× the bare loop's ({lim['bare_split_s']:.2f} s)"
                if lim.get("vs_bare_split") else "",
                f"{lim['vs_train_cpu_split']:.2f}× the run's own training CPU ({lim['train_cpu_split_s']:.2f} s)"
                if lim.get("vs_train_cpu_split") else ""]
        if any(said):
            parts.append(f"- {name}: median round {lim['median_round_s']:.2f} s against the silos' training split "
                         f"over {lim['cores']} cores: " + "; ".join(s for s in said if s) + ".")
    robust = next((r for r in rows if r.name == "fedrec_he_robust" and not r.error), None)
    if robust is not None and robust.ratios.get("median_round_vs_fedrec_he"):
        parts.append(f"- robust aggregation ({', '.join(ROBUST_SETS)}) against fedrec_he: median round "
                     f"**{robust.ratios['median_round_vs_fedrec_he']:.2f}×**, total wall "
                     f"{robust.ratios['total_wall_vs_fedrec_he']:.2f}×.")
    parts += [f"- {n}" for n in result["notes"]]
    parts += [f"- {r.name}: {n}" for r in rows for n in r.notes]
    return "\n".join(parts)


def plot_bars(rows: list[Row], path: Path) -> None:
    """Four horizontal bar charts: median round, total wall, peak memory, bytes per silo per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("median_round_s", "median round wall time (s)", 1), ("total_wall_s", "total wall time (s)", 1),
              ("peak_rss_mb", "peak RSS of the process tree (MB)", 1),
              ("bytes_per_silo_round", "bytes per silo per round (MB)", 1e-6))
    ok = [r for r in rows if not r.error]
    fig, axes = plt.subplots(1, 4, figsize=(17, 0.5 * max(len(ok), 3) + 1.5))
    for ax, (attr, label, scale) in zip(axes, panels):
        ax.barh([r.name for r in ok], [(getattr(r, attr) or 0) * scale for r in ok], color="tab:blue")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
        ax.invert_yaxis()
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="federated rounds = centralized epochs (default 10)")
    ap.add_argument("--quick", action="store_true", help="smoke mode: 2 rounds, no scaling")
    ap.add_argument("--scaling", action="store_true", help="also run bench/scaling.py and its BENCHMARKS section")
    ap.add_argument("--scaling-args", default="", help="arguments for bench/scaling.py, e.g. '--silos 2,4'")
    ap.add_argument("--seed", type=int, default=0, help="federation.seed / partition.seed / training seed")
    ap.add_argument("--flower-venv", type=Path, default=os.environ.get("FLOWER_VENV") or None)
    ap.add_argument("--timeout", type=float, default=ROW_TIMEOUT_S, help="seconds per row before it is killed")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="where bench.json/bench.png go")
    ap.add_argument("--markdown", type=Path, default=BENCH_MD, help="the file whose bench section is rewritten")
    ap.add_argument("--keep-work", action="store_true", help=f"keep {WORK.relative_to(ROOT)} (runs' state)")
    ap.add_argument("-S", dest="sets", action="append", default=[], help="extra fedrec overrides key=value")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.scaling = 2, False
    if args.rounds < 1:
        raise BadArgument(f"--rounds must be >= 1, not {args.rounds}")
    if args.timeout <= 0:
        raise BadArgument(f"--timeout must be > 0, not {args.timeout}")
    if any("=" not in s for s in args.sets):
        raise BadArgument(f"-S takes key=value, got {args.sets}")
    if args.scaling:  # bench/scaling.py: its arguments are checked before the rows run
        scaling.parse_args(shlex.split(args.scaling_args))
    return args


def run_rows(args: argparse.Namespace, notes: list[str]) -> list[Row]:
    """Provision the data once, then the rows one after another."""
    ws = Workspace.under(WORK)
    sets = ["data.source=movielens", "partition.scheme=region", "model.name=neumf", f"federation.seed={args.seed}",
            f"partition.seed={args.seed}", *args.sets]
    print(f"[bench] provisioning ML-100K region silos in {ws.data}", flush=True)
    init_store(ws.mlflow_db, WORK / "provision" / "mlflow")
    notes.append(f"data provisioned once before the rows (the DVC pipeline's prepare, partition and validate; untimed: "
                 "the runs' silos take the saved verdicts of their unchanged data): "
                 f"{provision_data(ws, sets, WORK / 'provision'):.1f} s")
    problem = flower_venv_problem(args.flower_venv)
    rows = [attempt("fedrec_he", lambda: fedrec_row("fedrec_he", True, args.rounds, ws, sets, args.timeout))]
    if not problem:  # the yardsticks beside fedrec_he (this machine's speed drifts by tens of per cent in minutes)
        silos = len(rows[0].raw["silos"]) if rows[0].raw else 11
        rows.append(attempt("bare_loop", lambda: bare_row(args.flower_venv, args.rounds, args.timeout)))
        rows.append(attempt("flower", lambda: flower_row(args.flower_venv, args.rounds, silos, args.timeout)))
    else:
        print(f"[bench] flower, bare_loop: skipped ({problem})", flush=True)
        notes.append(f"Flower and bare-loop rows skipped: {problem}")
    rows.append(attempt("fedrec_plain", lambda: fedrec_row("fedrec_plain", False, args.rounds, ws, sets,
                                                            args.timeout)))
    # robust aggregation under encryption (issue #20): three groups' secure sums, vetted by the silos
    rows.append(attempt("fedrec_he_robust", lambda: fedrec_row("fedrec_he_robust", True, args.rounds, ws,
                                                                [*sets, *ROBUST_SETS], args.timeout)))
    rows.append(attempt("centralized", lambda: centralized_row(args.rounds, ws, sets, args.seed, args.timeout)))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = begin(WORK, "harness.py", argv)
    notes = ["rows run one after another; total wall = the whole child process (start-up included); peak RSS = "
             f"the summed RSS of the child's process tree sampled every {SAMPLE_S} s (shared pages count once per "
             "process)", "fedrec rows evaluate only after the last round; metrics are the test item's"]
    rows = run_rows(args, notes)
    add_ratios(rows)
    outputs = [shown_path(args.out_dir / "bench.json"), shown_path(args.out_dir / "bench.png")]
    box = machine()
    result = {"rounds": args.rounds, "seed": args.seed, "command": command.strip(), "machine": box,
              "outputs": outputs, "notes": notes, "he_bytes_ratio": he_bytes_ratio(rows),
              "round_limits": round_limits(rows, int(box["cores"] or 1)), "rows": [asdict(r) for r in rows]}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    plot_bars(rows, args.out_dir / "bench.png")
    replace_section(args.markdown, "bench", bench_markdown(result))
    print(bench_markdown(result), flush=True)
    if args.scaling:
        scaled = scaling.main(["--out-dir", str(args.out_dir), *shlex.split(args.scaling_args)])
        replace_section(args.markdown, "scaling", scaling.scaling_markdown(scaled))
    if not args.keep_work:
        shutil.rmtree(WORK, ignore_errors=True)
    print(f"[bench] wrote {args.out_dir / 'bench.json'}, {args.out_dir / 'bench.png'}, {args.markdown}", flush=True)
    return 1 if any(r.error for r in rows if r.name.startswith("fedrec")) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:  # BadArgument, or the data could not be provisioned
        sys.exit(f"harness: {exc}")