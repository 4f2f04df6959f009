"""Personalisation inside a silo (model.personalisation: finetune), the cross-silo form of FedPer / Ditto / PFedRec.

The federation trains one shared item tower through masks + CKKS, unchanged. After each round, a silo copies its
model (its users' private vectors plus the new global item tower) and fine-tunes the copy for
``model.personal_epochs`` epochs on its own data, optionally held near the global model by Ditto's proximal term
(``model.personal_mu``). That personal view scores the silo's own users: its metric sums, its recommendations and
``fedrec serve``. It is never sent: it lives in the silo's process and its 0600 store, like the user vectors, so it
costs no privacy; the update the silo sends is computed from the global model exactly as without personalisation,
so the shared part (and HE == plaintext) is untouched.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from fedrec.core.config import Config
from fedrec.core.training import SiloData, make_optimizer, train_epoch
from fedrec.models import RecModel

#: the extra stream a silo's fine-tuning draws its negatives from (not the round's training stream)
PERSONAL_STREAM = 7919


def enabled(cfg: Config) -> bool:
    return cfg.model.personalisation != "none"


def personalise(model: RecModel, data: SiloData, global_state: dict[str, torch.Tensor], cfg: Config,
                rng: np.random.Generator, device: torch.device) -> RecModel:
    """A copy of ``model`` (the silo's user tower) with ``global_state`` as its item tower, fine-tuned on ``data``;
    ``model`` itself is not changed. Returns the copy in eval mode."""
    m, t = cfg.model, cfg.training
    personal = copy.deepcopy(model)
    personal.load_shared_state(global_state)
    tcfg = t.model_copy(update={"lr": m.personal_lr or t.lr})
    optimizer = make_optimizer(personal, tcfg)
    reference = {k: v.to(device) for k, v in global_state.items()}
    for _ in range(m.personal_epochs):
        train_epoch(personal, optimizer, data, tcfg, rng, device,
                    proximal=(m.personal_mu, reference) if m.personal_mu > 0 else None)
    return personal.eval()


def personal_state(personal: RecModel, server_round: int) -> dict:
    """What the silo keeps of its personal model (saved beside its user tower): the round and both towers."""
    return {"round": int(server_round), "users": personal.users.state_dict(), "items": personal.items.state_dict()}
