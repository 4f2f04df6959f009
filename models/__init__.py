"""Recommender models with the user side separable from the shared item side.

Every model is a :class:`RecModel` = :class:`UserTower` (private to a silo: user
embeddings) + an item tower (shared: item embeddings, MLP, output layer). The federated
protocol exchanges only the item tower; the user tower never leaves its silo.
"""

from __future__ import annotations

import torch

from fedrec.models.base import ItemTower, RecModel, RecModelConfig, UserTower
from fedrec.models.gmf import GMFItemTower
from fedrec.models.hybrid import HybridItemTower  # NeuMF + a shared adapter over frozen item text embeddings
from fedrec.models.neumf import NeuMFItemTower
from fedrec.models.rating import rating_model
from fedrec.models.transitions import Transitions

__all__ = ["RecModel", "RecModelConfig", "UserTower", "GMFItemTower", "NeuMFItemTower", "HybridItemTower",
           "build_model"]


def build_model(cfg: RecModelConfig, generator: torch.Generator | None = None) -> RecModel:
    if cfg.name == "gmf":
        items: ItemTower = GMFItemTower(cfg.num_items, cfg.embedding_dim)
    elif cfg.name == "neumf":
        items = NeuMFItemTower(cfg.num_items, cfg.embedding_dim, cfg.mlp_layers, cfg.dropout)
    elif cfg.name == "hybrid":  # language-model item features
        if cfg.item_features is None:
            raise ValueError("model 'hybrid' needs the item text embeddings (item_features; fedrec embed-items)")
        items = HybridItemTower(cfg.num_items, cfg.embedding_dim, cfg.mlp_layers, cfg.item_features,
                                cfg.adapter_hidden, cfg.dropout, cfg.id_dropout)
    else:
        raise ValueError(f"unknown model {cfg.name!r}; expected 'gmf', 'neumf' or 'hybrid'")
    if cfg.transition_dim > 0:  # shared next-item tables (the recency head scores histories through them)
        items.transitions = Transitions(cfg.num_items, cfg.transition_dim, cfg.transition_window,
                                        cfg.transition_lr, cfg.transition_pairs)
    if cfg.task == "rating":  # explicit ratings: the same tower plus biases, MSE (models/rating.py)
        model: RecModel = rating_model(items, cfg.num_users)
        model.reset_parameters(generator)
        return model
    model = RecModel(UserTower(cfg.num_users, items.user_dims), items)
    model.reset_parameters(generator)
    return model
