"""Scaling curves of a whole `fedrec run` (CKKS on) on synthetic data: how round time, total time, bytes and memory
grow with the number of silos and with the number of shared parameters.

Model: GMF with embedding_dim 32, so the shared (item-side) parameters are n_items x 32 + 33 (item embeddings and
the output layer) and are set through the synthetic catalogue's size. Each silo holds a few users (default 30, IID
partition), so local training stays cheap; one local epoch per round, evaluation only after the last round.

Sweeps (real `fedrec run` processes, one after another):
  (a) silos:  2, 4, 8, 16, 32, 64 at ~100k shared parameters;
  (b) params: ~10k, 100k, 1M, 10M shared parameters at 4 silos.
Per point: median round wall time, total wall time (the whole process), bytes per silo per round, the peak summed RSS
of the process tree (sampled every 0.2 s, as in bench/harness.py). A power law y = a * x^b is fitted (least squares
in log-log) to each curve; the memory curve of the silo sweep is extrapolated to the largest federation within
24 GB. A failing point is recorded with its error (stderr tail) and the sweep goes on.

Writes results/scaling.json and results/scaling.png. Usage:

    .venv/bin/python bench/scaling.py [--silos 2,4,8] [--params 1e4,1e5] [--rounds 3] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchkit import (
    RESULTS,
    ROOT,
    BadArgument,
    BenchError,
    RunFailed,
    Workspace,
    begin,
    fmt,
    fmt_bytes,
    init_store,
    machine,
    markdown_table,
    process_figures,
    provision_data,
    run_fedrec_summary,
    run_figures,
    shown_path,
)

WORK = RESULTS / "tmp" / "scaling"  # git-ignored scratch; each point's data and state are deleted after it
SILOS = (2, 4, 8, 16, 32, 64)
PARAMS = (1e4, 1e5, 1e6, 1e7)
FIXED_PARAMS = 1e5  # silo sweep
FIXED_SILOS = 4  # parameter sweep
DIM = 32
INTERACTIONS_PER_USER = 20
MEMORY_BUDGET_GB = 24.0
DEFAULT_PAYLOAD = 268_435_456  # federation.max_payload_bytes default
PAYLOAD_BYTES_PER_PARAM = 64  # a CKKS update is ~16 B per shared parameter (ML-100K: 1.8 MB for 114k); 4x margin
#: min_silos: the default 3 refuses a 2-silo federation; the deadlines: the 10M-parameter and 64-silo points
LIMIT_SETS = ("federation.min_silos=2", "federation.round_timeout_s=3600", "federation.join_timeout_s=1800")
CURVES = ("median_round_s", "total_wall_s", "peak_rss_mb", "bytes_per_silo_round")


@dataclass
class Point:
    """One `fedrec run` of a sweep; ``x`` is the swept quantity (silos, or shared parameters)."""

    sweep: str
    x: float
    n_silos: int
    n_users: int
    n_items: int
    shared_params: int
    median_round_s: float | None = None
    total_wall_s: float | None = None
    bytes_per_silo_round: float | None = None
    peak_rss_mb: float | None = None
    provision_s: float | None = None
    hr: float | None = None
    error: str | None = None


def gmf_shared_params(n_items: int, dim: int = DIM) -> int:
    """GMF's item tower: the item embedding table and the output layer (dim weights + bias)."""
    return n_items * dim + dim + 1


def items_for(params: float, dim: int = DIM) -> int:
    """The catalogue size whose GMF item tower has about ``params`` parameters."""
    return max(INTERACTIONS_PER_USER + 1, round((params - dim - 1) / dim))


