"""The explicit-rating task (``task: rating``): evaluation, and the baselines a rating model must beat.

Each user's held-out validation and test items (the leave-one-out split of fedrec.core.data.split: the latest rating
is the test item, the second latest the validation item) are predicted, clipped to the rating scale, and scored
as sums of squared and absolute errors (:class:`~fedrec.core.metrics.RatingSums`). A silo shares only those sums and
counts, so the federation's RMSE and MAE are exactly those of the pooled users.

Baselines, fitted on the pooled training ratings of the same split (the centralized twin's data):

* ``global_mean``: r_hat = mu, the mean training rating;
* ``bias``: r_hat = mu + b_u + b_i, fitted by regularised alternating least squares (Koren 2010, sec. 2.1),
  lambda_user and lambda_item chosen on the validation ratings.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch

from fedrec.core.metrics import EVAL_CHUNK_USERS, RatingSums
from fedrec.core.objectives.base import Objective
from fedrec.models.rating import RATING_MAX, RATING_MIN

if TYPE_CHECKING:
    from fedrec.core.training import SiloData

#: the regularisation grid of the bias baseline (lambda_user x lambda_item), chosen on validation RMSE
BIAS_REGULARISATION = (0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0)


def _need_ratings(data: "SiloData") -> None:
    if data.train_ratings is None or data.val_ratings is None or data.test_ratings is None:
        raise ValueError("the split has no ratings (made before task: rating existed); run `fedrec split` again")


def _targets(data: "SiloData") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"val": (data.val_items, data.val_ratings), "test": (data.test_items, data.test_ratings)}


@torch.no_grad()
def evaluate_ratings(model, data: "SiloData", targets: tuple[str, ...] = ("val", "test"),
                     device: torch.device | None = None, chunk: int = 65536) -> dict[str, RatingSums]:
    """RMSE/MAE sums of each user's held-out validation and/or test rating, predictions clipped to [1, 5]."""
    _need_ratings(data)
    device = device or torch.device("cpu")
    model.eval()
    out: dict[str, RatingSums] = {}
    users = np.arange(data.n_users)
    for target in targets:
        items, actual = _targets(data)[target]
        scorer = model.for_target(target) if hasattr(model, "for_target") else model  # a head's view for target
        predicted = np.concatenate([
            scorer.predict_rating(torch.tensor(users[s:s + chunk], device=device),
                                 torch.tensor(items[s:s + chunk], device=device)).cpu().numpy()
            for s in range(0, data.n_users, chunk)]) if data.n_users else np.zeros(0)
        out[target] = RatingSums.from_errors(predicted, actual)
    return out


def clip(pred: np.ndarray) -> np.ndarray:
    return np.clip(pred, RATING_MIN, RATING_MAX)


@dataclass
class Biases:
    """mu + b_u + b_i over a silo's local users and the catalogue."""

    mu: float
    user: np.ndarray
    item: np.ndarray
    reg_user: float = 0.0
    reg_item: float = 0.0

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return clip(self.mu + self.user[users] + self.item[items])


def fit_biases(data: "SiloData", reg_user: float, reg_item: float, iterations: int = 20) -> Biases:
    """Regularised ALS for r ~ mu + b_u + b_i on the training ratings (closed form per side, alternating)."""
    _need_ratings(data)
    users, items = data.train_users, data.train_items
    ratings = data.train_ratings.astype(np.float64)
    mu = float(ratings.mean())
    n_u = np.bincount(users, minlength=data.n_users).astype(np.float64)
    n_i = np.bincount(items, minlength=data.n_items).astype(np.float64)
    b_u, b_i = np.zeros(data.n_users), np.zeros(data.n_items)
    for _ in range(iterations):
        b_i = np.bincount(items, weights=ratings - mu - b_u[users], minlength=data.n_items) / np.maximum(reg_item + n_i, 1e-12)
        b_u = np.bincount(users, weights=ratings - mu - b_i[items], minlength=data.n_users) / np.maximum(reg_user + n_u, 1e-12)
    return Biases(mu, b_u, b_i, reg_user, reg_item)


