"""A warm silo host: the first silo host process, started with the CLI's first lines, that imports the training
stack once and forks the run's other hosts from itself.

Every silo host imports pandas, torch, Prefect, the silo stack and ``torch._dynamo`` (which torch.optim's first
step imports): ≈3.8 s of CPU a host, measured on this 2-core machine, while the CLI imports its own stack and the
Prefect server starts, all of it CPU-bound. :func:`spawn_warm` starts ``python -m fedrec.cli.silo_host --warm`` as
early as :func:`fedrec.orchestration.local_server.spawn_early` starts the server; when the flow launches its hosts
(:class:`fedrec.orchestration.launch.LocalSiloHosts`), the warm host forks one child per other host (copy on
write: they share its imported modules' pages, nothing is imported again), then becomes host 0 itself. A fork is
safe there: the warm host has no other thread when it forks (it refuses to fork otherwise), and each child
replaces its environment by the launch's and reloads Prefect's settings (the API URL) before it runs.

Nothing depends on it: a warm host that is not ready, died, or was started with another environment than the
launch's is stopped, and the hosts are spawned as before. Messages (JSON lines): warm host → CLI ``{"ready": true}``,
``{"pids": [...]}`` (the forked hosts), ``{"exit": pid, "code": c}`` (a forked host ended: the warm host reaps
them, and waits for them before it exits itself); CLI → warm host: one launch request, then end of file.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from fedrec.core.config import Config

#: environment variables the launch may set after the warm host started: read at run time, not at import time
MAY_DIFFER = frozenset({"PREFECT_API_URL", "FEDREC_OWN_PREFECT_SERVER_PID"})
#: one intra-op thread per host (OpenMP reads it when torch loads): as fedrec.orchestration.launch's hosts
HOST_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
READY_TIMEOUT_S = 60.0
#: the nice value of the warm host's import thread (see _niced)
IMPORT_NICE = 5

_WARM: "WarmHost | None" = None


def host_env(base: dict[str, str] | None = None) -> dict[str, str]:
    return dict(base if base is not None else os.environ) | HOST_ENV


class ForkedHost:
    """A host the warm host forked: as much of :class:`subprocess.Popen` as the launcher uses (pid, poll, wait,
    kill, returncode). Its exit code comes from the warm host, which reaps it; -1 when the warm host died first and
    the process is gone (the code was lost)."""

    def __init__(self, pid: int, warm: "WarmHost") -> None:
        self.pid, self._warm, self.returncode = pid, warm, None
        self.args = ["fedrec.cli.silo_host", f"(forked by {warm.proc.pid})"]

    def poll(self) -> int | None:
        if self.returncode is None:
            code = self._warm.exit_code(self.pid)
            if code is None and self._warm.closed and not Path(f"/proc/{self.pid}").exists():
                code = -1
            self.returncode = code
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.05)
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, 9)


class WarmHost:
    """The CLI's side of one warm host process."""

    def __init__(self) -> None:
        self.env = host_env()
        self.proc = subprocess.Popen([sys.executable, "-m", "fedrec.cli.silo_host", "--warm"], env=self.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        self._messages: queue.Queue = queue.Queue()
        self._exits: dict[int, int] = {}
        self.closed = False  # its message channel ended (it exited)
        threading.Thread(target=self._read, name="fedrec-warm-host", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if "exit" in message:
                    self._exits[int(message["exit"])] = int(message["code"])
                else:
                    self._messages.put(message)
        self.closed = True
        self._messages.put({})

    def exit_code(self, pid: int) -> int | None:
        return self._exits.get(pid)

    def _next(self, timeout: float) -> dict:
        try:
            return self._messages.get(timeout=timeout)
        except queue.Empty:
            return {}

    def launch(self, hosts: list[tuple[list[str], Path]], env: dict[str, str]) -> list | None:
        """Fork the hosts: ``hosts`` = (silo_host arguments, log file) each, ``env`` their environment. Returns
        their process handles (host 0 is this warm host's own Popen), or None when it cannot serve the launch
        (then it is stopped and the caller spawns the hosts itself)."""
        differs = sorted(k for k in env.keys() | self.env.keys() if env.get(k) != self.env.get(k) and
                         k not in MAY_DIFFER)
        if differs or not hosts or not self._next(READY_TIMEOUT_S).get("ready"):
            self.stop()
            return None
        request = {"hosts": [{"argv": argv, "log": str(log)} for argv, log in hosts], "env": env}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.close()
        except OSError:
            self.stop()
            return None
        answer = self._next(READY_TIMEOUT_S)
        if "pids" not in answer:  # refused (another thread ran) or died
            self.stop()
            return None
        return [self.proc] + [ForkedHost(int(pid), self) for pid in answer["pids"]]

    def stop(self) -> None:
        """Stop a warm host that serves no launch: it holds nothing but imported modules (it may still be importing
        them, and reads its input only then), so it is killed."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def spawn_warm() -> None:
    """Start the warm host now (once); never raises: without it the hosts are spawned as before."""
    global _WARM
    if _WARM is not None or not sys.platform.startswith("linux"):  # fork after torch's imports: Linux only
        return
    with contextlib.suppress(Exception):
        _WARM = WarmHost()


@contextlib.contextmanager
def warm_start(cfg: "Config") -> Iterator[None]:
    """A warm host for what runs inside (``federation.warm_host`` with the local launcher); one that no launch took
    is stopped on the way out, error or not."""
    if cfg.federation.launcher == "local" and cfg.federation.warm_host:
        spawn_warm()
    try:
        yield
    finally:
        _stop_unused()


def take_warm() -> WarmHost | None:
    """The warm host :func:`spawn_warm` started (once), or None."""
    global _WARM
    warm, _WARM = _WARM, None
    return warm


def _stop_unused() -> None:
    warm = take_warm()
    if warm is not None:
        warm.stop()


# --- the warm host's side (python -m fedrec.cli.silo_host --warm) ------------------------------------------------
def serve(main, prepare) -> int:
    """``prepare()`` (import the hosts' stack), say ready, take one launch request: fork its hosts 1..n-1 (each
    runs ``main(argv)``), run host 0 here, reap the children and report their exit codes; return host 0's code.
    Without a request (end of input): 0, nothing run."""
    from fedrec.core import env

    env.apply_defaults()
    importer = threading.Thread(target=_niced, args=(prepare,), name="fedrec-warm-imports")
    importer.start()
    importer.join()
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    _to(os.devnull)  # nothing of it is read until a host's log takes fds 1 and 2
    _say(channel, {"ready": True})
    line = sys.stdin.readline()
    if not line:
        return 0
    request = json.loads(line)
    hosts = request["hosts"]
    if threading.active_count() != 1:  # a fork would copy a thread's locks, not the thread
        _say(channel, {"refused": f"{threading.active_count()} threads"})
        return 0
    os.environ.clear()
    os.environ.update(request["env"])
    pids = []
    for host in hosts[1:]:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child never returns into this loop, whatever its host does
            code = 1
            try:
                channel.close()
                code = _become(main, host)
            finally:
                env.exit_now(code)
        pids.append(pid)
    _say(channel, {"pids": pids})
    reapers = [threading.Thread(target=_reap, args=(pid, channel), name=f"fedrec-reap-{pid}") for pid in pids]
    for reaper in reapers:
        reaper.start()
    try:
        return _become(main, hosts[0])
    finally:
        for reaper in reapers:  # its hosts end with the run: their codes reach the launcher before this one's
            reaper.join()


def _niced(prepare) -> None:
    """``prepare()`` (the hosts' imports) at a lower priority (Linux: nice is per thread; this thread ends before
    any fork, and the forked hosts take the main thread's): while the CLI imports its own stack and the Prefect
    server starts, both on the run's critical path, it takes what CPU they leave."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), IMPORT_NICE)
    prepare()


def _become(main, host: dict) -> int:
    """This process becomes one host: its log on fds 1 and 2, no input, Prefect's settings from its environment."""
    _to(host["log"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()
    try:
        return main(host["argv"])
    except SystemExit as exc:  # argparse's errors: the code a process would have exited with
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 1
        return int(exc.code or 0)
    except BaseException:  # noqa: BLE001 - in its log, as an uncaught error would be
        traceback.print_exc()
        return 1


def _to(path: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _say(channel, message: dict) -> None:
    with contextlib.suppress(OSError):  # the CLI is gone (it crashed): the hosts go on
        channel.write(json.dumps(message) + "\n")
        channel.flush()


def _reap(pid: int, channel) -> None:
    """Wait for one forked host (by its pid: host 0's own children, e.g. its GE worker, are not this one's) and
    report its exit code."""
    with contextlib.suppress(ChildProcessError):
        _, status = os.waitpid(pid, 0)
        _say(channel, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
