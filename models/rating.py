"""Explicit-rating models (``task: rating``): a GMF or NeuMF interaction score plus biases, trained with MSE.

    r_hat(u, i) = mu + b_u + b_i + score(p_u, q_i)

``mu`` (the global bias) and ``b_i`` (item biases) belong to the shared item tower: they are masked, encrypted and
aggregated like every other shared tensor. ``b_u`` (user biases) is one more table of the private user tower and
never leaves its silo. The global bias is a learnt parameter started at the middle of the rating scale, so the
federation needs no secure sum of the silos' ratings to centre them; the centralized twin starts from the same
value, so both runs optimise the same model from the same start.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fedrec.models.base import ItemTower, RecModel, UserTower

#: the rating scale (MovieLens; the GE suite checks every silo's ratings are within it)
RATING_MIN, RATING_MAX = 1.0, 5.0
#: where the global bias starts: the middle of the scale (public knowledge, no silo's data)
GLOBAL_BIAS_INIT = (RATING_MIN + RATING_MAX) / 2


class RatingItemTower(ItemTower):
    """The shared side of a rating model: the inner tower's score plus item biases and the global bias."""

    def __init__(self, inner: ItemTower):
        super().__init__()
        self.inner = inner
        self.num_items = inner.num_items
        self.user_dims = {**inner.user_dims, "bias": 1}  # the user tower grows a private bias table
        self.item_bias = nn.Embedding(inner.num_items, 1)
        self.global_bias = nn.Parameter(torch.full((1,), GLOBAL_BIAS_INIT))

    def item_vectors(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**self.inner.item_vectors(items), "bias": self.item_bias(items)}

    def score(self, user_vecs: dict[str, torch.Tensor], item_vecs: dict[str, torch.Tensor]) -> torch.Tensor:
        inner_u = {k: v for k, v in user_vecs.items() if k != "bias"}
        inner_i = {k: v for k, v in item_vecs.items() if k != "bias"}
        return (self.global_bias + user_vecs["bias"].squeeze(-1) + item_vecs["bias"].squeeze(-1)
                + self.inner.score(inner_u, inner_i))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.inner.reset_parameters(generator)
        nn.init.zeros_(self.item_bias.weight)
        with torch.no_grad():
            self.global_bias.fill_(GLOBAL_BIAS_INIT)


class RatingModel(RecModel):
    """Predicts the rating itself; the loss is the mean squared error on observed ratings (no negatives)."""

    task = "rating"

    #: MSE = mean((r_hat - r)^2) on observed ratings: calculate_loss and loss_and_l2 (with the L2 of the embedding
    #: and bias rows a batch touches) are RecModel's, with this loss
    loss_fn = staticmethod(F.mse_loss)

    @torch.no_grad()
    def predict_rating(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predictions clipped to the rating scale (how they are evaluated): FloatTensor [batch]."""
        return self(users, items).clamp(RATING_MIN, RATING_MAX)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        super().reset_parameters(generator)
        nn.init.zeros_(self.users.tables["bias"].weight)


def rating_model(inner: ItemTower, num_users: int) -> RatingModel:
    """Wrap an item tower (GMF / NeuMF) into a rating model with a private user tower (embeddings + bias)."""
    items = RatingItemTower(inner)
    return RatingModel(UserTower(num_users, items.user_dims), items)
