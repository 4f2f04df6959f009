"""Personalisation inside a silo (model.personalisation), the cross-silo form of FedPer / Ditto / PFedRec.

``finetune``:

The federation trains one shared item tower through masks + CKKS, unchanged. After each round, a silo copies its
model (its users' private vectors plus the new global item tower) and fine-tunes the copy for
``model.personal_epochs`` epochs on its own data, optionally held near the global model by Ditto's proximal term
(``model.personal_mu``). That personal view scores the silo's own users: its metric sums, its recommendations and
``fedrec serve``. It is never sent: it lives in the silo's process and its 0600 store, like the user vectors, so it
costs no privacy; the update the silo sends is computed from the global model exactly as without personalisation,
so the shared part (and HE == plaintext) is untouched.

``ditto`` (Ditto, Li et al. ICML'21, as published): the personal model is kept across rounds instead of copied
afresh: each round it trains ``model.personal_epochs`` more epochs on the silo's data from where it was, pulled
towards the new global model by ``model.personal_mu``. Over a run it sees as many epochs as the shared model, so it
can fit the silo's own users where a round's short fine-tuning cannot (under user-level DP, where the shared model
is coarse, this is what keeps recommendations useful: the personal model never leaves the silo and costs no epsilon).
It lives in the silo agent's memory between rounds: a resumed run starts it afresh from the global model.

``recency`` (fedrec.core.recency): each user's last ``model.recency_length`` items of the silo's own history, compared
with every item in the global item space, add a per-user item-to-item score to the model's. The history stays in the
silo; nothing is trained or sent. ``finetune+recency`` puts the head on the fine-tuned view.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from fedrec.core import recency
from fedrec.core.config import Config
from fedrec.core.training import SiloData, make_optimizer, train_epoch
from fedrec.models import RecModel

#: the extra stream a silo's fine-tuning draws its negatives from (not the round's training stream)
PERSONAL_STREAM = 7919


def enabled(cfg: Config) -> bool:
    return cfg.model.personalisation != "none"


def finetunes(cfg: Config) -> bool:
    """A personal view is trained (finetune: afresh each round; ditto: kept across rounds)."""
    return "finetune" in cfg.model.personalisation or keeps(cfg)


def keeps(cfg: Config) -> bool:
    """ditto: the personal model carries over from round to round."""
    return "ditto" in cfg.model.personalisation


def uses_recency(cfg: Config) -> bool:
    return "recency" in cfg.model.personalisation


def recency_head(model, history: np.ndarray, cfg: Config,
                 targets: dict[str, np.ndarray] | None = None) -> recency.RecencyScorer:
    """``model`` with the recency head over ``history`` (int64 [n_users, L], most recent first)."""
    m = cfg.model
    return recency.RecencyScorer(model, history, m.recency_decay, m.recency_weight, targets,
                                 transition_weight=m.transition_weight)


def evaluation_scorer(model, data: SiloData, cfg: Config) -> recency.RecencyScorer:
    """The recency head for evaluating ``data``'s held-out items (:func:`fedrec.core.recency.for_evaluation`)."""
    return recency.for_evaluation(model, data, cfg)


def personalise(model: RecModel, data: SiloData, global_state: dict[str, torch.Tensor], cfg: Config,
                rng: np.random.Generator, device: torch.device, kept: RecModel | None = None) -> RecModel:
    """A copy of ``model`` (the silo's user tower) with ``global_state`` as its item tower, fine-tuned on ``data``;
    ``model`` itself is not changed. With ``kept`` (ditto: the previous round's personal model) training goes on from
    that model instead, still pulled towards ``global_state``. Returns the copy in eval mode."""
    m, t = cfg.model, cfg.training
    personal = copy.deepcopy(kept if kept is not None else model)
    if kept is None:
        personal.load_shared_state(global_state)
    tcfg = t.model_copy(update={"lr": m.personal_lr or t.lr})
    optimizer = make_optimizer(personal, tcfg)
    reference = {k: v.to(device) for k, v in global_state.items()}
    for _ in range(m.personal_epochs):
        train_epoch(personal, optimizer, data, tcfg, rng, device,
                    proximal=(m.personal_mu, reference) if m.personal_mu > 0 else None)
    return personal.eval()


def blended(view: RecModel, global_model: RecModel, cfg: Config):
    """The personal ``view`` with the global model's score beside it (model.personal_blend > 0), else ``view``."""
    weight = cfg.model.personal_blend
    return recency.BlendScorer(view, global_model.eval(), weight) if weight > 0 else view


def personal_state(personal: RecModel, server_round: int) -> dict:
    """What the silo keeps of its personal model (saved beside its user tower): the round and both towers."""
    return {"round": int(server_round), "users": personal.users.state_dict(), "items": personal.items.state_dict()}
