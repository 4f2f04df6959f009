"""The one-command benchmark (`make bench`): fedrec against Flower and centralized training, on the same work.

The work: ML-100K region silos (11), NeuMF with the project's defaults, R rounds (default 10) of one local epoch,
evaluation only after the last round, the configured seed. Rows, run one after another (never side by side):

1. ``fedrec_he``: ``fedrec run`` with CKKS aggregation;
2. ``fedrec_plain``: the same with ``--no-he``;
3. ``flower``: Flower FedAvg, the yardstick in ../shared/bench/flower_reference (flower_ref.py), in its own virtual
   environment ``$FLOWER_VENV`` (skipped, with the reason printed, when unset or missing);
4. ``centralized``: ``fedrec centralized --model neumf`` for R epochs (one epoch per round), and ``bare_loop``: the
   yardstick's single-process PyTorch loop (flower_ref_bare.py; needs ``$FLOWER_VENV`` too).

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
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
REF = (ROOT / ".." / "shared" / "bench" / "flower_reference").resolve()
RESULTS = ROOT / "results"
WORK = RESULTS / "tmp" / "bench"  # git-ignored scratch: data, state and MLflow store of the benchmark's runs
BENCH_MD = ROOT / "BENCHMARKS.md"
SAMPLE_S = 0.2  # process-tree memory sampling interval
EVAL_ONLY_AT_END = 10**6  # federation.eval_every: no round but the last evaluates
K = 10
METRICS = ("hr", "ndcg", "full_hr", "full_ndcg")
FLOWER_METRICS = {"hr": "hr_s", "ndcg": "ndcg_s", "full_hr": "hr_f", "full_ndcg": "ndcg_f"}
FLOWER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
ENV_DEFAULTS = {  # the Makefile's offline hygiene, for a harness started outside make
    "PREFECT_HOME": str(ROOT / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false",
}
DEFAULT_DATA = (ROOT / ".." / "shared" / "datasets" / "ml-100k").resolve()
ROW_TIMEOUT_S = 1800


class BenchError(RuntimeError):
    """A benchmark step could not run or measure."""


class BadArgument(BenchError, ValueError):
    """A command-line value the benchmark cannot use."""


class RunFailed(BenchError):
    """A measured child process failed or timed out; carries its measurement."""

    def __init__(self, what: str, measured: "Measured"):
        why = "timed out" if measured.timed_out else f"exit {measured.returncode}"
        super().__init__(f"{what} {why}: {measured.stderr_tail[-600:]}")
        self.measured = measured


# ---------------------------------------------------------------------------------------------- measuring processes
@dataclass
class Measured:
    """One child process run: its wall time (launch to exit), the peak of the summed RSS of its process tree."""

    cmd: list[str]
    returncode: int | None
    wall_s: float
    peak_rss_bytes: int
    processes_seen: int
    timed_out: bool
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def tree_rss(root: psutil.Process, seen: set[int]) -> int:
    """Sum of the RSS of ``root`` and all its descendants now (processes that vanish meanwhile count 0)."""
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            seen.add(proc.pid)
        except psutil.Error:
            pass
    return total


def _kill_tree(root: psutil.Process) -> None:
    """End the child and every process it started, one by one by pid (children first)."""
    try:
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        procs = [root]
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def _tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


def run_measured(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout_s: float, log_dir: Path) -> Measured:
    """Run ``cmd`` to completion (or ``timeout_s``), sampling its process tree's summed RSS every SAMPLE_S seconds.
    stdout/stderr go to ``log_dir``/{stdout,stderr}.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    peak, timed_out = 0, False
    with open(log_dir / "stdout.log", "wb") as out, open(log_dir / "stderr.log", "wb") as err:
        start = time.perf_counter()
        popen = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        root = psutil.Process(popen.pid)
        while popen.poll() is None:
            peak = max(peak, tree_rss(root, seen))
            if time.perf_counter() - start > timeout_s:
                timed_out = True
                _kill_tree(root)
                break
            time.sleep(SAMPLE_S)
        popen.wait()
        wall = time.perf_counter() - start
    return Measured(cmd=[str(c) for c in cmd], returncode=popen.returncode, wall_s=wall, peak_rss_bytes=peak,
                    processes_seen=len(seen), timed_out=timed_out, stderr_tail=_tail(log_dir / "stderr.log"))


