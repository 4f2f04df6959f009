"""A silo's interactions from its own SQL database (silo.source), snapshotted into its Parquet data.

(Interface fixed; implementation in progress.)
"""

from __future__ import annotations

from fedrec.config import Config


def snapshot(cfg: Config, silo_id: str) -> None:
    """Read the silo's rows from ``cfg.silo.source`` and write them atomically to
    data/silos/<silo>/interactions.parquet (the silo's Parquet data)."""
    raise NotImplementedError
