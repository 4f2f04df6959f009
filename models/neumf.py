"""NeuMF: GMF and an MLP over concatenated embeddings, fused by one output layer (He et al. 2017, sec. 3.4)."""

from __future__ import annotations

import torch
from torch import nn

from fedrec.models.base import ItemTower


class NeuMFItemTower(ItemTower):
    """logit = h^T [p_u^G * q_i^G ; MLP([p_u^M ; q_i^M])]."""

    def __init__(self, num_items: int, embedding_dim: int, mlp_layers: tuple[int, ...], dropout: float = 0.0):
        super().__init__()
        self.num_items = num_items
        self.user_dims = {"gmf": embedding_dim, "mlp": embedding_dim}
        self.item_gmf = nn.Embedding(num_items, embedding_dim)
        self.item_mlp = nn.Embedding(num_items, embedding_dim)
        layers: list[nn.Module] = []
        width = 2 * embedding_dim
        for hidden in mlp_layers:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(embedding_dim + width, 1)

    def item_vectors(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"gmf": self.item_gmf(items), "mlp": self.item_mlp(items)}

    def score(self, user_vecs: dict[str, torch.Tensor], item_vecs: dict[str, torch.Tensor]) -> torch.Tensor:
        gmf = user_vecs["gmf"] * item_vecs["gmf"]
        mlp = self.mlp(torch.cat([user_vecs["mlp"], item_vecs["mlp"]], dim=-1))
        return self.out(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)
