"""Leave-one-out split and the fixed negative candidates of the sampled protocol.

Per user: the latest interaction is the test item, the second latest the validation item
(early stopping / model selection), the rest is training data. 99 negatives per user are
drawn once from items the user never touched, seeded by (seed, user_id) so a user gets
the same candidates whichever silo holds them and whichever model is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.core.coldstart import COLD_COLUMN, COLD_NEGATIVES_COLUMN
from fedrec.core.errors import ConfigError
from fedrec.core.fsperm import private_dir, private_file, write_private_bytes


@dataclass(frozen=True)
class Split:
    """train: interaction rows; holdout: user_id, val_item, test_item, negatives (list of n_neg item ids), and
    val_rating, test_rating (the held-out items' ratings, for task: rating; splits made before they existed lack
    them and are made again by a rating run)."""

    train: pd.DataFrame
    holdout: pd.DataFrame
    #: cold-start items (fedrec.core.coldstart): the catalogue's held-out item ids, none of their interactions in train;
    #: holdout then has a cold_items column (each user's cold items, oldest first). Saved as cold_items.json.
    cold_items: tuple[int, ...] = ()

    def save(self, directory: str | Path) -> None:
        """Into ``directory`` (a silo's ``data/split/<silo>``: its users' rows), 0600 files in a 0700 directory."""
        d = private_dir(directory)
        for name, frame in (("train.parquet", self.train), ("holdout.parquet", self.holdout)):
            with private_file(d / name) as fh:
                frame.to_parquet(fh, index=False)
        _save_cold_items(d, self.cold_items)  # cold start

    @classmethod
    def load(cls, directory: str | Path) -> "Split":
        d = Path(directory)
        return cls(pd.read_parquet(d / "train.parquet"), pd.read_parquet(d / "holdout.parquet"),
                   cold_items=_load_cold_items(d))  # cold start


def _save_cold_items(d: Path, cold_items: tuple[int, ...]) -> None:
    """cold start: the split's held-out items, or no file when it holds none."""
    import json

    if cold_items:
        write_private_bytes(d / "cold_items.json", json.dumps([int(i) for i in cold_items]).encode())
    else:
        (d / "cold_items.json").unlink(missing_ok=True)


def _load_cold_items(d: Path) -> tuple[int, ...]:
    import json

    path = d / "cold_items.json"
    return tuple(int(i) for i in json.loads(path.read_text())) if path.exists() else ()


