"""The run's own Prefect server on 127.0.0.1, started as early as the CLI knows it will need one.

Prefect's ``SubprocessASGIServer`` starts the same uvicorn app, but only once ``import prefect.server.api.server``
has run in the caller (≈3 s of CPU in the coordinator) and only when the flow is about to start: the server's own
start-up (≈5 s) then runs on its own while the CLI waits. :func:`spawn_early` starts it from the CLI's first lines,
with nothing but the standard library, so the server starts on the second core while the CLI imports torch, Prefect
and the flows; :func:`fedrec.orchestration.launch.prefect_api` adopts it (or starts one itself, the same way).

Only where no Prefect API is configured (``PREFECT_API_URL`` in the environment or the active profile): then the
run reports to that one and an early server, if one was started, is stopped unused.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import random
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

PORTS = range(8000, 9000)  # Prefect's own range for its temporary server
PORT_IN_USE_EXIT = 3  # uvicorn's exit code when the port was taken meanwhile
#: the server's environment, as Prefect's temporary server has it: no UI, ephemeral, final
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}

_EARLY: "LocalServer | None" = None


class LocalServer:
    """One uvicorn process serving Prefect's API app on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process = self._spawn()
        atexit.register(self.stop)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _spawn(self) -> subprocess.Popen:
        spec = importlib.util.find_spec("prefect")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("prefect is not installed")
        app_dir = Path(list(spec.submodule_search_locations)[0]).parent
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
               "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "error", "--lifespan", "on"]
        return subprocess.Popen(cmd, env=os.environ | SERVER_ENV)

    def wait_ready(self, timeout_s: float) -> str:
        """Block until the API answers /health (re-spawning on another port if this one was taken); its URL."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() == PORT_IN_USE_EXIT:
                self.port = _free_port()
                self.process = self._spawn()
                continue
            if self.process.poll() is not None:
                raise RuntimeError(f"the local Prefect server exited with code {self.process.returncode}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self.api_url
            time.sleep(0.1)
        raise RuntimeError(f"the local Prefect server did not answer within {timeout_s:.0f} s "
                           "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    for _ in range(10):
        port = random.choice(PORTS)
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                time.sleep(random.uniform(0.1, 0.5))
                continue
            return port
    raise RuntimeError("no free port for a local Prefect server")


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active profile, read without importing Prefect (a guess:
    Prefect's own settings decide in :func:`fedrec.orchestration.launch.prefect_api`)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    name = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    url = (profiles.get("profiles", {}).get(name) or {}).get("PREFECT_API_URL")
    return str(url) if url else None


def spawn_early() -> None:
    """Start this run's local Prefect server now, unless a Prefect API is configured or one was started already.
    Never raises: a server that could not be started here is started (or its error named) by prefect_api."""
    global _EARLY
    if _EARLY is not None or configured_api_url():
        return
    with contextlib.suppress(Exception):
        _EARLY = LocalServer()


def take_early() -> LocalServer | None:
    """The server :func:`spawn_early` started (once), or None."""
    global _EARLY
    server, _EARLY = _EARLY, None
    return server
