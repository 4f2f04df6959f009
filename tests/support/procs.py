"""Test helper: stop the subprocesses a test started (SIGTERM all, then wait for each; SIGKILL a straggler)."""

from __future__ import annotations

import subprocess


def terminate_all(procs: list[subprocess.Popen], timeout: float = 30) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
