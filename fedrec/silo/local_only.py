"""A silo's local-only baseline: the same model, trained on the silo's own data alone.

What a silo's owner asks before joining: how well would my users be served if I trained alone? The silo trains the
configured model on its own split (the same training rows, the same held-out items and candidates as in the
federation), selects the epoch on its validation item exactly as centralized training does, and reports the test
metrics of that epoch. It runs where the silo's data is and needs nobody else.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrec.core.config import Config
from fedrec.core.training import train_centralized
from fedrec.silo import data as pipeline


@dataclass(frozen=True)
class LocalOnly:
    """One seed of a silo trained alone: its size and the val-selected epoch's metrics."""

    silo_id: str
    seed: int
    n_users: int
    n_train: int
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]


def train_alone(cfg: Config, silo_id: str, seed: int) -> LocalOnly:
    """Train ``cfg.model`` on silo ``silo_id``'s split only (seed ``seed``); test metrics of the epoch its
    validation item selects."""
    data = pipeline.load_silo_data(cfg, silo_id)
    result = train_centralized(data, cfg, seed)
    return LocalOnly(silo_id=silo_id, seed=seed, n_users=data.n_users, n_train=data.n_train,
                     best_epoch=result.best_epoch, val=result.val, test=result.test)
