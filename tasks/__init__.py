"""Prefect tasks: thin wrappers over fedrec's domain functions. Retries only where there is I/O."""

from __future__ import annotations

from fedrec.core.errors import FedrecError


def retry_on_io_only(task, task_run, state) -> bool:
    """Retry transient I/O failures; a named fedrec error (bad payload, bad data) will not heal on retry."""
    try:
        state.result()
    except FedrecError:
        return False
    except Exception:  # noqa: BLE001 - anything else (OSError, timeouts) may be transient
        return True
    return True


IO_RETRIES = dict(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_on_io_only)
