"""A silo's checks before it serves its agent (`fedrec silo serve`): its data, the catalogue, the roster, the
exchange (:mod:`fedrec.protocol.preflight`)."""

from __future__ import annotations

from fedrec.core.config import Config
from fedrec.protocol.preflight import SetupError, check_catalogue, check_exchange, check_roster
from fedrec.silo.paths import silo_base_file


def check_silo_data(cfg: Config, silo_id: str) -> str:
    if cfg.silo.source_of(silo_id):
        return "interactions from silo.source (snapshotted at each run)"
    path = silo_base_file(cfg, silo_id)
    if not path.is_file():
        raise SetupError(f"silo {silo_id}: no interactions at {path}: put this silo's rows there (the columns of "
                         f"data/silos/<silo>/interactions.parquet), set silo.source to its database, or use "
                         f"data.source: files and `fedrec partition`")
    return f"interactions {path}"


def silo_ready(cfg: Config, silo_id: str) -> list[str]:
    """One line per check passed; :class:`SetupError` at the first that fails."""
    return [check_silo_data(cfg, silo_id), check_catalogue(cfg),
            check_roster(cfg, [silo_id, "coordinator"]), check_exchange(cfg)]
