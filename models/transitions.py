"""Shared next-item tables (model.transition_dim > 0): what follows what, learned by the federation.

Two item tables, ``prev`` and ``next`` (``num_items x d``), live in the item tower, so they are shared parameters
exchanged like the item embeddings (masks + CKKS, unchanged). Each silo trains them on its *own* users' time-ordered
histories with a skip-gram objective (item2vec / FPMC's item-to-item factor): for items ``j`` and ``i`` a user
touched within ``window`` steps of each other (either order), ``sigmoid(prev[j] . next[i])`` should be high, and low
for sampled items. The federation's sum of those updates learns, for the whole federation, which items are touched
next to which, without any history leaving its silo: a silo sends only the tables' deltas, like any item row.

The recency head (fedrec.core.recency) scores a user's private history through them: the user's decayed sum of
``prev`` rows of their latest items, dotted with every item's ``next`` row. ML-100K users rate in sessions, so the
next item is one the federation has often seen right beside the user's last few.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Transitions(nn.Module):
    """The ``prev`` / ``next`` item tables of the shared tower."""

    def __init__(self, num_items: int, dim: int, window: int = 3, lr: float = 0.0, pairs_per_row: int = 1):
        super().__init__()
        self.pairs_per_row = pairs_per_row  # pairs drawn per training row each epoch, in as many times larger batches
        self.window = window  # pairs: items within this many rows of each other in one user's history
        self.lr = lr  # the tables' own learning rate (0: the optimiser's)
        self.prev = nn.Embedding(num_items, dim)
        self.next = nn.Embedding(num_items, dim)

    def pair_loss(self, before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE of ``prev[before] . next[after]`` against ``labels`` (1: touched within the window, 0: sampled)."""
        return F.binary_cross_entropy_with_logits((self.prev(before) * self.next(after)).sum(-1), labels)

    @torch.no_grad()
    def scores(self, history: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """[users, num_items]: ``sum_a weights[u, a] * prev[history[u, a]]`` dotted with every ``next`` row
        (history: int64 [users, L], weights 0 where there is no item)."""
        profile = torch.einsum("ua,uad->ud", weights, self.prev(history.clamp_min(0)))
        return profile @ self.next.weight.T


def of(model) -> Transitions | None:
    """The model's next-item tables, or None (model.transition_dim 0, or a model without an item tower)."""
    items = getattr(model, "items", None)
    return getattr(items, "transitions", None) if isinstance(items, nn.Module) else None


def pairs(users: np.ndarray, items: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(before, after) int64 arrays: every two items one user touched within ``window`` rows of each other, both
    orders. ``users``/``items`` are rows in time order within each user (rows of different users may interleave)."""
    users = np.asarray(users, dtype=np.int64)
    order = np.argsort(users, kind="stable")
    u, it = users[order], np.asarray(items, dtype=np.int64)[order]
    before, after = [], []
    for gap in range(1, window + 1):
        same = u[gap:] == u[:-gap]
        a, b = it[:-gap][same], it[gap:][same]
        before += [a, b]
        after += [b, a]
    if not before:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(before), np.concatenate(after)


def train_pairs(tables: Transitions, optimizer: torch.optim.Optimizer, before: np.ndarray, after: np.ndarray,
                n_rows: int, n_negatives: int, batch_size: int, n_items: int, rng: np.random.Generator,
                device: torch.device, allowed: np.ndarray | None = None) -> float:
    """One pass of the skip-gram objective: ``n_rows`` pairs drawn without replacement (at most all), each with
    ``n_negatives`` uniformly drawn items (from ``allowed`` when given: cold-start items are never drawn); returns
    the mean BCE."""
    if len(before) == 0 or n_rows <= 0:
        return 0.0
    pick = rng.choice(len(before), size=min(n_rows, len(before)), replace=False)
    a, b = before[pick], after[pick]
    draw = rng.integers(0, n_items, size=(len(a), n_negatives)) if allowed is None else \
        allowed[rng.integers(0, len(allowed), size=(len(a), n_negatives))]
    left = np.repeat(a, 1 + n_negatives)
    right = np.concatenate([b[:, None], draw], axis=1).reshape(-1)
    labels = np.tile(np.r_[1.0, np.zeros(n_negatives)], len(a)).astype(np.float32)
    order = rng.permutation(len(left))
    left, right, labels = (torch.from_numpy(x[order]).to(device) for x in (left, right, labels))
    total = torch.zeros((), device=device)
    for start in range(0, len(left), batch_size):
        sl = slice(start, start + batch_size)
        loss = tables.pair_loss(left[sl], right[sl], labels[sl])
        total += loss.detach() * len(left[sl])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(total) / len(left)
