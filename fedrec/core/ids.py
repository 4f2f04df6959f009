"""Ids that become path segments (on the exchange, in silo stores and data folders): checked before any path
is built from them."""

from __future__ import annotations

import re

from fedrec.core.errors import ConfigError

#: silo ids become path segments on the exchange, in silo stores and data folders: the whole id must match
#: (re.fullmatch: no trailing newline), a letter, digit or '_' first, no separators, no dot-dot
SILO_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
#: run ids become path segments too (the run's exchange, state/coordinator/<run>, state/silos/<silo>/<run>, logs,
#: reports); longer than silo ids: a Prefect flow run id (a UUID) plus a suffix such as "-refit"
RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_silo_id(silo_id: str) -> str:
    """``silo_id`` if it is a plain path segment, else :class:`ConfigError` (check before building any path)."""
    if not isinstance(silo_id, str) or not SILO_ID.fullmatch(silo_id) or ".." in silo_id:
        raise ConfigError(f"silo id {silo_id!r} is not allowed: use letters, digits, '_', '-', '.' (no path parts)")
    return silo_id


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a plain path segment, else :class:`ConfigError` (check before building any path)."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ConfigError(f"run id {run_id!r} is not allowed: use letters, digits, '_', '-', '.' (no path parts, "
                          "at most 128 characters)")
    return run_id
