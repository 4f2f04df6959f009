"""Weighted ALS for implicit feedback (Hu, Koren & Volinsky 2008), the classical baseline a practitioner tries
first, fitted by the ``implicit`` library on pooled (centralized) data only: it is a yardstick, not a federated model.

Same predict / full_sort_predict interface as RecModel and PopularityModel: score = <x_u, y_i>.
"""

from __future__ import annotations

import numpy as np
import torch


class ALSModel:
    """``factors`` latent dimensions, L2 ``regularization``, confidence 1 + ``alpha`` on each observed pair."""

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray):
        self.users = torch.from_numpy(np.ascontiguousarray(user_factors, dtype=np.float32))
        self.items = torch.from_numpy(np.ascontiguousarray(item_factors, dtype=np.float32))

    @classmethod
    def fit(cls, train_users: np.ndarray, train_items: np.ndarray, n_users: int, n_items: int, *, factors: int = 32,
            regularization: float = 0.1, alpha: float = 5.0, iterations: int = 15, seed: int = 0) -> "ALSModel":
        import scipy.sparse as sp
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        matrix = sp.csr_matrix((np.ones(len(train_users), np.float32), (train_users, train_items)),
                               shape=(n_users, n_items))
        matrix.data[:] = 1.0  # a pair seen twice is still one positive
        als = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                      iterations=iterations, random_state=seed)
        with threadpool_limits(1, "blas"):  # implicit's own threads do the work; BLAS threads only contend
            als.fit(matrix, show_progress=False)
        return cls(als.user_factors, als.item_factors)

    def eval(self) -> "ALSModel":
        return self

    def to(self, device) -> "ALSModel":
        self.users, self.items = self.users.to(device), self.items.to(device)
        return self

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.users[users] * self.items[items]).sum(-1)

    def full_sort_predict(self, users: torch.Tensor) -> torch.Tensor:
        return self.users[users] @ self.items.T
