"""The recency head (model.personalisation: recency): a user's own recent items, compared in the shared item space.

A per-user score head in the spirit of PFedRec's private score function, fitted to cross-silo: the shared item tower
the federation trained (masks + CKKS, unchanged) gives every item a vector ``e_i`` (its embedding rows, concatenated
and L2-normalised); a user's *profile* is the decayed sum of the vectors of the ``L`` items they touched last,
``p_u = sum_a decay**a * e_{h_a}`` (``h_0`` the most recent); its item-to-item score is ``p_u . e_i`` (item kNN
over the learned space). The final score adds both, each standardised over the catalogue for that user::

    score(u, i) = z_u(model(u, i)) + weight * z_u(p_u . e_i)

Nothing new is trained or sent: the history is the silo's own (it never leaves the silo, like the user vectors),
the item vectors are the global model's, so the head costs no privacy and leaves the shared part (and HE ==
plaintext) untouched. It captures what a static user vector cannot: that ML-100K users rate in sessions, so the next
item is close to the last few.

History order: a silo's training rows are in time order within each user (fedrec.core.data.split sorts them by
user and timestamp); for a user's *test* item the validation item, which came before it, is the most recent item
of the history, as in sequential recommendation's leave-one-out protocol. The test item is never in a history.
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec.core.drift import row_ages
from fedrec.models import transitions

#: standardisation floor (a user whose scores are all equal gets zeros, not NaN)
EPS = 1e-6


def recent_items(users: np.ndarray, items: np.ndarray, n_users: int, length: int) -> np.ndarray:
    """int64 [n_users, length]: each user's last ``length`` items, most recent first, -1 where the user has fewer.

    ``users``/``items`` are interaction rows whose order within a user is chronological (rows of different users may
    interleave)."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    out = np.full((n_users, length), -1, dtype=np.int64)
    if len(users) == 0 or length == 0:
        return out
    order, age = row_ages(users, n_users)
    u, it = users[order], items[order]
    keep = age < length
    out[u[keep], age[keep]] = it[keep]
    return out


def with_latest(history: np.ndarray, latest: np.ndarray) -> np.ndarray:
    """``history`` [n_users, L] with ``latest`` [n_users] pushed in front as each user's most recent item."""
    return np.concatenate([np.asarray(latest, dtype=np.int64)[:, None], history[:, :-1]], axis=1)


def item_space(model) -> torch.Tensor:
    """[n_items, D]: every item's vectors from the model's (shared) item tower, concatenated and L2-normalised."""
    items = model.items
    with torch.no_grad():
        ids = torch.arange(items.num_items, device=next(model.parameters()).device)
        vecs = items.item_vectors(ids)
        space = torch.cat([vecs[k] for k in sorted(vecs)], dim=1).float()
    return torch.nn.functional.normalize(space, dim=1)


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Each row to mean 0, standard deviation 1."""
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, keepdim=True).clamp_min(EPS)
    return (scores - mean) / std


class _Rescorer:
    """What a scorer that re-ranks ``self.model``'s full scores shares: ``predict`` read off ``full_sort_predict``,
    and ``model``'s parameters and eval mode."""

    model: object

    def eval(self):
        self.model.eval()
        return self

    def parameters(self):
        return self.model.parameters()

    @torch.no_grad()
    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        unique, row = torch.unique(users, return_inverse=True)
        return self.full_sort_predict(unique)[row, items.to(unique.device)]


class BlendScorer(_Rescorer):
    """A Scorer whose scores are ``model``'s plus ``weight`` times ``other``'s, each standardised per user (a
    silo's personal model beside the global one, model.personal_blend). Its item space is ``model``'s."""

    def __init__(self, model, other, weight: float):
        self.model, self.other, self.weight = model, other, float(weight)
        self.items, self.task = model.items, getattr(model, "task", "ranking")

    def eval(self) -> "BlendScorer":
        self.other.eval()
        return super().eval()

    @torch.no_grad()
    def full_sort_predict(self, users: torch.Tensor) -> torch.Tensor:
        own = standardise(self.model.full_sort_predict(users).float())
        return own + self.weight * standardise(self.other.full_sort_predict(users).float()).to(own.device)


