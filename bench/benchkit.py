"""What the benchmark scripts share (bench/harness.py, bench/scaling.py, bench/secagg_cost.py): paths, named
errors, a child process measured (wall time, peak RSS of its tree), the workspace of a fedrec run, formatting and
BENCHMARKS.md sections."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
REF = (ROOT / ".." / "shared" / "bench" / "flower_reference").resolve()
RESULTS = ROOT / "results"
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
    #: the largest RSS any single process of the tree reached, by role: "root" (the command itself) and, when the
    #: tree has them, "silo_host" (fedrec.cli.silo_host processes, each running several silos' agents)
    peak_rss_by_role: dict = field(default_factory=dict)

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
        by_role: dict[str, int] = {}
        while popen.poll() is None:
            peak = max(peak, tree_rss(root, seen))
            _role_peaks(root, by_role)
            if time.perf_counter() - start > timeout_s:
                timed_out = True
                _kill_tree(root)
                break
            time.sleep(SAMPLE_S)
        popen.wait()
        wall = time.perf_counter() - start
    return Measured(cmd=[str(c) for c in cmd], returncode=popen.returncode, wall_s=wall, peak_rss_bytes=peak,
                    processes_seen=len(seen), timed_out=timed_out, stderr_tail=_tail(log_dir / "stderr.log"),
                    peak_rss_by_role=by_role)


def _role_peaks(root: psutil.Process, peaks: dict[str, int]) -> None:
    try:
        procs = [(root, "root"), *((p, None) for p in root.children(recursive=True))]
    except psutil.Error:
        return
    for proc, role in procs:
        try:
            role = role or ("silo_host" if "fedrec.cli.silo_host" in " ".join(proc.cmdline()) else None)
            if role:
                peaks[role] = max(peaks.get(role, 0), proc.memory_info().rss)
        except psutil.Error:
            pass


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
    """The DVC pipeline's data stages before any timed run: prepare, partition and validate (`fedrec run` would
    otherwise partition, and its silos validate data that passed before only by its digest: the verdicts saved
    here); returns seconds."""
    start = time.perf_counter()
    for step in ("prepare", "partition", "validate"):
        checked(f"fedrec {step}", run_measured(fedrec_cmd(step, [], ws, sets), cwd=ROOT, env=child_env(),
                                               timeout_s=timeout_s, log_dir=log_dir / step))
    return time.perf_counter() - start


def init_store(mlflow_db: Path, log_dir: Path, timeout_s: float = ROW_TIMEOUT_S) -> None:
    """Create the benchmark's MLflow store and bring the project's Prefect database (PREFECT_HOME) to its schema
    before any timed run: the migrations of a fresh checkout (≈15 s of Prefect's, once per project) are no part
    of a run's time, as they are none of the yardstick's."""
    cmd = [sys.executable, "-c", "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); "
           "mlflow.search_experiments()", f"sqlite:///{mlflow_db}"]
    checked("mlflow store", run_measured(cmd, cwd=ROOT, env=child_env(), timeout_s=timeout_s, log_dir=log_dir))
    cmd = [sys.executable, "-c", "from fedrec.orchestration.local_server import LocalServer; "
           "server = LocalServer(); server.wait_ready(600); server.stop()"]
    checked("prefect database", run_measured(cmd, cwd=ROOT, env=child_env(), timeout_s=timeout_s, log_dir=log_dir))


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


def begin(work: Path, script: str, argv: list[str] | None) -> str:
    """Empty the scratch directory ``work``; returns the command line as given."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return f"python bench/{script} " + shlex.join(argv if argv is not None else sys.argv[1:])
