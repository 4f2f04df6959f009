"""Fold-in: new interactions of a user folded into that user's private vectors at once, the item tower frozen.

The standard fold-in of factorisation models (e.g. implicit's ``recalculate_user``, Rendle's iALS fold-in): a few
Adam steps on only the given users' rows of the user tower, on their whole history as positives plus sampled unseen
items as negatives (the training loss), everything shared left untouched. The silo serving recommendations runs it
when feedback arrives (fedrec.silo.recommend), so a user's next answer reflects what they just did, long before the
next federated retraining, which still trains on the feedback batch as before.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def fold_in(model, users: np.ndarray, histories: list[np.ndarray], *, steps: int = 30, lr: float = 0.05,
            n_negatives: int = 4, l2: float = 1e-3, seed: int = 0) -> None:
    """Update ``model.users``' rows of ``users`` (local indices) in place from ``histories`` (each user's item
    indices); nothing else changes. Users with an empty history are left as they are."""
    keep = [i for i, h in enumerate(histories) if len(h)]
    if not keep:
        return
    users = np.asarray(users, dtype=np.int64)[keep]
    histories = [np.asarray(histories[i], dtype=np.int64) for i in keep]
    device = next(model.parameters()).device
    n_items = model.items.num_items
    rng = np.random.default_rng(seed)
    rows = {name: table.weight[torch.from_numpy(users).to(device)].detach().clone().requires_grad_(True)
            for name, table in model.users.tables.items()}
    owner = np.concatenate([np.full(len(h), j) for j, h in enumerate(histories)])
    positives = np.concatenate(histories)
    seen = set((owner * n_items + positives).tolist())
    frozen = [p for p in model.items.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(list(rows.values()), lr=lr)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            neg_owner = np.repeat(owner, n_negatives)
            negatives = rng.integers(0, n_items, len(neg_owner))
            clash = np.fromiter(((o * n_items + i) in seen for o, i in zip(neg_owner, negatives)), bool,
                                len(neg_owner))
            neg_owner, negatives = neg_owner[~clash], negatives[~clash]
            who = torch.from_numpy(np.concatenate([owner, neg_owner])).to(device)
            items = torch.from_numpy(np.concatenate([positives, negatives])).to(device)
            labels = torch.cat([torch.ones(len(owner)), torch.zeros(len(neg_owner))]).to(device)
            user_vecs = {name: r[who] for name, r in rows.items()}
            logits = model.items.score(user_vecs, model.items.item_vectors(items))
            loss = F.binary_cross_entropy_with_logits(logits, labels)
            loss = loss + l2 * sum(r.pow(2).sum() for r in rows.values()) / len(users)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    with torch.no_grad():
        index = torch.from_numpy(users).to(device)
        for name, table in model.users.tables.items():
            table.weight[index] = rows[name].detach()