def read_json(path: Path, what: str) -> dict:
    """The JSON a child wrote, or BenchError naming ``what``."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{what} wrote no readable JSON at {path}: {exc}") from exc


def checked(what: str, measured: Measured) -> Measured:
    """``measured`` if it succeeded, else RunFailed."""
    if not measured.ok:
        raise RunFailed(what, measured)
    return measured


# -------------------------------------------------------------------------------------------------- fedrec commands
def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, with the project's offline defaults where unset, this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    for key, value in ENV_DEFAULTS.items():
        env.setdefault(key, value)
    if "FEDREC_DATA_DIR" not in env and DEFAULT_DATA.is_dir():
        env["FEDREC_DATA_DIR"] = str(DEFAULT_DATA)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env | (extra or {})


def fedrec_exe() -> Path:
    """The `fedrec` console script beside this interpreter (the venv that runs the benchmark)."""
    for candidate in (Path(sys.executable).parent / "fedrec", ROOT / ".venv" / "bin" / "fedrec"):
        if candidate.exists():
            return candidate
    raise BenchError(f"no `fedrec` beside {sys.executable}: run the benchmark with the project's venv python")


@dataclass(frozen=True)
class Workspace:
    """Where the benchmark's fedrec processes keep data, state and their MLflow store (never the project's)."""

    data: Path
    state: Path
    mlflow_db: Path

    @classmethod
    def under(cls, root: Path) -> "Workspace":
        return cls(data=root / "data", state=root / "state", mlflow_db=root / "mlflow.db")

    def with_state(self, state: Path) -> "Workspace":
        return replace(self, state=state)

    def overrides(self) -> list[str]:
        sets = {"data.work_dir": self.data, "federation.state_dir": self.state,
                "federation.exchange_url": self.state / "exchange", "tracking.uri": f"sqlite:///{self.mlflow_db}",
                "operations.reports_dir": self.state / "reports"}
        return [x for key, value in sets.items() for x in ("-S", f"{key}={value}")]


def as_sets(pairs: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["-S", "a=1", "-S", "b=2"]``."""
    return [x for pair in pairs for x in ("-S", pair)]


def fedrec_cmd(command: str, args: list[str], ws: Workspace, sets: list[str]) -> list[str]:
    return [str(fedrec_exe()), command, *args, *ws.overrides(), *as_sets(sets)]


def provision_data(ws: Workspace, sets: list[str], log_dir: Path, timeout_s: float = ROW_TIMEOUT_S) -> float:
    """Prepare and partition the data before any timed run (`fedrec run` would otherwise do it); returns seconds."""
    start = time.perf_counter()
    for step in ("prepare", "partition"):
        checked(f"fedrec {step}", run_measured(fedrec_cmd(step, [], ws, sets), cwd=ROOT, env=child_env(),
                                               timeout_s=timeout_s, log_dir=log_dir / step))
    return time.perf_counter() - start


def init_store(mlflow_db: Path, log_dir: Path, timeout_s: float = ROW_TIMEOUT_S) -> None:
    """Create the benchmark's MLflow store (its schema migrations) before any timed run."""
    cmd = [sys.executable, "-c", "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); "
           "mlflow.search_experiments()", f"sqlite:///{mlflow_db}"]
    checked("mlflow store", run_measured(cmd, cwd=ROOT, env=child_env(), timeout_s=timeout_s, log_dir=log_dir))


def run_fedrec_summary(rounds: int, he: bool, ws: Workspace, sets: list[str], log_dir: Path,
                       timeout_s: float, extra_args: list[str] = ()) -> tuple[dict, Measured]:
    """One whole `fedrec run` (Prefect, silo host processes, MLflow) with evaluation after the last round only;
    returns its JSON summary and the process measurement. ``extra_args``: more `fedrec run` options (--run-id)."""
    out = log_dir / "summary.json"
    args = ["--rounds", str(rounds), "--json", "--out", str(out), *([] if he else ["--no-he"]), *extra_args]
    cmd = fedrec_cmd("run", args, ws, [f"federation.eval_every={EVAL_ONLY_AT_END}", *sets])
    measured = checked("fedrec run", run_measured(cmd, cwd=ROOT, env=child_env(), timeout_s=timeout_s,
                                                  log_dir=log_dir))
    return read_json(out, "fedrec run"), measured


def shared_params_of(summary: dict) -> int | None:
    """The shared (item-side) parameter count: the summary's fp32 byte count of one update / 4."""
    fp32 = summary.get("plaintext_fp32_bytes")
    return int(fp32) // 4 if fp32 else None


def process_figures(measured: Measured) -> dict:
    """Total wall time (whole process) and peak summed RSS of the tree, in MB."""
    return {"total_wall_s": measured.wall_s, "peak_rss_mb": measured.peak_rss_bytes / 2**20}


def run_figures(summary: dict, measured: Measured) -> dict:
    """What both benchmarks take from one `fedrec run`: median round, bytes per silo per round, shared parameters,
    total wall, peak RSS."""
    return {"median_round_s": summary["seconds_per_round_median"],
            "bytes_per_silo_round": summary["bytes_per_round_mean"], "shared_params": shared_params_of(summary),
            **process_figures(measured)}


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
    for ref in ("fedrec_plain", "flower"):
        base = by_name.get(ref)
        if base is None or base.error:
            continue
        for row in rows:
            row.ratios[f"median_round_vs_{ref}"] = _ratio(row.median_round_s, base.median_round_s)
            row.ratios[f"total_wall_vs_{ref}"] = _ratio(row.total_wall_s, base.total_wall_s)


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


