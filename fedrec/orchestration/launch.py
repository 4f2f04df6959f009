"""How the coordinator gets the silo agents of a run going.

- :class:`LocalSiloHosts` (one machine, ``federation.launcher: local``): ``max_parallel_silos`` host processes
  (``python -m fedrec.cli.silo_host``), each running the ``silo_agent`` flow of several silos against the same
  Prefect API, so one Prefect UI shows the coordinator and every silo.
- :class:`DeploymentLauncher` (``launcher: deployments``): each silo serves its own ``silo_agent/silo-<id>``
  deployment on its own machine (``fedrec silo serve``); the coordinator only creates flow runs of them.

Neither passes anything secret: a run id, a params path and overrides (the silo's own config decides the rest).
Both check the run and silo ids before anything becomes a path or a process argument (:class:`ConfigError`). The
host processes' logs (``state/logs/<run>/host-*.log``) may quote a silo's errors: 0600 in a 0700 directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from fedrec.core.config import Config
from fedrec.core.fsperm import open_private_log, private_dir
from fedrec.orchestration.warm_host import host_env
from fedrec.wire.exchange import check_run_id, check_silo_id

#: the pid of the Prefect server :func:`prefect_api` started (only that one is ever reniced)
OWN_SERVER_PID = "FEDREC_OWN_PREFECT_SERVER_PID"


def deployment_name(silo_id: str) -> str:
    return f"silo_agent/silo-{silo_id}"


def federation_tag(run_id: str) -> str:
    """The tag every silo agent flow run of federation run ``run_id`` carries (filter the Prefect UI by it)."""
    return f"federation:{run_id}"


def silo_run_name(federation: str, silo_id: str) -> str:
    """A silo agent's flow run is named after its federation's flow run: they sort and read together."""
    return f"{federation}-silo-{silo_id}"


def linked_silo_runs(silo_flow, federation: str, run_id: str, parameters: dict[str, dict]) -> dict[str, str]:
    """One ``silo_flow`` (the ``silo_agent`` flow) run per silo (``parameters``: silo -> the flow's parameters), created as subflow runs
    of the calling flow run (the coordinator's), the way Prefect's ``run_deployment`` links one: a placeholder task
    run in the parent, the child pointing at it. Named after the federation, tagged with its run id. The silo
    hosts then run exactly these flow runs. Returns silo -> flow run id ({} outside a flow run)."""
    from prefect import Task
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return {}
    runs = {}
    with get_client(sync_client=True) as client:
        for silo, params in parameters.items():
            name = silo_run_name(federation, silo)
            placeholder = Task(name=name, fn=lambda: None)
            placeholder.task_key = f"fedrec.silo_agent.{silo}"
            parent = client.create_task_run(task=placeholder, flow_run_id=ctx.flow_run.id, dynamic_key=silo,
                                            state=Running())
            run = client.create_flow_run(silo_flow, name=name, parameters=params, tags=[federation_tag(run_id)],
                                         parent_task_run_id=parent.id)
            runs[silo] = str(run.id)
    return runs


def settle_links(flow_run_ids: dict[str, str]) -> None:
    """The placeholder task runs of :func:`linked_silo_runs` end in their silo run's final state."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Failed

    with get_client(sync_client=True) as client:
        for silo, run_id in flow_run_ids.items():
            with contextlib.suppress(Exception):  # best effort: the UI's link, not the run's result
                run = client.read_flow_run(UUID(run_id))
                if run.parent_task_run_id is None:
                    continue
                ok = run.state is not None and run.state.is_completed()
                state = Completed() if ok else Failed(message=f"silo {silo}: {run.state.name if run.state else '?'}")
                client.set_task_run_state(run.parent_task_run_id, state, force=True)


#: a silo's fixed cost in a round, in training rows: ≈8 ms of set-up and ≈20 ms to mask, encrypt and send its
#: update, against ≈27 µs a row of training (ML-100K region silos, NeuMF, 2026-12-08 host logs)
PER_SILO_ROWS = 1000


def balanced_groups(silos: list[str], n_groups: int, sizes: dict[str, int] | None = None,
                    per_silo: int = 0) -> list[list[str]]:
    """Silos over ``n_groups`` hosts by load (a silo's size plus ``per_silo``, its fixed cost in rows; 1 each
    without sizes): longest-processing-time first, then moves and swaps between the most and the least loaded host
    while they lower the larger of the two (LPT alone left ML-100K's region silos at 51.5k/48.5k rows)."""
    n_groups = max(1, min(n_groups, len(silos)))
    cost = {s: (sizes or {}).get(s, 1) + per_silo if sizes else 1 for s in silos}
    groups: list[list[str]] = [[] for _ in range(n_groups)]
    load = [0] * n_groups
    for silo in sorted(silos, key=lambda s: (-cost[s], s)):
        i = min(range(n_groups), key=lambda g: (load[g], len(groups[g]), g))
        groups[i].append(silo)
        load[i] += cost[silo]
    for _ in range(4 * len(silos)):
        hi, lo = max(range(n_groups), key=lambda g: load[g]), min(range(n_groups), key=lambda g: load[g])
        best = (load[hi], None, None)  # the larger load of the two after the change; what moves each way
        for a in groups[hi]:
            for b in [None, *groups[lo]]:
                shift = cost[a] - (cost[b] if b is not None else 0)
                if 0 < shift and max(load[hi] - shift, load[lo] + shift) < best[0]:
                    best = (max(load[hi] - shift, load[lo] + shift), a, b)
        _, a, b = best
        if a is None:
            break
        groups[hi].remove(a)
        groups[lo].append(a)
        shift = cost[a]
        if b is not None:
            groups[lo].remove(b)
            groups[hi].append(b)
            shift -= cost[b]
        load[hi] -= shift
        load[lo] += shift
    return [sorted(g) for g in groups if g]


def host_count(cfg: Config) -> int:
    return cfg.federation.max_parallel_silos or os.cpu_count() or 1


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat): tells it from a later one that
    got the same pid."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class LocalSiloHosts:
    """Silo host processes on this machine; each keeps its silos' state in memory for the whole run."""

    def __init__(self, cfg: Config, run_id: str, silos: list[str], *, params_path: str,
                 overrides: dict | None, api_url: str | None, validation_in_train: bool = False,
                 sizes: dict[str, int] | None = None, federation: str | None = None, silo_flow=None):
        run_id, silos = check_run_id(run_id), [check_silo_id(s) for s in silos]
        self.groups = balanced_groups(silos, host_count(cfg), sizes, per_silo=PER_SILO_ROWS if sizes else 0)
        self.run_id = run_id
        self.federation = federation  # the coordinator's flow run name: the silo runs are linked to it
        self.silo_flow = silo_flow  # the silo_agent flow (fedrec.flows.silo_agent), whose runs are created here
        self.linked: dict[str, str] = {}
        self._params = {s: {"silo_id": s, "run_id": run_id, "params_path": str(params_path),
                            "overrides": overrides or None, "validation_in_train": validation_in_train}
                        for s in silos}
        self.log_dir = Path(cfg.federation.state_dir) / "logs" / run_id
        self.pid_file = Path(cfg.federation.state_dir) / "coordinator" / run_id / "hosts.json"
        # hosts of this run that outlived a crashed coordinator: (silos, pid, start ticks)
        self.attached: list[tuple[list[str], int, int | None]] = []
        self._cmd = [sys.executable, "-m", "fedrec.cli.silo_host", "--params", str(params_path), "--run-id", run_id,
                     "--overrides", json.dumps(overrides or {})] + (["--validation-in-train"] if validation_in_train
                                                                     else [])
        # one intra-op thread per host (host_env): OpenMP reads it in every thread (torch.set_num_threads does not
        # reach the silos' threads), so hosts never oversubscribe the cores
        self._env = host_env() | ({"PREFECT_API_URL": api_url} if api_url else {})
        self.procs: list[tuple[list[str], subprocess.Popen]] = []

    def _host_alive(self, pid: int, started: int | None = None) -> bool:
        """``pid`` is still this run's host: a silo host whose command line names this run, or (a host forked by
        the warm host, whose command line names none) one that started when the host list says it did."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if b"fedrec.cli.silo_host" not in cmdline:
            return False
        return self.run_id.encode() in cmdline or (started is not None and _start_ticks(pid) == started)

    def start(self) -> "LocalSiloHosts":
        """Start the hosts; or, when this run's hosts outlived its crashed coordinator, attach to them (their
        silo agents kept their state in memory and wait for the next round's instructions)."""
        from fedrec.orchestration.warm_host import take_warm

        warm = take_warm()  # started with the CLI's first lines (fedrec.orchestration.warm_host)
        if self.pid_file.exists():
            previous = [(entry["silos"], int(entry["pid"]), entry.get("started"))
                        for entry in json.loads(self.pid_file.read_text())]
            if previous and all(self._host_alive(pid, started) for _, pid, started in previous):
                self.attached = previous
                if warm is not None:
                    warm.stop()
                return self
        private_dir(self.log_dir)
        if self.federation and self.silo_flow is not None:
            self.linked = linked_silo_runs(self.silo_flow, self.federation, self.run_id, self._params)
        hosts = []
        for i, group in enumerate(self.groups):
            runs = {s: self.linked[s] for s in group if s in self.linked}
            log = self.log_dir / f"host-{i}.log"
            open_private_log(log).close()
            hosts.append((self._cmd[3:] + ["--silos", ",".join(group), "--flow-runs", json.dumps(runs)], log))
        forked = warm.launch(hosts, self._env) if warm is not None else None
        if forked is not None:
            self.procs = list(zip(self.groups, forked))
        else:
            for group, (argv, log) in zip(self.groups, hosts):
                with open(log, "ab") as out:  # the host keeps its own descriptor
                    self.procs.append((group, subprocess.Popen(self._cmd[:3] + argv, stdout=out,
                                                               stderr=subprocess.STDOUT, env=self._env)))
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(json.dumps([{"silos": g, "pid": p.pid, "started": _start_ticks(p.pid)}
                                             for g, p in self.procs]))
        return self

    def gone(self) -> set[str]:
        """Silos whose host process has exited."""
        return ({s for group, proc in self.procs if proc.poll() is not None for s in group}
                | {s for group, pid, started in self.attached if not self._host_alive(pid, started) for s in group})

    def failed_hosts(self) -> list[str]:
        return [f"host {i} ({','.join(g)}) exit {p.returncode}; log {self.log_dir / f'host-{i}.log'}"
                for i, (g, p) in enumerate(self.procs) if p.returncode not in (0, None)]

    def join(self, timeout: float = 120.0) -> list[str]:
        """Wait for the hosts to exit (they do once the run is stopped); kill stragglers. Returns failures."""
        deadline = time.monotonic() + timeout
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for group, pid, started in self.attached:  # not our children: wait by looking
            while self._host_alive(pid, started) and time.monotonic() < deadline:
                time.sleep(0.2)
            if self._host_alive(pid, started):
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
        if self.linked:
            settle_links(self.linked)
        return self.failed_hosts()


class DeploymentLauncher:
    """Flow runs of each silo's own ``silo_agent`` deployment (served on the silo's machine)."""

    def __init__(self, cfg: Config, run_id: str, silos: list[str], *, validation_in_train: bool = False,
                 federation: str | None = None):
        self.cfg, self.run_id, self.silos = cfg, check_run_id(run_id), [check_silo_id(s) for s in silos]
        self.federation = federation or f"federation-{self.run_id}"
        self.validation_in_train = validation_in_train
        self.flow_runs: dict[str, object] = {}
        self._gone: set[str] = set()
        self._checked = 0.0

    def _running(self) -> dict[str, object]:
        """Agent flow runs of this run that are still going (they outlived a crashed coordinator)."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[federation_tag(self.run_id)])))
        silos = set(self.silos)
        return {r.parameters["silo_id"]: r for r in runs if r.parameters.get("silo_id") in silos
                and r.state is not None and not r.state.is_final()}

    def start(self) -> "DeploymentLauncher":
        """Start a flow run of each silo's deployment, or reuse the one still running for this run (resume)."""
        from prefect.deployments import run_deployment

        self.flow_runs.update(self._running())
        for silo in self.silos:
            if silo in self.flow_runs:
                continue
            self.flow_runs[silo] = run_deployment(  # a subflow run of the coordinator's flow run (as_subflow)
                deployment_name(silo), timeout=0,
                parameters={"run_id": self.run_id, "validation_in_train": self.validation_in_train},
                flow_run_name=silo_run_name(self.federation, silo), tags=[federation_tag(self.run_id)])
        return self

    def _states(self) -> dict[str, object]:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return {s: client.read_flow_run(fr.id).state for s, fr in self.flow_runs.items()}

    def gone(self) -> set[str]:
        """Silos whose agent flow run has ended (checked at most every 2 s: it is an API call)."""
        if time.monotonic() - self._checked > 2.0:
            self._checked = time.monotonic()
            self._gone = {s for s, st in self._states().items() if st is not None and st.is_final()}
        return self._gone

    def join(self, timeout: float = 120.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self._states()
            if all(st is not None and st.is_final() for st in states.values()):
                return [f"silo {s}: {st.name}" for s, st in states.items() if not st.is_completed()]
            time.sleep(1.0)
        return [f"silo {s}: still {st.name if st else 'unknown'} after {timeout:.0f}s"
                for s, st in self._states().items() if st is None or not st.is_final()]


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API every party reports to: PREFECT_API_URL when set (a `prefect server` or the test
    harness), else Prefect's own local server on 127.0.0.1 over the project's PREFECT_HOME database,
    started for this run and stopped after it. Yields its URL."""
    from prefect.settings import (
        PREFECT_API_URL,
        get_current_settings,
        temporary_settings,
    )

    from fedrec.orchestration.local_server import LocalServer, take_early

    early = take_early()  # started by the CLI's first lines (fedrec.orchestration.local_server.spawn_early)
    url = get_current_settings().api.url
    if url:
        if early is not None:
            early.stop()
        yield url
        return
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    server = early or LocalServer()
    try:
        api_url = server.wait_ready(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    except BaseException:
        server.stop()
        raise
    os.environ[OWN_SERVER_PID] = str(server.pid)
    quiet = _NoViewLinks()  # "View at <this server>" would be a dead link once the run ends and it stops
    logging.getLogger("prefect.flow_runs").addFilter(quiet)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
            _drain_prefect_workers()  # logs and events reach the server before it stops
            _await_idle(server.pid)  # and it has written them (a stopped server drops what it has not)
    finally:
        logging.getLogger("prefect.flow_runs").removeFilter(quiet)
        os.environ.pop(OWN_SERVER_PID, None)
        server.stop()


def _await_idle(pid: int | None, timeout_s: float = 15.0, window_s: float = 0.25, busy: float = 0.1) -> None:
    """Wait (up to ``timeout_s``) until process ``pid`` uses less than ``busy`` of a core over ``window_s``: the
    local Prefect server works through the events it has queued (niced during the rounds, it can be seconds
    behind at the end), and stopping it drops the ones it has not written (its task-run recorder logs "Error
    flushing"; the UI would show those task runs running for ever). Linux (/proc); elsewhere no wait."""
    stat = Path(f"/proc/{pid}/stat")
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def cpu_s() -> float:  # utime + stime: fields 14 and 15, counted after the ")" that ends the command name
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(OSError, ValueError, IndexError):
        last = cpu_s()
        while time.monotonic() < deadline:
            time.sleep(window_s)
            now = cpu_s()
            if now - last < busy * window_s:
                return
            last = now


class _NoViewLinks(logging.Filter):
    """Drops Prefect's "View at http://..." console line (sent to no API) for runs on a temporary server."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("View at ")


def local_server_yields_cpu() -> None:
    """Once the silos have joined: the local Prefect server started by :func:`prefect_api` (only that one) ingests every
    task run's events (~0.3 of a core here); niced, it yields the CPU to training and catches up between rounds.
    Nothing in a round waits on it (before that, flow runs are being created: it runs at normal priority)."""
    pid = os.environ.get(OWN_SERVER_PID)
    if pid and pid.isdigit():
        _lower_priority(int(pid))


def _lower_priority(pid: int, niceness: int = 19) -> None:
    """Nice every thread of ``pid`` (Linux applies niceness per thread; later threads inherit it)."""
    tids = os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else [str(pid)]
    for tid in tids:
        with contextlib.suppress(OSError, ValueError):
            os.setpriority(os.PRIO_PROCESS, int(tid), niceness)


def _drain_prefect_workers() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.instance().drain()
    except RuntimeError:  # never started
        pass
    EventsWorker.drain_all()
