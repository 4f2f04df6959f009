"""Hybrid item tower: NeuMF whose item vectors are an ID embedding plus a learned adapter over the item's frozen
text embedding (fedrec.core.item_text).

    q_i^G, q_i^M = e_i^G + A^G(t_i),  e_i^M + A^M(t_i)        A = Linear(d_text, h) ─ ReLU ─ Linear(h, 2 * dim)
    logit = h^T [p_u^G * q_i^G ; MLP([p_u^M ; q_i^M])]           (the NeuMF head; p_u from the silo's user tower)

An item with no interactions (a cold item) has an ID embedding that never moved from its tiny initial values, so
its vectors are the adapter's reading of its text: similar text, similar vector. During training each row drops its
item's ID embedding with probability ``id_dropout``, so the adapter (and the head) learn to score from text alone.
The adapter's last layer starts at zero: an untrained hybrid is exactly NeuMF, and the adapter only adds what the
text explains (measured on ML-100K, centralized, 2 seeds: better full-ranking HR@10 on warm and cold items than
a randomly initialised adapter).

Shared (masked, encrypted, aggregated): the ID embeddings, the adapter, the MLP and the output layer: everything in
this tower's state_dict. The text embeddings t are a public, frozen buffer (``persistent=False``): never part of
the state the federation exchanges, every party reads the same public file.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedrec.models.neumf import NeuMFItemTower


class HybridItemTower(NeuMFItemTower):
    """NeuMF + a shared text adapter (see the module docstring)."""

    def __init__(self, num_items: int, embedding_dim: int, mlp_layers: tuple[int, ...], text_features,
                 adapter_hidden: int = 64, dropout: float = 0.0, id_dropout: float = 0.0):
        super().__init__(num_items, embedding_dim, mlp_layers, dropout)
        text = torch.as_tensor(np.asarray(text_features, dtype=np.float32))
        if text.ndim != 2 or text.shape[0] != num_items:
            raise ValueError(f"text features of shape {tuple(text.shape)} for {num_items} items")
        self.register_buffer("text", text, persistent=False)  # frozen and public: not in the shared state
        self.embedding_dim = embedding_dim
        self.text_dim = int(text.shape[1])
        out = 2 * embedding_dim
        self.adapter = (nn.Sequential(nn.Linear(self.text_dim, adapter_hidden), nn.ReLU(),
                                      nn.Linear(adapter_hidden, out))
                        if adapter_hidden > 0 else nn.Linear(self.text_dim, out))
        self.id_dropout = float(id_dropout)
        self._dropout_seed = 0
        self._dropout_step = 0

    def text_vectors(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """The adapter's item vectors from text alone (what a cold item gets): {gmf, mlp} [batch, dim]."""
        gmf, mlp = self.adapter(self.text[items]).split(self.embedding_dim, dim=-1)
        return {"gmf": gmf, "mlp": mlp}

    def item_vectors(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        text = self.text_vectors(items)
        ids = {"gmf": self.item_gmf(items), "mlp": self.item_mlp(items)}
        if self.training and self.id_dropout > 0:
            keep = self._keep(len(items)).to(items.device)
            ids = {k: v * keep for k, v in ids.items()}
        return {k: ids[k] + text[k] for k in ids}

    def _keep(self, n: int) -> torch.Tensor:
        """[n, 1] of 0/1: which rows keep their ID embedding; deterministic in the seed set by reset_parameters."""
        gen = torch.Generator().manual_seed(self._dropout_seed * 1_000_003 + self._dropout_step)
        self._dropout_step += 1
        return (torch.rand(n, 1, generator=gen) >= self.id_dropout).float()

    def score_all(self, user_vecs: dict[str, torch.Tensor], chunk: int = 131072) -> torch.Tensor:
        """Every item's vectors once (the adapter runs over the catalogue once, not once per user)."""
        first = next(iter(user_vecs.values()))
        batch, device = first.shape[0], first.device
        item_vecs = self.item_vectors(torch.arange(self.num_items, device=device))
        per = max(1, chunk // self.num_items)
        rows = []
        for start in range(0, batch, per):
            vecs = {k: v[start:start + per] for k, v in user_vecs.items()}
            b = next(iter(vecs.values())).shape[0]
            users = {k: v.repeat_interleave(self.num_items, dim=0) for k, v in vecs.items()}
            items = {k: v.repeat(b, 1) for k, v in item_vecs.items()}
            rows.append(self.score(users, items).view(b, self.num_items))
        return torch.cat(rows)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        super().reset_parameters(generator)
        last = self.adapter[-1] if isinstance(self.adapter, nn.Sequential) else self.adapter
        nn.init.zeros_(last.weight)  # the hybrid starts as NeuMF; the adapter grows what the text explains
        self._dropout_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
        self._dropout_step = 0
