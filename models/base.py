"""Model interface (RecBole style: calculate_loss / predict / full_sort_predict) and the user tower."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class RecModelConfig:
    """What a model needs to be built; nothing dataset-shaped beyond the two table sizes."""

    name: str  # "gmf" | "neumf"
    num_users: int
    num_items: int
    embedding_dim: int = 32
    mlp_layers: tuple[int, ...] = (64, 32, 16)
    dropout: float = 0.0
    task: str = "ranking"  # "ranking" (BCE on implicit labels) | "rating" (models.rating: biases + MSE)
    #: hybrid (models/hybrid.py): the frozen item text embeddings [num_items, d] (fedrec.core.item_text) and the
    #: adapter's hidden width / ID-embedding dropout
    item_features: Any = field(default=None, compare=False, repr=False)
    adapter_hidden: int = 64
    id_dropout: float = 0.0
    #: shared next-item tables of this size in the item tower (models/transitions.py; 0: none) and their pair window
    transition_dim: int = 0
    transition_window: int = 3
    transition_lr: float = 0.0  # 0: the optimiser's
    transition_pairs: int = 1


class UserTower(nn.Module):
    """Private user embeddings, one table per named user vector the item tower consumes."""

    def __init__(self, num_users: int, dims: dict[str, int]):
        super().__init__()
        self.tables = nn.ModuleDict({name: nn.Embedding(num_users, d) for name, d in dims.items()})

    def forward(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        """users: LongTensor [batch] -> {name: FloatTensor [batch, d]}"""
        return {name: table(users) for name, table in self.tables.items()}

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.01, generator=generator)


class ItemTower(nn.Module):
    """Shared side of a model: scores (user vectors, items) pairs. Subclasses define the math."""

    user_dims: dict[str, int]
    num_items: int

    def item_vectors(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """items: LongTensor [batch] -> {name: FloatTensor [batch, d]} (the item embedding rows used)"""
        raise NotImplementedError

    def score(self, user_vecs: dict[str, torch.Tensor], item_vecs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits FloatTensor [batch] from user and item vectors of the same batch."""
        raise NotImplementedError

    def forward(self, user_vecs: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """user_vecs: {name: [batch, d]}, items: LongTensor [batch] -> logits FloatTensor [batch]"""
        return self.score(user_vecs, self.item_vectors(items))

    def score_all(self, user_vecs: dict[str, torch.Tensor], chunk: int = 131072) -> torch.Tensor:
        """Logits of every item for each user: returns FloatTensor [batch, num_items]."""
        batch = next(iter(user_vecs.values())).shape[0]
        device = next(iter(user_vecs.values())).device
        items = torch.arange(self.num_items, device=device)
        rows = []
        per = max(1, chunk // self.num_items)
        for start in range(0, batch, per):
            vecs = {k: v[start:start + per] for k, v in user_vecs.items()}
            b = next(iter(vecs.values())).shape[0]
            expanded = {k: v.repeat_interleave(self.num_items, dim=0) for k, v in vecs.items()}
            rows.append(self(expanded, items.repeat(b)).view(b, self.num_items))
        return torch.cat(rows)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.01, generator=generator)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                nn.init.zeros_(module.bias)


class RecModel(nn.Module):
    """User tower (private) + item tower (shared)."""

    def __init__(self, users: UserTower, items: ItemTower):
        super().__init__()
        self.users = users
        self.items = items

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.items(self.users(users), items)

    #: the pointwise loss of (score, label): BCE on logits for implicit feedback; models.rating uses MSE
    loss_fn = staticmethod(F.binary_cross_entropy_with_logits)

    def calculate_loss(self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``loss_fn`` of the scores. users, items: LongTensor [batch]; labels: FloatTensor [batch]."""
        return self.loss_fn(self(users, items), labels)

    def loss_and_l2(self, users: torch.Tensor, items: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(``loss_fn``, per-batch embedding L2) from one lookup of the batch's embedding rows."""
        user_vecs, item_vecs = self.users(users), self.items.item_vectors(items)
        loss = self.loss_fn(self.items.score(user_vecs, item_vecs), labels)
        l2 = sum(v.pow(2).sum() for v in (*user_vecs.values(), *item_vecs.values())) / len(users)
        return loss, l2

    def embedding_l2(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Mean squared norm of the embedding rows a batch touches (per-batch L2, Rendle et al. 2020)."""
        total = sum(v.pow(2).sum() for v in self.users(users).values())
        for module in self.items.modules():
            if isinstance(module, nn.Embedding):
                total = total + module(items).pow(2).sum()
        return total / len(users)

    @torch.no_grad()
    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of (user, item) pairs: FloatTensor [batch]."""
        return self(users, items)

    @torch.no_grad()
    def full_sort_predict(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item: users LongTensor [batch] -> FloatTensor [batch, num_items]."""
        return self.items.score_all(self.users(users))

    def shared_state(self) -> dict[str, torch.Tensor]:
        """Item-tower tensors (what the federation exchanges), detached CPU copies in a fixed order."""
        return {k: v.detach().cpu().clone() for k, v in self.items.state_dict().items()}

    def load_shared_state(self, state: dict[str, torch.Tensor]) -> None:
        self.items.load_state_dict(state)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.users.reset_parameters(generator)
        self.items.reset_parameters(generator)
