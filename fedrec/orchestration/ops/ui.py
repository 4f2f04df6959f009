"""`fedrec ui` and `fedrec worker`: a Prefect server and an MLflow server on 127.0.0.1 over the project's own stores
(PREFECT_HOME's database, the tracking SQLite file and its mlartifacts/), and the worker of the scheduled retraining.

While the UI runs, the project's Prefect profile (PREFECT_HOME/profiles.toml) points PREFECT_API_URL at its server,
so `fedrec run`, `fedrec deploy` and `prefect ...` from another shell report to it live; the previous value is put
back when it stops. Runs made without it write the same stores (Prefect's own local server over the same database,
MLflow's SQLite file) and show up once the UI starts. Each server runs in its own process group and is stopped
group-wide on Ctrl-C or SIGTERM; a UI that was killed outright is tidied by the next `fedrec` command
(:func:`reap_stale`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from fedrec.orchestration.ops import OpsError, procs
from fedrec.orchestration.ops.retention import vacuum_env

HOST = "127.0.0.1"
#: in PREFECT_HOME while a `fedrec ui` runs: its pid, URLs, process groups and the profile value it replaced
STATE_FILE = "fedrec-ui.json"


@dataclass(frozen=True)
class UIUrls:
    prefect: str
    mlflow: str

    @property
    def prefect_api(self) -> str:
        return f"{self.prefect}/api"


def executable(name: str) -> str:
    """A console script of this environment (beside the interpreter), else one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise OpsError(f"{name!r} is not installed in this environment")
    return found


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")


def _check_port(port: int, what: str, key: str) -> None:
    if procs.port_in_use(port, HOST):
        raise OpsError(f"port {port} on {HOST} is taken (another {what}?): stop it, or pick another port with "
                       f"-S operations.{key}=<port>")


def start_prefect_server(port: int, retention_days: int, log_dir: Path) -> procs.Service:
    """`prefect server start` on 127.0.0.1:``port`` over the current PREFECT_HOME, with Prefect's own retention
    (db_vacuum) set to ``retention_days`` unless the environment already sets it."""
    _check_port(port, "Prefect server", "prefect_port")
    url = f"http://{HOST}:{port}"
    env = {**vacuum_env(retention_days), **os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"{url}/api"}  # the UI's API is this server, whatever the profile says
    return procs.start("Prefect server", [executable("prefect"), "server", "start", "--host", HOST, "--port", str(port)],
                       url=url, health=f"{url}/api/health", env=env, log=log_dir / "prefect-server.log")


