"""`fedrec deploy | ui | cleanup`: scheduled retraining and the local UIs (registered on fedrec.cli's app)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the operations commands to ``app``."""