class RecencyScorer(_Rescorer):
    """A Scorer (predict / full_sort_predict) that adds the recency head to ``model``'s scores.

    ``history``: int64 [n_users, L] of catalogue indices, most recent first, -1 padding (see :func:`recent_items`);
    ``targets``: optional per-evaluation-target histories (``{"val": ..., "test": ...}``) that
    :meth:`for_target` switches to."""

    def __init__(self, model, history: np.ndarray, decay: float, weight: float,
                 targets: dict[str, np.ndarray] | None = None, space: torch.Tensor | None = None,
                 transition_weight: float = 0.0):
        self.model = model
        self.decay, self.weight, self.transition_weight = float(decay), float(weight), float(transition_weight)
        self.task = getattr(model, "task", "ranking")
        self._targets = targets or {}
        self._space = item_space(model) if space is None else space
        self._tables = transitions.of(model) if self.transition_weight > 0 else None
        self.history = np.asarray(history, dtype=np.int64)
        self._profiles = self._profile(self.history)

    def _weights(self, history: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(history, decay**age where there is an item, else 0) as tensors on the item space's device."""
        device = self._space.device
        h = torch.from_numpy(history).to(device)
        ages = torch.arange(h.shape[1], device=device, dtype=torch.float32)
        return h, (self.decay ** ages)[None, :] * (h >= 0).float()

    def _profile(self, history: np.ndarray) -> torch.Tensor:
        h, w = self._weights(history)
        return torch.einsum("ua,uad->ud", w, self._space[h.clamp_min(0)])

    def for_target(self, target: str) -> "RecencyScorer":
        """The scorer whose histories are those known when ``target`` is predicted (itself if none was given)."""
        history = self._targets.get(target)
        if history is None:
            return self
        return RecencyScorer(self.model, history, self.decay, self.weight, space=self._space,
                             transition_weight=self.transition_weight)

    @torch.no_grad()
    def transition_scores(self, users: torch.Tensor) -> torch.Tensor:
        """[batch, n_items]: the users' histories scored through the shared next-item tables
        (fedrec.models.transitions), unstandardised."""
        h, w = self._weights(self.history[users.cpu().numpy()])
        return self._tables.scores(h, w)

    @torch.no_grad()
    def recency_scores(self, users: torch.Tensor) -> torch.Tensor:
        """[batch, n_items]: ``p_u . e_i`` of each user (the head alone, unstandardised)."""
        return self._profiles[users.to(self._profiles.device)] @ self._space.T

    @torch.no_grad()
    def full_sort_predict(self, users: torch.Tensor) -> torch.Tensor:
        base = standardise(self.model.full_sort_predict(users).float())
        if self.weight > 0:
            base = base + self.weight * standardise(self.recency_scores(users)).to(base.device)
        if self._tables is not None:
            base = base + self.transition_weight * standardise(self.transition_scores(users)).to(base.device)
        return base


def explain(space: torch.Tensor, history: np.ndarray, item: int, decay: float, n: int = 3) -> list[tuple[int, float]]:
    """The items of ``history`` (one user's, newest first, -1 padding) that most support ``item`` in the learned item
    space: ``(history item, decay**age * cos(e_h, e_item))`` by decreasing contribution, positive ones only, at most
    ``n``. Under model.personalisation: recency these are the terms of the head's score ``p_u . e_item``; otherwise
    they are the user's own items closest to it."""
    return explain_many(space, history, [item], decay, n)[0]


def explain_many(space: torch.Tensor, history: np.ndarray, items, decay: float,
                 n: int = 3) -> list[list[tuple[int, float]]]:
    """:func:`explain` for several items of one user at once (one matrix product: a top-k answer's explanations)."""
    history = np.asarray(history)
    ages = np.flatnonzero(history >= 0)
    if not len(ages) or not len(items):
        return [[] for _ in items]
    known = history[ages].astype(np.int64)
    cos = (space[torch.from_numpy(known).to(space.device)]
           @ space[torch.as_tensor(np.asarray(items, dtype=np.int64), device=space.device)].T).double().cpu().numpy()
    weight = (decay ** ages.astype(np.float64))[:, None] * cos  # [history, items]
    order = np.argsort(known, kind="stable")
    starts = np.flatnonzero(np.r_[True, known[order][1:] != known[order][:-1]])
    unique = known[order][starts]
    strongest = np.maximum.reduceat(weight[order], starts, axis=0)  # an item seen twice counts once, at its strongest
    out = []
    for column in strongest.T:
        ranked = np.lexsort((unique, -column))[:n]  # by decreasing contribution, ties: the lower item first
        out.append([(int(unique[j]), float(column[j])) for j in ranked if column[j] > 0])
    return out


def for_evaluation(model, data, cfg) -> RecencyScorer:
    """``model`` with the recency head (``cfg.model``'s length, decay, weight) for evaluating ``data``'s held-out
    items: the training rows are the history of the validation item; the validation item, which came before the
    test item, is the newest of the test item's (in the refit view, where it is a training row already, it is not
    pushed in twice). ``task: rating``: the rating head of :mod:`fedrec.core.drift` instead."""
    if cfg.task == "rating":
        from fedrec.core import drift

        return drift.for_evaluation(model, data, cfg)
    m = cfg.model
    history = recent_items(data.train_users, data.train_items, data.n_users, m.recency_length)
    latest = history if getattr(data, "val_in_train", False) else with_latest(history, data.val_items)
    return RecencyScorer(model, history, m.recency_decay, m.recency_weight, {"val": history, "test": latest},
                         transition_weight=m.transition_weight)
