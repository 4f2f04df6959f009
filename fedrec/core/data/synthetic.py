"""Synthetic interactions: power-law item popularity times latent-factor preference.

Used by the tests (small, fast) and by scale benchmarks (large). Users get US-style
zip codes so the ``region`` partitioner works on synthetic data too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedrec.core.config import SyntheticConfig
from fedrec.core.data.types import Dataset

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")
T0 = 880_000_000  # 1997-11, inside the plausible range the GE suite checks


def generate(cfg: SyntheticConfig) -> Dataset:
    rng = np.random.default_rng(cfg.seed)
    n_users, n_items, k = cfg.n_users, cfg.n_items, cfg.n_factors
    per_user = min(cfg.interactions_per_user, n_items - 1)
    user_f = rng.normal(size=(n_users, k))
    item_f = rng.normal(size=(n_items, k))
    popularity = 1.0 / np.arange(1, n_items + 1) ** cfg.popularity_exponent
    popularity = popularity[rng.permutation(n_items)]
    rows = []
    for u in range(n_users):
        logits = user_f[u] @ item_f.T / np.sqrt(k) + np.log(popularity)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        n = int(rng.integers(max(3, per_user // 2), per_user + 1))
        items = rng.choice(n_items, size=n, replace=False, p=p)
        times = T0 + np.sort(rng.integers(0, 30 * 86400, size=n))
        ratings = np.clip(np.round(3 + user_f[u] @ item_f[items].T / np.sqrt(k)), 1, 5)
        rows.append(np.column_stack([np.full(n, u + 1), items + 1, ratings, times]))
    data = np.concatenate(rows).astype("int64")
    interactions = pd.DataFrame(data, columns=["user_id", "item_id", "rating", "timestamp"])
    genre_idx = np.argmax(item_f[:, : len(GENRES)], axis=1) % len(GENRES)
    items = pd.DataFrame({
        "item_id": np.arange(1, n_items + 1, dtype="int64"),
        "title": [f"Item {i}" for i in range(1, n_items + 1)],
        "year": pd.array(rng.integers(1950, 1998, size=n_items), dtype="Int64"),
        "genres": [[GENRES[g]] for g in genre_idx],
    })
    zips = [f"{rng.integers(0, 10)}{rng.integers(0, 10_000):04d}" for _ in range(n_users)]
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1, dtype="int64"), "zip_code": zips})
    return Dataset(interactions=interactions, items=items, users=users)