def start_mlflow_server(port: int, backend_uri: str, log_dir: Path) -> procs.Service:
    """`mlflow server` on 127.0.0.1:``port`` over ``backend_uri`` (one worker, no job execution: its defaults take
    ~3 GB here), serving the artifacts kept beside a SQLite store (mlartifacts/)."""
    _check_port(port, "MLflow server", "mlflow_port")
    url = f"http://{HOST}:{port}"
    cmd = [executable("mlflow"), "server", "--backend-store-uri", backend_uri, "--host", HOST, "--port", str(port),
           "--workers", "1"]
    if backend_uri.startswith("sqlite:///"):
        cmd += ["--artifacts-destination", str(Path(backend_uri.removeprefix("sqlite:///")).parent / "mlartifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return procs.start("MLflow server", cmd, url=url, health=f"{url}/health", env=env, log=log_dir / "mlflow-server.log")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the process like Ctrl-C (KeyboardInterrupt), so its servers are stopped too; so does
    SIGINT even when this process was started with it ignored (a background job of a script inherits that)."""
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _profile_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL, load_current_profile

    return load_current_profile().settings.get(PREFECT_API_URL)


def _set_profile_api_url(url: str | None) -> None:
    from prefect.settings import PREFECT_API_URL, update_current_profile

    update_current_profile({PREFECT_API_URL: url})  # None removes the key


@contextlib.contextmanager
def profile_points_at(api_url: str) -> Iterator[str | None]:
    """PREFECT_API_URL = ``api_url`` in the current profile while the block runs; yields the value it replaced."""
    previous = _profile_api_url()
    _set_profile_api_url(api_url)
    try:
        yield previous
    finally:
        if _profile_api_url() == api_url:  # nobody changed it meanwhile
            _set_profile_api_url(previous)


def _pid_is_fedrec(pid: int) -> bool:
    try:
        return b"fedrec" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def reap_stale(home: Path | None = None) -> bool:
    """A `fedrec ui` that was killed outright (no chance to clean up) left its state file: put the profile's
    PREFECT_API_URL back and stop the servers it started. True when there was one. Cheap when there was none."""
    state_file = (home or prefect_home()) / STATE_FILE
    if not state_file.exists():
        return False
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state_file.unlink(missing_ok=True)
        return True
    if _pid_is_fedrec(int(state.get("pid", 0))):
        return False  # still running
    for group in state.get("groups", []):
        if not procs.group_alive(group):
            continue
        try:  # a live leader must still be our server (a group id is reused only once its group is empty)
            ours = any(k in Path(f"/proc/{group}/cmdline").read_bytes() for k in (b"prefect", b"mlflow"))
        except OSError:
            ours = True  # leader gone, members left: they are the dead UI's
        if ours:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGTERM)
    with contextlib.suppress(Exception):  # a broken profile file must not break every command
        if _profile_api_url() == state.get("prefect_api"):
            _set_profile_api_url(state.get("previous_api_url"))
    state_file.unlink(missing_ok=True)
    return True


def _wait_while_running(services: list[procs.Service]) -> None:
    while all(s.running() for s in services):
        time.sleep(0.5)
    dead = next(s for s in services if not s.running())
    raise OpsError(f"{dead.name} stopped (exit code {dead.proc.returncode}); its log: {dead.log}")


def run_ui(*, prefect_port: int, mlflow_port: int, tracking_uri: str, retention_days: int, log_dir: Path,
           echo: Callable[[str], None], ready: Callable[[UIUrls], None] | None = None) -> None:
    """Start both servers, wait for them, point the profile at the Prefect one, print the URLs; block until
    Ctrl-C / SIGTERM (or a server dies), then stop both process groups. ``tracking_uri`` that is already an
    http(s) MLflow server is used as is."""
    reap_stale()
    services: list[procs.Service] = []
    state_file = prefect_home() / STATE_FILE
    if state_file.exists():  # reap_stale left it: that UI is alive
        running = json.loads(state_file.read_text())
        raise OpsError(f"a fedrec ui already runs for this PREFECT_HOME (pid {running.get('pid')}): Prefect UI "
                       f"{running.get('prefect')}, MLflow UI {running.get('mlflow')}")
    with stop_on_signals():
        try:
            prefect = start_prefect_server(prefect_port, retention_days, log_dir)
            services.append(prefect)
            if tracking_uri.startswith(("http://", "https://")):
                mlflow_url = tracking_uri.rstrip("/")
            else:
                services.append(start_mlflow_server(mlflow_port, tracking_uri, log_dir))
                mlflow_url = services[-1].url
            echo(f"starting the Prefect server and the MLflow server (logs in {log_dir}) ...")
            procs.wait_ready(services, timeout=180)
            urls = UIUrls(prefect.url, mlflow_url)
            with profile_points_at(urls.prefect_api) as previous:
                state_file.parent.mkdir(parents=True, exist_ok=True)
                state_file.write_text(json.dumps({
                    "pid": os.getpid(), "prefect_api": urls.prefect_api, "prefect": urls.prefect,
                    "mlflow": urls.mlflow, "groups": [s.pgid for s in services], "previous_api_url": previous}))
                echo(f"Prefect UI: {urls.prefect}\nMLflow UI:  {urls.mlflow}\n"
                     f"runs of this project now report to {urls.prefect_api} (Ctrl-C stops both servers)")
                if ready:
                    ready(urls)
                _wait_while_running(services)
        except KeyboardInterrupt:
            echo("stopping the servers ...")
        finally:
            procs.stop_all(services)
            state_file.unlink(missing_ok=True)
    echo("stopped")


def run_worker(*, pool: str, prefect_port: int, retention_days: int, log_dir: Path,
               echo: Callable[[str], None], run_once: bool = False) -> int:
    """A process worker of ``pool`` against the configured Prefect API (`fedrec ui`'s, PREFECT_API_URL's), else
    against a Prefect server it starts on 127.0.0.1:``prefect_port`` (the scheduler that creates the cron's runs
    lives in the server). Blocks until Ctrl-C; returns the worker's exit code."""
    from prefect.settings import get_current_settings

    reap_stale()
    api = get_current_settings().api.url
    services: list[procs.Service] = []
    with stop_on_signals():
        try:
            if api and not procs.answers(f"{api}/health"):
                raise OpsError(f"the Prefect API {api} does not answer: start `fedrec ui` (or `prefect server "
                               "start`), or unset PREFECT_API_URL")
            if not api:
                local = f"http://{HOST}:{prefect_port}"
                if not procs.answers(f"{local}/api/health"):
                    services.append(start_prefect_server(prefect_port, retention_days, log_dir))
                    echo(f"starting a Prefect server (log {services[0].log}) ...")
                    procs.wait_ready(services, timeout=180)
                api = f"{local}/api"
            cmd = [executable("prefect"), "worker", "start", "--pool", pool, "--type", "process"]
            worker = procs.start("Prefect worker", cmd + (["--run-once"] if run_once else []), url="", health="",
                                 env={**os.environ, "PREFECT_API_URL": api}, log=None)
            services.append(worker)
            echo(f"worker of pool {pool!r} against {api} (Ctrl-C stops it"
                 + (" and the server it started)" if len(services) > 1 else ")"))
            while worker.running() and all(s.running() for s in services):
                time.sleep(0.5)
            if not worker.running():
                return worker.proc.returncode or 0
            _wait_while_running(services)
        except KeyboardInterrupt:
            echo("stopping ...")
        finally:
            procs.stop_all(services)
    return 0