# ------------------------------------------------------------------------------------------------- machine & output
def machine() -> dict:
    """Cores, RAM, platform, date (UTC) and the checkout's git commit."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    dirty = bool(subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True).stdout.strip())
    return {"cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "ram_gb": round(psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
            "python": platform.python_version(), "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "git_commit": commit, "git_dirty": dirty}


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def fmt_bytes(value: float | None) -> str:
    return "–" if value is None else f"{value / 1e6:,.3f} MB"


def shown_path(path: Path) -> str:
    """``path`` relative to the project root when inside it (as BENCHMARKS.md shows it)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def markdown_table(header: list[str], lines: list[list[str]]) -> str:
    rows = [header, ["---"] * len(header), *lines]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


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
    parts += [f"- {n}" for n in result["notes"]]
    parts += [f"- {r.name}: {n}" for r in rows for n in r.notes]
    return "\n".join(parts)


def replace_section(path: Path, name: str, body: str) -> None:
    """Put ``body`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path`` (appended if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text and text.index(start) < text.index(end):
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


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
    if args.scaling:
        import scaling  # bench/scaling.py: its arguments are checked before the rows run

        scaling.parse_args(shlex.split(args.scaling_args))
    return args


def run_rows(args: argparse.Namespace, notes: list[str]) -> list[Row]:
    """Provision the data once, then the rows one after another."""
    ws = Workspace.under(WORK)
    sets = ["data.source=movielens", "partition.scheme=region", "model.name=neumf", f"federation.seed={args.seed}",
            f"partition.seed={args.seed}", *args.sets]
    print(f"[bench] provisioning ML-100K region silos in {ws.data}", flush=True)
    init_store(ws.mlflow_db, WORK / "provision" / "mlflow")
    notes.append(f"data provisioned once before the rows (prepare + partition, untimed): "
                 f"{provision_data(ws, sets, WORK / 'provision'):.1f} s")
    rows = [attempt(name, lambda he=he, name=name: fedrec_row(name, he, args.rounds, ws, sets, args.timeout))
            for name, he in (("fedrec_he", True), ("fedrec_plain", False))]
    problem = flower_venv_problem(args.flower_venv)
    if problem:
        print(f"[bench] flower, bare_loop: skipped ({problem})", flush=True)
        notes.append(f"Flower and bare-loop rows skipped: {problem}")
    else:
        silos = len(rows[0].raw["silos"]) if rows[0].raw else 11
        rows.append(attempt("flower", lambda: flower_row(args.flower_venv, args.rounds, silos, args.timeout)))
    rows.append(attempt("centralized", lambda: centralized_row(args.rounds, ws, sets, args.seed, args.timeout)))
    if not problem:
        rows.append(attempt("bare_loop", lambda: bare_row(args.flower_venv, args.rounds, args.timeout)))
    return rows


def begin(work: Path, script: str, argv: list[str] | None) -> str:
    """Empty the scratch directory ``work``; returns the command line as given."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return f"python bench/{script} " + shlex.join(argv if argv is not None else sys.argv[1:])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = begin(WORK, "harness.py", argv)
    notes = ["rows run one after another; total wall = the whole child process (start-up included); peak RSS = "
             f"the summed RSS of the child's process tree sampled every {SAMPLE_S} s (shared pages count once per "
             "process)", "fedrec rows evaluate only after the last round; metrics are the test item's"]
    rows = run_rows(args, notes)
    add_ratios(rows)
    outputs = [shown_path(args.out_dir / "bench.json"), shown_path(args.out_dir / "bench.png")]
    result = {"rounds": args.rounds, "seed": args.seed, "command": command.strip(), "machine": machine(),
              "outputs": outputs, "notes": notes, "he_bytes_ratio": he_bytes_ratio(rows), "rows": [asdict(r) for r in rows]}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    plot_bars(rows, args.out_dir / "bench.png")
    replace_section(args.markdown, "bench", bench_markdown(result))
    print(bench_markdown(result), flush=True)
    if args.scaling:
        import scaling  # bench/scaling.py (this script's directory is on sys.path)

        scaled = scaling.main(["--out-dir", str(args.out_dir), *shlex.split(args.scaling_args)])
        replace_section(args.markdown, "scaling", scaling.scaling_markdown(scaled))
    if not args.keep_work:
        shutil.rmtree(WORK, ignore_errors=True)
    print(f"[bench] wrote {args.out_dir / 'bench.json'}, {args.out_dir / 'bench.png'}, {args.markdown}", flush=True)
    return 1 if any(r.error for r in rows if r.name.startswith("fedrec")) else 0


if __name__ == "__main__":
    sys.modules.setdefault("harness", sys.modules[__name__])  # scaling.py's `from harness import` gets this module
    try:
        sys.exit(main())
    except BenchError as exc:  # BadArgument, or the data could not be provisioned
        sys.exit(f"harness: {exc}")
