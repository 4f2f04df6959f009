"""Optional record of every path a process opens (``FEDREC_AUDIT_OPENS=<file>``), via ``sys.addaudithook``.

Used to show that the coordinator's process never opens a silo's data or key directory: its test runs the
coordinator with this set and checks the list; and (``FEDREC_AUDIT_HOLD``) that its memory holds no secret key."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

ENV = "FEDREC_AUDIT_OPENS"
#: ``<path>``: before exiting, the process writes its pid to ``<path>.ready`` and waits (up to 5 minutes) for
#: ``<path>.done``, so that a test can search its memory (support.leakscan.scan_process) after the run
HOLD_ENV = "FEDREC_AUDIT_HOLD"


def hold_for_inspection() -> None:
    path = os.environ.get(HOLD_ENV)
    if not path:
        return
    Path(path + ".ready").write_text(str(os.getpid()))
    deadline = time.monotonic() + 300
    while not os.path.exists(path + ".done") and time.monotonic() < deadline:
        time.sleep(0.2)


def install_from_env() -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    log = open(path, "a", buffering=1, encoding="utf-8")  # opened before the hook: not recorded
    lock = threading.Lock()
    watched = {"open", "os.listdir", "os.scandir", "os.walk"}

    def hook(event: str, args: tuple) -> None:
        if event in watched and args and isinstance(args[0], (str, bytes, os.PathLike)):
            name = os.fsdecode(args[0])
            with lock:
                log.write(f"{event}\t{os.path.abspath(name)}\n")

    sys.addaudithook(hook)
