"""The in-memory dataset shared by the loaders and partitioners."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


@dataclass(frozen=True)
class Dataset:
    """Interactions plus side tables.

    interactions: user_id int64, item_id int64, rating int64, timestamp int64
    items: item_id, title, year (nullable Int64), genres (list[str])
    users: user_id, zip_code (str) and whatever else the source has
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame

    @property
    def n_items(self) -> int:
        return len(self.items)
