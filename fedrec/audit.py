"""Optional record of every path a process opens (``FEDREC_AUDIT_OPENS=<file>``), via ``sys.addaudithook``.

Used to show that the coordinator's process never opens a silo's data or key directory: its test runs the
coordinator with this set and checks the list."""

from __future__ import annotations

import os
import sys
import threading

ENV = "FEDREC_AUDIT_OPENS"


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