def crypto_sets(n_silos: int) -> list[str]:
    """The crypto settings a sum of ``n_silos`` needs: up to 64 the defaults (scale 2^52 leaves 2^(60-52-2) = 64 of
    range); beyond, the scale drops a bit per doubling (2^50 for 256) and the lanes with it, keeping 16 bits between
    the packed lanes and the scale for the CKKS noise of more ciphertexts (14 at 64 silos): 256 silos send 2 lanes
    of 17 bits on a 2^-16 grid (the mean update within +-1), the same 8 bytes per value."""
    headroom = max(6, math.ceil(math.log2(n_silos)))
    if headroom == 6:
        return []
    scale = 58 - headroom
    lane = (scale - 16) // 2
    return [f"crypto.global_scale_bits={scale}", f"crypto.lane_bits={lane}", f"crypto.quantization_bits={lane - 1}"]


def point_sets(n_silos: int, n_users: int, n_items: int) -> list[str]:
    """The config overrides of one point: synthetic data, IID silos, GMF, HE, LIMIT_SETS, and an exchange payload
    limit that fits the point's CKKS update (the default 256 MiB is below the 10M-parameter update, ~330 MB)."""
    params = gmf_shared_params(n_items)
    return [
        "data.source=synthetic", f"data.synthetic.n_users={n_users}", f"data.synthetic.n_items={n_items}",
        "data.synthetic.n_factors=8", f"data.synthetic.interactions_per_user={INTERACTIONS_PER_USER}",
        "partition.scheme=iid", f"partition.n_silos={n_silos}", "model.name=gmf", f"model.embedding_dim={DIM}",
        "federation.local_epochs=1", "federation.he=true", "federation.max_parallel_silos=0", *LIMIT_SETS,
        f"federation.max_payload_bytes={max(DEFAULT_PAYLOAD, PAYLOAD_BYTES_PER_PARAM * params)}",
        *crypto_sets(n_silos),
    ]


def measure_point(point: Point, rounds: int, timeout_s: float, keep: bool) -> Point:
    """Provision the point's synthetic silos (untimed), then time one whole `fedrec run` on them."""
    root = WORK / f"{point.sweep}-{int(point.x)}"
    ws = Workspace(data=root / "data", state=root / "state", mlflow_db=WORK / "mlflow.db")
    sets = point_sets(point.n_silos, point.n_users, point.n_items)
    try:
        point.provision_s = provision_data(ws, sets, root / "provision", timeout_s)
        summary, measured = run_fedrec_summary(rounds, True, ws, sets, root, timeout_s)
        figures = run_figures(summary, measured)
    except RunFailed as exc:
        vars(point).update(process_figures(exc.measured), error=str(exc))
        return point
    except (BenchError, KeyError) as exc:  # KeyError: a summary without a figure this benchmark reads
        point.error = repr(exc)
        return point
    finally:
        if not keep:
            shutil.rmtree(root / "data", ignore_errors=True)
            shutil.rmtree(root / "state", ignore_errors=True)
    vars(point).update(figures, shared_params=figures["shared_params"] or point.shared_params,
                       hr=summary.get("hr@10"))
    return point


def sweep_points(silos: list[int], params: list[float], users_per_silo: int) -> list[Point]:
    """The points of both sweeps, silo sweep first."""
    fixed_items = items_for(FIXED_PARAMS)
    points = [Point("silos", n, n, users_per_silo * n, fixed_items, gmf_shared_params(fixed_items)) for n in silos]
    for p in params:
        n_items = items_for(p)
        points.append(Point("params", gmf_shared_params(n_items), FIXED_SILOS, users_per_silo * FIXED_SILOS, n_items,
                            gmf_shared_params(n_items)))
    return points


# -------------------------------------------------------------------------------------------------------------- fits
def fit_power_law(xs: list[float], ys: list[float]) -> dict | None:
    """y = a * x^b by least squares on (log x, log y); None with fewer than two usable points."""
    pairs = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len({lx for lx, _ in pairs}) < 2:
        return None
    lx, ly = zip(*pairs)
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    b = sum((u - mx) * (v - my) for u, v in pairs) / sum((u - mx) ** 2 for u in lx)
    return {"a": math.exp(my - b * mx), "b": b, "points": len(pairs)}


