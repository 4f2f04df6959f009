"""Offline, project-local defaults for every entry point (CLI, flows, tests); the user's own settings win.

Must run before Prefect is imported: Prefect reads PREFECT_HOME when its settings load.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
}


def apply_defaults(project_dir: str | Path | None = None) -> None:
    root = Path(project_dir or Path.cwd()).resolve()
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