def rating_baselines(data: "SiloData") -> dict[str, dict]:
    """{global_mean: {val_rmse, val_mae, rmse, mae}, bias: {..., reg_user, reg_item}, bias_drift: {..., weight,
    decay, length}}: test keys unprefixed."""
    _need_ratings(data)
    users = np.arange(data.n_users)

    def scores(predict) -> dict[str, float]:
        out = {}
        for target, (items, actual) in _targets(data).items():
            means = RatingSums.from_errors(predict(users, items), actual).means()
            out |= {(f"val_{m}" if target == "val" else m): v for m, v in means.items()}
        return out

    mu = float(data.train_ratings.astype(np.float64).mean())
    result = {"global_mean": {"mu": mu, **scores(lambda u, i: clip(np.full(len(u), mu)))}}
    fits = [fit_biases(data, ru, ri) for ru, ri in itertools.product(BIAS_REGULARISATION, BIAS_REGULARISATION)]
    best = min(fits, key=lambda b: RatingSums.from_errors(b.predict(users, data.val_items), data.val_ratings).sse)
    result["bias"] = {"reg_user": best.reg_user, "reg_item": best.reg_item, **scores(best.predict)}
    result["bias_drift"] = bias_with_drift(data, best)
    return result


#: the bias baseline's own drift head (the same head as task: rating's recency, fedrec.core.drift): weight x decay,
#: chosen on validation like its lambdas
DRIFT_WEIGHTS, DRIFT_DECAYS, DRIFT_LENGTH = (0.25, 0.5, 0.75, 1.0), (0.5, 0.8, 1.0), 10


def bias_with_drift(data: "SiloData", biases: Biases) -> dict[str, float]:
    """mu + b_u + b_i plus each user's recent drift over the bias model's residuals: the bias baseline given the
    same per-user head as the rating model (``model.personalisation: recency``), so the two compare like for like."""
    from fedrec.core import drift

    users = np.arange(data.n_users)
    residual = data.train_ratings - biases.predict(data.train_users, data.train_items)
    val_residual = data.val_ratings - biases.predict(users, data.val_items)

    @functools.cache
    def offsets(decay: float) -> tuple[np.ndarray, np.ndarray]:
        return drift.offsets(data.train_users, residual, val_residual, data.n_users, DRIFT_LENGTH, decay)

    def sums(target: str, weight: float, decay: float) -> RatingSums:
        items, actual = _targets(data)[target]
        val, test = offsets(decay)
        return RatingSums.from_errors(clip(biases.predict(users, items) + weight * (val if target == "val" else test)),
                                      actual)

    weight, decay = min(itertools.product(DRIFT_WEIGHTS, DRIFT_DECAYS), key=lambda wd: sums("val", *wd).sse)
    val, test = sums("val", weight, decay).means(), sums("test", weight, decay).means()
    return {"weight": weight, "decay": decay, "length": DRIFT_LENGTH, **{f"val_{m}": v for m, v in val.items()},
            **test}


class Rating(Objective):
    """Explicit ratings: MSE on the observed ratings; RMSE and MAE of the held-out ratings (lower is better);
    the global-mean and bias baselines."""

    name = "rating"
    selectable = ("rmse", "mae")
    scored_against = "held-out ratings"
    uses_ratings = True
    sums_type = RatingSums

    def training_rows(self, data: "SiloData", n_negatives: int, rng: np.random.Generator):
        return data.rating_samples(rng)

    def evaluate(self, model, data: "SiloData", k: int, targets: tuple[str, ...] = ("val", "test"),
                 full: bool = True, device: torch.device | None = None, chunk_users: int = EVAL_CHUNK_USERS) -> dict[str, RatingSums]:
        return evaluate_ratings(model, data, targets, device)

    def empty_sums(self) -> RatingSums:
        return RatingSums()

    def report_keys(self, k: int) -> tuple[str, ...]:
        return ("rmse", "mae")

    def metric_name(self, metric: str, k: int) -> str:
        return metric

    def score(self, metrics: Mapping[str, float], metric: str, k: int) -> float:
        return -metrics[metric]

    def baselines(self, data: "SiloData") -> dict[str, dict]:
        return rating_baselines(data)