def fits_of(ok: list[Point]) -> dict[str, dict | None]:
    """A power-law fit of every curve of one sweep's successful points, against its swept quantity."""
    return {curve: fit_power_law([p.x for p in ok], [getattr(p, curve) for p in ok]) for curve in CURVES}


#: the exponent that says whether cost grows linearly is the one where the work dominates the fixed costs
#: (start-up, the Prefect server, polling): the sweep's largest UPPER_POINTS points
UPPER_POINTS = 3


def fit_linear(xs: list[float], ys: list[float]) -> dict | None:
    """y = c + d * x by least squares; None with fewer than two distinct x."""
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if len({x for x, _ in pairs}) < 2:
        return None
    mx, my = statistics.fmean(x for x, _ in pairs), statistics.fmean(y for _, y in pairs)
    d = sum((x - mx) * (y - my) for x, y in pairs) / sum((x - mx) ** 2 for x, _ in pairs)
    return {"c": my - d * mx, "d": d, "points": len(pairs)}


def largest_within(power: dict | None, linear: dict | None, budget_mb: float) -> dict:
    """The x at which the fitted peak memory reaches ``budget_mb``, from the power law a * x^b and from the line
    c + d * x (extrapolations; None where the fit does not rise). The line suits a large fixed share (the Prefect
    server, the coordinator, the silo host processes' imports), which flattens the power law's exponent."""
    return {"power_law": (budget_mb / power["a"]) ** (1 / power["b"]) if power and power["b"] > 0 else None,
            "linear": (budget_mb - linear["c"]) / linear["d"] if linear and linear["d"] > 0 else None}


def he_max_contributors() -> int | None:
    """The most silos one CKKS sum admits with params.yaml's crypto settings (the coordinator refuses more);
    None where this checkout's fedrec cannot say (its crypto API differs)."""
    if str(ROOT) not in sys.path:  # this checkout's fedrec, as in the fedrec processes (harness.child_env)
        sys.path.insert(0, str(ROOT))
    try:
        from fedrec.core.config import load_config
        from fedrec.crypto.ckks import value_limit

        return int(value_limit(load_config(ROOT / "params.yaml").crypto))
    except Exception as exc:  # noqa: BLE001 - an informative figure only
        print(f"[scaling] HE contributor limit unknown: {exc}", flush=True)
        return None


def analyse(points: list[Point]) -> dict:
    """Per sweep: the power-law fits, the linear memory fit, and the largest x whose extrapolated peak memory stays
    within the budget."""
    out = {}
    for sweep in ("silos", "params"):
        ok = [p for p in points if p.sweep == sweep and not p.error]
        fits = fits_of(ok)
        memory_line = fit_linear([p.x for p in ok], [p.peak_rss_mb for p in ok])
        out[sweep] = {"fits": fits, "upper_fits": fits_of(sorted(ok, key=lambda p: p.x)[-UPPER_POINTS:]),
                      "memory_linear_fit_mb": memory_line,
                      f"largest_within_{MEMORY_BUDGET_GB:g}GB_extrapolated":
                      largest_within(None, memory_line, MEMORY_BUDGET_GB * 1024)}
    out["he_max_contributors"] = he_max_contributors()
    return out


# ------------------------------------------------------------------------------------------------------------ output
def _decade_around(values: list[float]) -> tuple[float, float]:
    """Log-axis limits that span at least one decade around ``values`` (a flat curve stays readable)."""
    low, high = min(values), max(values)
    spread = max(math.sqrt(10 * low / high), 1.0) * 1.2
    return low / spread, high * spread


