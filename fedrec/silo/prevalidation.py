"""A silo host's first step: read and validate its silos' data before it loads its training stack.

:func:`prevalidate` reads each silo's data; a silo whose unchanged data passed before takes its saved verdict, the
others go through Great Expectations in a child process (fedrec.silo.validation's) that exits before the host
imports torch and Prefect, so GE never shares memory with them (the run's peak RSS); the silos' agents take the
verdicts with :func:`take_prevalidated` in their validate step (fedrec.silo.agent).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from fedrec.silo.validation import GE_CHILD, ValidationReport

#: silo id -> (interactions, report) read and validated before this process loaded its training stack (prevalidate)
_PREVALIDATED: dict[str, tuple[pd.DataFrame, ValidationReport]] = {}


def prevalidate(params_path: str, overrides: dict[str, Any] | None, silo_ids: list[str]) -> list[str]:
    """Read these silos' interactions (silo.source, then feedback) and validate them: a silo whose unchanged data
    passed before takes its saved verdict (fedrec.silo.data.validate_silo); the others go through the GE suite in a
    child process that exits before this one goes on (a silo host calls this before it imports torch and Prefect,
    so the two never share memory: peak RSS). Its silos' agents take the results (:func:`take_prevalidated`).
    Returns the silos done; a silo whose data could not be read is not among them (its agent reads it again and
    reports why)."""
    from fedrec.core.config import load_config
    from fedrec.silo import data as pipeline

    cfg = load_config(params_path, overrides)
    done: dict[str, tuple[pd.DataFrame, ValidationReport]] = {}
    todo: dict[str, pd.DataFrame] = {}
    for silo_id in silo_ids:
        try:
            frame = pipeline.silo_interactions(cfg, silo_id, refresh=True)
            report = pipeline.saved_validation(cfg, silo_id, frame)
        except Exception:  # noqa: BLE001 - the agent reads it again and names why in its hello
            continue
        if report is not None:
            done[silo_id] = (frame, report)
        else:
            todo[silo_id] = frame
    if todo:
        try:
            done |= GE_CHILD.run(_validate, params_path, overrides, todo)
        finally:
            GE_CHILD.close()
    _PREVALIDATED.update(done)
    return sorted(done)


def take_prevalidated(silo_id: str) -> tuple[pd.DataFrame, ValidationReport] | None:
    """This silo's interactions and report from :func:`prevalidate` (once), or None."""
    return _PREVALIDATED.pop(silo_id, None)


def _validate(params_path: str, overrides: dict[str, Any] | None,
              frames: dict[str, pd.DataFrame]) -> dict[str, tuple[pd.DataFrame, ValidationReport]]:
    from fedrec.core.config import load_config  # in the child
    from fedrec.silo import data as pipeline

    cfg = load_config(params_path, overrides)
    done = {}
    for silo_id, frame in frames.items():
        try:
            done[silo_id] = (frame, pipeline.validate_silo(cfg, silo_id, frame))
        except Exception:  # noqa: BLE001 - the agent validates it again and names why in its hello
            continue
    return done
