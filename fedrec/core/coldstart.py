"""Cold-start items: a fixed, seeded share of the catalogue held out of training everywhere, ranked at the end.

``evaluation.cold_item_fraction`` of the catalogue's items (chosen from the sorted catalogue ids with
``evaluation.cold_seed``, so every silo and the centralized twin hold out the same items without talking to each
other) lose every interaction in training: they are neither positives nor sampled negatives, at any silo. The
leave-one-out split then runs on the remaining (warm) interactions, so the usual metrics are warm-item metrics.

Each user who interacted with a cold item is asked to rank their latest cold item (time, then the split's
tie-break) among the other cold items, the items nobody has trained on:

* sampled: against ``evaluation.n_negatives`` cold items the user never touched, drawn once per user at the split
  (seeded by the evaluation seed and the user id, like the warm negatives; fewer when the cold set is smaller);
* full: against every cold item the user never touched.

Why among cold items, not among all items: a model without content (NeuMF) never moves a cold item's embedding
from its initial near-zero value, while training pushes the embeddings of most warm items (sampled negatives)
down; near-zero then outranks most warm items, and a content-free model would "find" cold items by that artefact
alone (measured on the tiny synthetic data: NeuMF cold HR@10 1.0 against warm negatives). Among cold items only,
a model's cold-item metric measures what it knows about them: random for NeuMF and for popularity (every cold item
has count 0), and whatever the text tells for the hybrid. Tied scores count as a random order (the expected HR
and NDCG over the tie's orders), not in the target's favour: popularity ties all cold items.

Only sums (:class:`~fedrec.core.metrics.MetricSums`) leave a silo, as for the warm items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fedrec.core.metrics import EVAL_CHUNK_USERS, MetricSums

if TYPE_CHECKING:  # torch only where a model is scored: fedrec.silo.data (validation, splits) runs without it
    import torch

#: holdout columns: each user's cold items, oldest first (the last one is the user's cold target), and the cold
#: items the target is ranked against in the sampled protocol
COLD_COLUMN = "cold_items"
COLD_NEGATIVES_COLUMN = "cold_negatives"


def cold_item_ids(catalogue_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The held-out item ids (sorted): ``round(fraction * n)`` of the catalogue, a function of its ids and ``seed``."""
    ids = np.sort(np.asarray(catalogue_ids, dtype=np.int64))
    n = int(round(fraction * len(ids)))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 0xC01D])
    return np.sort(rng.choice(ids, size=n, replace=False))


@dataclass
class ColdItems:
    """A silo's cold-start arrays, in catalogue indices and the silo's local user rows.

    pool: int64 [n_cold] every held-out item (never a training negative, the full protocol's candidates);
    targets: int64 [n_users] each user's latest cold item, -1 when the user has none; negatives: int64
    [n_users, m] the sampled protocol's cold candidates, -1 padded; known: int64 codes ``user * n_items + item`` of
    all the users' cold interactions (never a candidate of that user)."""

    pool: np.ndarray
    targets: np.ndarray
    negatives: np.ndarray
    known: np.ndarray

    @property
    def users(self) -> np.ndarray:
        return np.flatnonzero(self.targets >= 0)

    def warm_items(self, n_items: int) -> np.ndarray:
        """Catalogue indices that may be drawn as training negatives."""
        return np.setdiff1d(np.arange(n_items), self.pool)

    @classmethod
    def from_holdout(cls, holdout: pd.DataFrame, cold_ids: np.ndarray, to_index: pd.Series,
                     n_items: int) -> "ColdItems":
        """``holdout`` sorted by user (row = local user), with the cold columns."""
        def index(ids) -> np.ndarray:
            ids = np.asarray(ids, dtype=np.int64)
            return to_index.loc[ids].to_numpy(np.int64) if len(ids) else np.zeros(0, np.int64)

        lists = holdout[COLD_COLUMN].tolist()
        negs = holdout[COLD_NEGATIVES_COLUMN].tolist()
        targets = np.array([index(c[-1:])[0] if len(c) else -1 for c in lists], dtype=np.int64)
        negatives = np.full((len(lists), max([len(n) for n in negs], default=0)), -1, dtype=np.int64)
        for row, n in enumerate(negs):
            negatives[row, :len(n)] = index(n)
        rows = np.repeat(np.arange(len(lists)), [len(c) for c in lists])
        items = index(np.concatenate([np.asarray(c, dtype=np.int64) for c in lists]) if len(rows) else [])
        return cls(pool=np.sort(index(cold_ids)), targets=targets, negatives=negatives,
                   known=rows.astype(np.int64) * n_items + items)


