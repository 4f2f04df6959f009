"""Generalized matrix factorisation (He et al. 2017, "Neural Collaborative Filtering", sec. 3.2)."""

from __future__ import annotations

import torch
from torch import nn

from fedrec.models.base import ItemTower


class GMFItemTower(ItemTower):
    """logit = h^T (p_u * q_i); the user vector p_u comes from the silo's user tower."""

    def __init__(self, num_items: int, embedding_dim: int):
        super().__init__()
        self.num_items = num_items
        self.user_dims = {"gmf": embedding_dim}
        self.item_gmf = nn.Embedding(num_items, embedding_dim)
        self.out = nn.Linear(embedding_dim, 1)

    def item_vectors(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"gmf": self.item_gmf(items)}

    def score(self, user_vecs: dict[str, torch.Tensor], item_vecs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.out(user_vecs["gmf"] * item_vecs["gmf"]).squeeze(-1)
