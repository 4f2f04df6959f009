"""Fault injection for tests: ``FEDREC_FAULT=<point>:<round>`` makes the process die at that point as a crash
would (``os._exit``: no cleanup, no ``finally``), e.g. ``coordinator-after-round:2``. Unset, nothing happens."""

from __future__ import annotations

import os

ENV = "FEDREC_FAULT"
CRASH_EXIT_CODE = 70


def crash_point(point: str, server_round: int) -> None:
    if os.environ.get(ENV) == f"{point}:{server_round}":
        os._exit(CRASH_EXIT_CODE)
