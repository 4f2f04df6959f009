"""The rating task's recency head (``task: rating`` with ``model.personalisation: recency``): each user's recent
rating drift, kept inside the silo.

A user's latest ratings say more about their next one than their whole history does: moods, sessions and a
shifting taste move a user's rating level over time, which ``mu + b_u + b_i + p_u . q_i`` (one bias per user, fitted
on all of it) cannot follow. The head adds to the model's prediction ``model.recency_weight`` x the decayed mean of
the user's last ``model.recency_length`` residuals (their rating minus the model's prediction of it, the a-th most
recent weighing ``model.recency_decay ** a``). It reads only the silo's own users' ratings and the model; nothing is
trained or sent, so the shared part and every payload are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec.models.rating import RATING_MAX, RATING_MIN

#: rows predicted at once when computing residuals
CHUNK = 65536


@torch.no_grad()
def predictions(model, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The model's rating predictions (unclipped) for the (user, item) rows, on the model's device."""
    device = next(model.parameters()).device
    if len(users) == 0:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([
        model.predict_rating(torch.as_tensor(users[s:s + CHUNK], device=device),
                             torch.as_tensor(items[s:s + CHUNK], device=device)).float().cpu().numpy()
        for s in range(0, len(users), CHUNK)]).astype(np.float64)


def row_ages(users: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, age): the rows grouped by user, each user's rows kept in time order, and each row's age within its
    user (0 = the user's last row), in that order (also fedrec.core.recency.recent_items')."""
    order = np.argsort(users, kind="stable")
    u = users[order]
    ends = np.cumsum(np.bincount(u, minlength=n_users))
    return order, ends[u] - 1 - np.arange(len(u))


def recent_mean(users: np.ndarray, values: np.ndarray, n_users: int, length: int, decay: float) -> np.ndarray:
    """float64 [n_users]: each user's decayed mean of its last ``length`` values (0 for a user without any).

    Rows are in time order within each user (rows of different users may interleave)."""
    users = np.asarray(users, dtype=np.int64)
    out = np.zeros(n_users)
    if len(users) == 0 or length == 0:
        return out
    order, age = row_ages(users, n_users)
    u, v = users[order], np.asarray(values, dtype=np.float64)[order]
    keep = age < length
    w = float(decay) ** age[keep]
    total = np.bincount(u[keep], weights=w * v[keep], minlength=n_users)
    weight = np.bincount(u[keep], weights=w, minlength=n_users)
    np.divide(total, weight, out=out, where=weight > 0)
    return out


class DriftScorer:
    """A rating model plus each user's recent residual drift (one offset per user), per evaluation target."""

    task = "rating"

    def __init__(self, model, offsets: np.ndarray, weight: float, targets: dict[str, np.ndarray] | None = None):
        self.model = model
        self.weight = float(weight)
        self.offsets = np.asarray(offsets, dtype=np.float32)
        self._targets = targets or {}

    def eval(self) -> "DriftScorer":
        self.model.eval()
        return self

    def parameters(self):
        return self.model.parameters()

    def for_target(self, target: str) -> "DriftScorer":
        """The scorer for predicting ``target``'s ratings (the drift up to just before it)."""
        offsets = self._targets.get(target)
        return self if offsets is None else DriftScorer(self.model, offsets, self.weight)

    @torch.no_grad()
    def predict_rating(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        base = self.model.predict_rating(users, items)
        shift = torch.from_numpy(self.offsets[users.cpu().numpy()]).to(base.device, base.dtype)
        return base + self.weight * shift


def _clip(predicted: np.ndarray) -> np.ndarray:
    return np.clip(predicted, RATING_MIN, RATING_MAX)


def offsets(users: np.ndarray, residual: np.ndarray, val_residual: np.ndarray | None, n_users: int, length: int,
            decay: float) -> tuple[np.ndarray, np.ndarray]:
    """(val, test) [n_users]: each user's drift over their training rows' residuals, and the same with the validation
    rating's residual (``val_residual``, per user; None in the refit view, where it is a training row already) as the
    newest row, for the test rating that came after it."""
    val = recent_mean(users, residual, n_users, length, decay)
    if val_residual is None:
        return val, val
    return val, recent_mean(np.r_[users, np.arange(n_users)], np.r_[residual, val_residual], n_users, length, decay)


def for_evaluation(model, data, cfg) -> DriftScorer:
    """``model`` with the drift head for ``data``'s held-out ratings, over the residuals of the model's clipped
    predictions (:func:`offsets`)."""
    m = cfg.model
    model.eval()
    residual = data.train_ratings - _clip(predictions(model, data.train_users, data.train_items))
    val_residual = None if getattr(data, "val_in_train", False) else \
        data.val_ratings - _clip(predictions(model, np.arange(data.n_users), data.val_items))
    val, test = offsets(data.train_users, residual, val_residual, data.n_users, m.recency_length, m.recency_decay)
    return DriftScorer(model, val, m.recency_weight, {"val": val, "test": test})