def tiebreak_key(user_id: np.ndarray, item_id: np.ndarray, seed: int = 0) -> np.ndarray:
    """A pseudo-random but deterministic order for interactions with the same timestamp (splitmix64 of
    seed, user, item): the same whichever silo holds the user, and unrelated to the item id. Breaking
    ties by item id would make the test item systematically the highest id, i.e. the least popular
    (ML-100K numbers items roughly in catalogue order; 415 of 943 users have ties at their last second)."""
    with np.errstate(over="ignore"):
        x = (np.asarray(user_id, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.asarray(item_id, dtype=np.uint64) * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(seed))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def leave_one_out(interactions: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, user_id/val_item/test_item); same-second ties broken by :func:`tiebreak_key`."""
    keyed = interactions.assign(_tie=tiebreak_key(interactions["user_id"].to_numpy(),
                                                  interactions["item_id"].to_numpy(), seed))
    ordered = keyed.sort_values(["user_id", "timestamp", "_tie"], kind="mergesort").drop(columns="_tie")
    pos_from_end = ordered.groupby("user_id").cumcount(ascending=False)
    test = ordered[pos_from_end == 0].set_index("user_id")["item_id"]
    val = ordered[pos_from_end == 1].set_index("user_id")["item_id"]
    train = ordered[pos_from_end >= 2].reset_index(drop=True)
    holdout = pd.DataFrame({"val_item": val, "test_item": test}).dropna().astype("int64")
    holdout = holdout.rename_axis("user_id").reset_index()
    return train, holdout


def sample_user_negatives(seen: np.ndarray, catalogue: np.ndarray, n_neg: int, seed: int, user_id: int) -> np.ndarray:
    """``n_neg`` distinct catalogue item ids not in ``seen``, deterministic in (seed, user_id)."""
    rng = np.random.default_rng([seed, int(user_id)])
    allowed = len(catalogue) - len(np.intersect1d(seen, catalogue))
    if allowed < n_neg:
        raise ConfigError(f"user {user_id}: only {allowed} unseen items, cannot draw {n_neg} negatives; "
                          "lower evaluation.n_negatives or use a larger catalogue")
    chosen: list[int] = []
    taken = set(int(s) for s in seen)
    while len(chosen) < n_neg:
        for item in catalogue[rng.integers(0, len(catalogue), size=2 * n_neg)]:
            if int(item) not in taken:
                taken.add(int(item))
                chosen.append(int(item))
                if len(chosen) == n_neg:
                    break
    return np.asarray(chosen, dtype=np.int64)


def separate(interactions: pd.DataFrame, cold_ids: np.ndarray | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(warm rows, cold rows) of a silo's interactions."""
    if cold_ids is None or len(cold_ids) == 0:
        return interactions, interactions.iloc[:0]
    is_cold = interactions["item_id"].isin(np.asarray(cold_ids)).to_numpy()
    return interactions[~is_cold], interactions[is_cold]


def cold_negatives(user_id: int, user_cold: np.ndarray, cold_ids: np.ndarray, n_neg: int, seed: int) -> list[int]:
    """Up to ``n_neg`` cold items the user never touched, deterministic in (seed, user_id)."""
    allowed = np.setdiff1d(np.asarray(cold_ids, dtype=np.int64), np.asarray(user_cold, dtype=np.int64))
    if len(allowed) == 0:
        return []
    rng = np.random.default_rng([int(seed), int(user_id), 0xC01D])
    return [int(i) for i in rng.choice(allowed, size=min(n_neg, len(allowed)), replace=False)]


def add_cold_targets(holdout: pd.DataFrame, cold_rows: pd.DataFrame, cold_ids: np.ndarray, n_neg: int,
                     seed: int) -> pd.DataFrame:
    """``holdout`` plus :data:`COLD_COLUMN` (each user's cold items in time order, ties as the split breaks them)
    and :data:`COLD_NEGATIVES_COLUMN` (the sampled protocol's cold candidates; empty for users without cold items)."""
    keyed = cold_rows.assign(_tie=tiebreak_key(cold_rows["user_id"].to_numpy(), cold_rows["item_id"].to_numpy(), seed))
    ordered = keyed.sort_values(["user_id", "timestamp", "_tie"], kind="mergesort")
    lists = ordered.groupby("user_id")["item_id"].agg(lambda s: [int(i) for i in s])
    out = holdout.copy()
    out[COLD_COLUMN] = [lists.get(u, []) for u in out["user_id"]]
    out[COLD_NEGATIVES_COLUMN] = [cold_negatives(u, c, cold_ids, n_neg, seed) if c else []
                                  for u, c in zip(out["user_id"], out[COLD_COLUMN])]
    return out


def split_interactions(interactions: pd.DataFrame, catalogue: np.ndarray, n_neg: int, seed: int,
                       cold_items: np.ndarray | None = None) -> Split:
    """Leave-one-out plus fixed negatives; ``cold_items`` (fedrec.core.coldstart): item ids whose interactions all leave
    training (the split runs on the rest) and become each user's cold-start targets."""
    everything = interactions  # negatives avoid every item the user touched, cold ones included
    interactions, cold_rows = separate(interactions, cold_items)
    train, holdout = leave_one_out(interactions, seed)
    seen = everything.groupby("user_id")["item_id"].apply(np.asarray)
    catalogue = np.asarray(catalogue, dtype=np.int64)
    holdout["negatives"] = [
        sample_user_negatives(seen[u], catalogue, n_neg, seed, u).tolist() for u in holdout["user_id"]
    ]
    train = train[train["user_id"].isin(holdout["user_id"])].reset_index(drop=True)
    holdout = holdout.join(holdout_ratings(interactions, seed), on="user_id")
    if cold_items is not None and len(cold_items):  # cold start
        return Split(train=train, holdout=add_cold_targets(holdout, cold_rows, cold_items, n_neg, seed),
                     cold_items=tuple(int(i) for i in np.sort(np.asarray(cold_items))))
    return Split(train=train, holdout=holdout)


def holdout_ratings(interactions: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per user (index), the ratings of the validation and test items :func:`leave_one_out` holds out (same order,
    same tie-breaking): columns val_rating, test_rating (float64)."""
    keyed = interactions.assign(_tie=tiebreak_key(interactions["user_id"].to_numpy(),
                                                  interactions["item_id"].to_numpy(), seed))
    ordered = keyed.sort_values(["user_id", "timestamp", "_tie"], kind="mergesort")
    pos_from_end = ordered.groupby("user_id").cumcount(ascending=False)
    test = ordered[pos_from_end == 0].set_index("user_id")["rating"]
    val = ordered[pos_from_end == 1].set_index("user_id")["rating"]
    return pd.DataFrame({"val_rating": val, "test_rating": test}).dropna().astype("float64")
