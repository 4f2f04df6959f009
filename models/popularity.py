"""Most-popular baseline: every user gets items ranked by training interaction count."""

from __future__ import annotations

import numpy as np
import torch


class PopularityModel:
    """Scores are training counts; same predict/full_sort_predict interface as RecModel."""

    def __init__(self, train_items: np.ndarray, num_items: int):
        counts = np.bincount(np.asarray(train_items), minlength=num_items).astype(np.float32)
        self.scores = torch.from_numpy(counts)

    def eval(self) -> "PopularityModel":
        return self

    def to(self, device) -> "PopularityModel":
        self.scores = self.scores.to(device)
        return self

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.scores[items]

    def full_sort_predict(self, users: torch.Tensor) -> torch.Tensor:
        return self.scores.unsqueeze(0).expand(len(users), -1)