def cold_items_of(split, holdout: pd.DataFrame, to_index: pd.Series, n_items: int) -> dict[str, ColdItems]:
    """The ``cold`` argument of :class:`~fedrec.core.training.SiloData` for a split ({} when it holds no cold items)."""
    cold_ids = getattr(split, "cold_items", None)
    if cold_ids is None or len(cold_ids) == 0 or COLD_COLUMN not in holdout.columns:
        return {}
    return {"cold": ColdItems.from_holdout(holdout, np.asarray(cold_ids), to_index, n_items)}


def tie_aware_sums(above: np.ndarray, ties: np.ndarray, k: int) -> tuple[float, float]:
    """Sums over users of HR@k and NDCG@k when the target's position is uniform over its tie: ``above`` candidates
    scored higher, ``ties`` scored the same (0 ties: the usual metrics)."""
    hr = ndcg = 0.0
    for a, t in zip(np.asarray(above, dtype=np.int64), np.asarray(ties, dtype=np.int64)):
        positions = np.arange(a, min(a + t, k - 1) + 1)
        hr += len(positions) / (t + 1)
        ndcg += float((1.0 / np.log2(positions + 2.0)).sum()) / (t + 1)
    return hr, ndcg


def evaluate_cold(model, data, k: int, full: bool = True, device: torch.device | None = None,
                  chunk_users: int = EVAL_CHUNK_USERS) -> MetricSums | None:
    """HR/NDCG sums of each user's cold item among cold candidates (sampled: the user's cold negatives; full: every
    cold item the user never touched); None when the data holds no cold items or the model does not rank
    (task: rating)."""
    cold: ColdItems | None = getattr(data, "cold", None)
    if cold is None or getattr(model, "task", "ranking") != "ranking":
        return None
    import torch

    with torch.no_grad():
        if hasattr(model, "eval"):
            model.eval()
        device = device or torch.device("cpu")
        users = cold.users
        in_pool = np.zeros(data.n_items, dtype=bool)
        in_pool[cold.pool] = True
        row_of = np.full(data.n_users, -1, dtype=np.int64)
        sums = MetricSums()
        for start in range(0, len(users), chunk_users):
            local = users[start:start + chunk_users]
            rows = np.arange(len(local))
            users_t = torch.from_numpy(local).to(device)
            wanted = cold.targets[local]
            negs = cold.negatives[local]
            cand = np.concatenate([wanted[:, None], np.where(negs >= 0, negs, 0)], axis=1)
            scores = model.predict(users_t.repeat_interleave(cand.shape[1]),
                                   torch.from_numpy(cand.reshape(-1)).to(device)).view(len(local), -1).cpu().numpy()
            valid = negs >= 0
            pos, neg = scores[:, :1], scores[:, 1:]
            hr, ndcg = tie_aware_sums(((neg > pos) & valid).sum(1), ((neg == pos) & valid).sum(1), k)
            full_hr = full_ndcg = 0.0
            if full:
                all_scores = model.full_sort_predict(users_t).cpu().numpy()
                candidates = np.repeat(in_pool[None, :], len(local), axis=0)
                row_of[:] = -1
                row_of[local] = rows
                known_rows = row_of[cold.known // data.n_items]
                sel = known_rows >= 0
                candidates[known_rows[sel], (cold.known % data.n_items)[sel]] = False  # the target too
                target = all_scores[rows, wanted][:, None]
                full_hr, full_ndcg = tie_aware_sums(((all_scores > target) & candidates).sum(1),
                                                    ((all_scores == target) & candidates).sum(1), k)
            sums = sums + MetricSums(n=len(local), hr=hr, ndcg=ndcg, full_hr=full_hr, full_ndcg=full_ndcg)
        return sums


def cold_metrics(model, data, k: int, full: bool = True, device: torch.device | None = None) -> dict[str, float]:
    """``{"cold_hr@10": ..., "cold_ndcg@10": ..., "cold_full_hr@10": ..., "cold_full_ndcg@10": ...}`` (or {})."""
    sums = evaluate_cold(model, data, k, full, device)
    return {} if sums is None else {f"cold_{m}": v for m, v in sums.means(k).items()}


def cold_keys(k: int) -> tuple[str, ...]:
    return (f"cold_hr@{k}", f"cold_ndcg@{k}", f"cold_full_hr@{k}", f"cold_full_ndcg@{k}")
