"""Where a silo's files live under ``data.work_dir`` (see :mod:`fedrec.silo.data` for the whole layout): the silo id
is checked before it becomes a path segment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedrec.core.config import Config
from fedrec.wire.exchange import check_silo_id


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def of(cls, cfg: Config) -> "Paths":
        return cls(Path(cfg.data.work_dir))

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def catalogue(self) -> Path:
        return self.root / "catalogue"

    @property
    def silos(self) -> Path:
        return self.root / "silos"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def feedback(self) -> Path:
        return self.root / "feedback"

    @property
    def validation(self) -> Path:
        return self.root / "validation"

    @property
    def split(self) -> Path:
        return self.root / "split"

    def silo_data(self, silo_id: str) -> Path:
        """``silos/<silo>``: the silo's demo partition (its interactions and registered users)."""
        return self.silos / check_silo_id(silo_id)

    def silo_snapshot(self, silo_id: str) -> Path:
        """``snapshots/<silo>``: the copy of a database silo's rows (silo.source)."""
        return self.snapshots / check_silo_id(silo_id)

    def silo_feedback(self, silo_id: str) -> Path:
        return self.feedback / check_silo_id(silo_id)

    def silo_split(self, silo_id: str) -> Path:
        return self.split / check_silo_id(silo_id)


def silo_base_file(cfg: Config, silo_id: str) -> Path:
    """The silo's base interactions: its database snapshot (``silo.source`` set) or its demo partition file."""
    paths = Paths.of(cfg)
    return (paths.silo_snapshot(silo_id) if cfg.silo.source_of(silo_id) else paths.silo_data(silo_id)) / "interactions.parquet"
