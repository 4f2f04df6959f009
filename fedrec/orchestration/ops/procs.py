"""Child servers in their own process groups: started, awaited on a URL, stopped group-wide (no orphans).

Each child leads a new session, so a terminal's Ctrl-C reaches only the parent, which then stops every group
(SIGTERM, then SIGKILL after a grace period): servers that fork workers (uvicorn, MLflow) leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fedrec.orchestration.ops import OpsError


@dataclass
class Service:
    """One started child: what a user opens (``url``), what is polled until it answers (``health``)."""

    name: str
    url: str
    health: str
    proc: subprocess.Popen
    log: Path

    @property
    def pgid(self) -> int:
        return self.proc.pid  # the leader of its own session and process group

    def running(self) -> bool:
        return self.proc.poll() is None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def answers(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers with a 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start(name: str, cmd: list[str], *, url: str, health: str, env: dict[str, str], log: Path | None,
          cwd: str | Path | None = None) -> Service:
    """Start ``cmd`` in a new session (its own process group), output appended to ``log`` (None: to this
    process's stderr)."""
    if log is None:
        proc = subprocess.Popen(cmd, stdout=sys.stderr.fileno(), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
        return Service(name, url, health, proc, Path("/dev/stderr"))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)
    return Service(name, url, health, proc, log)


def wait_ready(services: list[Service], timeout: float) -> None:
    """Poll each service's health URL until it answers; raise if one exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    pending = list(services)
    while pending:
        for service in list(pending):
            if not service.running():
                raise OpsError(f"{service.name} exited with code {service.proc.returncode} before answering; "
                               f"its log: {service.log}")
            if answers(service.health):
                pending.remove(service)
        if pending and time.monotonic() > deadline:
            raise OpsError(f"{', '.join(s.name for s in pending)} did not answer within {timeout:.0f}s; "
                           f"logs: {', '.join(str(s.log) for s in pending)}")
        if pending:
            time.sleep(0.25)


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still there (zombies of reaped children excluded)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(service: Service, grace: float = 15.0) -> None:
    """SIGTERM the service's whole process group, SIGKILL it after ``grace`` seconds; reap the leader."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(service.pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if service.proc.poll() is not None and not group_alive(service.pgid):
                break
            time.sleep(0.1)
        else:
            continue
        break
    try:
        service.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
        pass


def stop_all(services: list[Service], grace: float = 15.0) -> None:
    """Stop the services in reverse start order, each group-wide, ignoring signals meanwhile (a second Ctrl-C
    must not leave a half-stopped set of servers)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for service in reversed(services):  # all groups get SIGTERM at once: their grace periods overlap
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.pgid, signal.SIGTERM)
        for service in reversed(services):
            stop(service, grace)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
