"""`fedrec demo-db`: the demo silos written into per-silo SQL databases (registered on fedrec.cli's app)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the data-source commands to ``app``."""