def plot(points: list[Point], analysis: dict, path: Path) -> None:
    """Log-log curves per sweep (rows) and quantity (columns), each with its fitted power law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    panels = (("median_round_s", "median round (s)"), ("total_wall_s", "total wall (s)"),
              ("peak_rss_mb", "peak RSS (MB)"), ("bytes_per_silo_round", "bytes / silo / round"))
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7.5), squeeze=False)
    for row, (sweep, xlabel) in enumerate((("silos", "silos"), ("params", "shared parameters"))):
        ok = [p for p in points if p.sweep == sweep and not p.error]
        for ax, (curve, label) in zip(axes[row], panels):
            xs, ys = [p.x for p in ok], [getattr(p, curve) for p in ok]
            ax.loglog(xs, ys, "o", color="tab:blue")
            for which, style, color, name in (("fits", "-", "tab:orange", "all points"),
                                              ("upper_fits", "--", "tab:green", f"largest {UPPER_POINTS}")):
                fit = (analysis[sweep].get(which) or {}).get(curve)
                span = sorted(xs)[-UPPER_POINTS:] if which == "upper_fits" else xs
                if fit and span:
                    grid = [min(span) * (max(span) / min(span)) ** (i / 20) for i in range(21)]
                    ax.loglog(grid, [fit["a"] * g ** fit["b"] for g in grid], style, color=color,
                              label=f"{name}: b = {fit['b']:.2f}")
            if xs:
                ax.legend(fontsize=8)
                ax.set_xticks(xs)
                ax.set_xticklabels([f"{x:,.0f}" if x < 1e4 else f"{x:.0e}" for x in xs], fontsize=8)
                ax.xaxis.set_minor_formatter(NullFormatter())
            if ys:
                ax.set_ylim(*_decade_around(ys))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _exponents(analysis: dict, sweep: str, which: str = "fits") -> str:
    fits = analysis[sweep].get(which) or {}
    return ", ".join(f"{curve} b = {fits[curve]['b']:.2f}" for curve in CURVES if fits.get(curve)) or "no fit"


def _largest(estimate: dict, unit: str) -> str:
    shown = {k: f"~{v:,.0f} {unit}" for k, v in estimate.items() if v is not None}
    if not shown:
        return "no rising memory fit"
    return "; ".join(f"{text} ({'c + d·x' if k == 'linear' else 'a·x^b'} fit)" for k, text in shown.items())


def scaling_markdown(result: dict) -> str:
    """The BENCHMARKS.md section: both sweeps, the fitted exponents, the 24 GB extrapolation."""
    header = ["sweep", "silos", "shared params", "median round (s)", "total wall (s)", "bytes/silo/round",
              "peak RSS (MB)", "status"]
    points = [Point(**p) for p in result["points"]]
    lines = [[p.sweep, str(p.n_silos), f"{p.shared_params:,}", fmt(p.median_round_s), fmt(p.total_wall_s, 1),
              fmt_bytes(p.bytes_per_silo_round), fmt(p.peak_rss_mb, 0),
              "ok" if not p.error else f"failed: {p.error[:100]}"] for p in points]
    m, a = result["machine"], result["analysis"]
    key = f"largest_within_{MEMORY_BUDGET_GB:g}GB_extrapolated"
    parts = [f"## Scaling on synthetic data (`bench/scaling.py`): GMF d={DIM}, CKKS on, {result['rounds']} rounds, "
             f"{result['users_per_silo']} users per silo", "",
             f"Measured {m['date_utc']} on {m['cores']} cores, {m['ram_gb']} GB RAM, commit "
             f"`{(m['git_commit'] or '?')[:10]}`. Command: `{result['command']}`. Raw: `{result['outputs'][0]}`, "
             f"plot `{result['outputs'][1]}`.", "", markdown_table(header, lines), "",
             f"![scaling curves]({result['outputs'][1]})", "",
             f"- Power-law exponents (y ≈ a·x^b; b ≈ 1 is linear) over the largest {UPPER_POINTS} points, where the "
             f"work dominates the fixed start-up and polling costs: silos sweep: "
             f"{_exponents(a, 'silos', 'upper_fits')}; parameter sweep: {_exponents(a, 'params', 'upper_fits')}.",
             f"- Over all points (the fixed costs flatten them): silos sweep: {_exponents(a, 'silos')}; "
             f"parameter sweep: {_exponents(a, 'params')}.",
             f"- Largest federation within {MEMORY_BUDGET_GB:g} GB at ~{FIXED_PARAMS:,.0f} shared parameters "
             f"(an extrapolation of the silo sweep's peak memory, not measured): {_largest(a['silos'][key], 'silos')}; "
             f"the CKKS sum admits at most {a['he_max_contributors'] or '?'} silos with params.yaml's `crypto` settings.",
             f"- Largest model within {MEMORY_BUDGET_GB:g} GB at {FIXED_SILOS} silos (extrapolated likewise): "
             f"{_largest(a['params'][key], 'shared parameters')}.",
             f"- Overrides set for every point: {', '.join(result['overrides_note'])}."]
    return "\n".join(parts)


def _parse_list(text: str, kind, what: str) -> list:
    """``"2,4,8"`` -> [2, 4, 8]; ``""`` -> [] (that sweep skipped)."""
    try:
        values = [kind(float(v)) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise BadArgument(f"--{what} takes comma-separated numbers, not {text!r}") from exc
    if any(v <= 0 for v in values):
        raise BadArgument(f"--{what} values must be positive: {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--silos", default=",".join(map(str, SILOS)), help="silo sweep ('' skips it)")
    ap.add_argument("--params", default=",".join(f"{p:g}" for p in PARAMS), help="parameter sweep ('' skips it)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users-per-silo", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per point before it is killed")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--keep-work", action="store_true", help="keep each point's data and state")
    args = ap.parse_args(argv)
    args.silos = _parse_list(args.silos, int, "silos")
    args.params = _parse_list(args.params, float, "params")
    if any(n < 2 for n in args.silos):
        raise BadArgument(f"--silos: a federation needs at least 2 silos (federation.min_silos >= 2): {args.silos}")
    if args.rounds < 1 or args.users_per_silo < 1 or args.timeout <= 0:
        raise BadArgument("--rounds, --users-per-silo and --timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = begin(WORK, "scaling.py", argv)
    init_store(WORK / "mlflow.db", WORK / "mlflow")
    points = sweep_points(args.silos, args.params, args.users_per_silo)
    for i, point in enumerate(points, 1):
        print(f"[scaling] {i}/{len(points)} {point.sweep}: {point.n_silos} silos, {point.n_items} items, "
              f"{point.shared_params:,} shared params", flush=True)
        start = time.perf_counter()
        measure_point(point, args.rounds, args.timeout, args.keep_work)
        status = f"FAILED {point.error[:300]}" if point.error else (
            f"median round {point.median_round_s:.2f} s, total {point.total_wall_s:.1f} s, "
            f"{point.bytes_per_silo_round / 1e6:.3f} MB/silo/round, peak RSS {point.peak_rss_mb:.0f} MB")
        print(f"[scaling]    {status} ({time.perf_counter() - start:.0f} s with provisioning)", flush=True)
    analysis = analyse(points)
    result = {"outputs": [shown_path(args.out_dir / "scaling.json"), shown_path(args.out_dir / "scaling.png")],
              "rounds": args.rounds, "users_per_silo": args.users_per_silo, "command": command.strip(),
              "machine": machine(), "model": {"name": "gmf", "embedding_dim": DIM},
              "overrides_note": [*LIMIT_SETS, f"federation.max_payload_bytes=max(256 MiB, "
                                               f"{PAYLOAD_BYTES_PER_PARAM} B x shared params)"],
              "points": [asdict(p) for p in points], "analysis": analysis}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "scaling.json").write_text(json.dumps(result, indent=2))
    plot(points, analysis, args.out_dir / "scaling.png")
    for sweep in ("silos", "params"):
        print(f"[scaling] {sweep}: {_exponents(analysis, sweep)}", flush=True)
    print(scaling_markdown(result), flush=True)
    if not args.keep_work:
        shutil.rmtree(WORK, ignore_errors=True)
    return result


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:  # BadArgument included
        sys.exit(f"scaling: {exc}")
