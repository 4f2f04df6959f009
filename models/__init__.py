"""Recommender models with the user side separable from the shared item side.

Every model is a :class:`RecModel` = :class:`UserTower` (private to a silo: user
embeddings) + an item tower (shared: item embeddings, MLP, output layer). The federated
protocol exchanges only the item tower; the user tower never leaves its silo.
"""

from models.base import RecModel, RecModelConfig, UserTower, build_model
from models.gmf import GMFItemTower
from models.neumf import NeuMFItemTower
from models.hybrid import HybridItemTower  # NeuMF + a shared adapter over frozen item text embeddings

__all__ = ["RecModel", "RecModelConfig", "UserTower", "GMFItemTower", "NeuMFItemTower", "HybridItemTower",
           "build_model"]
