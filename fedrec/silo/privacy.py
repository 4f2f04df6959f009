"""User-level differential privacy inside each silo (DP-FedAvg with the silo's users as the unit).

The unit of privacy is one user of one silo: adding or removing all of a user's interactions changes what the
federation releases (the sum of the silos' updates, hence every global model) by at most the clipping bound
``C``. That is what a recommender's users need; client-level DP (a whole silo as the unit) would protect
organisations from each other but needs many silos to be useful, and cross-silo federations have a handful.

Per round, each silo:

1. samples each of its users with probability ``q`` (``privacy.user_sample_rate``), from a CSPRNG;
2. trains, for every sampled user on its own interactions only, ``privacy.user_steps`` Adam steps of the shared
   item tower (and that user's own embedding, which never leaves the silo) from the global model — vectorised
   over users with ``torch.func.vmap``;
3. clips each user's change of the shared parameters to L2 norm ``C`` and sums them;
4. adds Gaussian noise N(0, (σC)² / n) per coordinate, n = the round's participants, so the sum over silos
   carries noise of standard deviation σC (distributed DP: no silo alone adds all of it);
5. sends ``(sum + noise) / q`` weighted by its number of users, before masking and encryption.

The global update is the noised average per-user change: the Gaussian mechanism with sensitivity C / q and noise
σC / q, subsampled with rate q, composed over the rounds. ε at ``privacy.delta`` comes from Opacus' RDP
accountant (:func:`epsilon`); ``privacy.target_epsilon`` > 0 picks σ for the planned rounds instead
(:func:`noise_multiplier`). If a silo drops out after noising, the round's noise is smaller than planned (by
its share): the accountant's ε then holds for the silos' own noise only — stated with the results.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from fedrec.core.config import PrivacyConfig


def noise_multiplier(cfg: PrivacyConfig, rounds: int) -> float:
    """σ: ``privacy.noise_multiplier``, or the one that reaches ``privacy.target_epsilon`` after ``rounds``."""
    if cfg.target_epsilon <= 0:
        return cfg.noise_multiplier
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=cfg.target_epsilon, target_delta=cfg.delta,
                                      sample_rate=cfg.user_sample_rate, steps=rounds, accountant="rdp"))


def epsilon(sigma: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` rounds at ``delta`` (Opacus' RDP accountant); inf without noise."""
    if sigma <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(sigma, sample_rate, rounds)]
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True)
class PrivateUpdate:
    delta: dict[str, torch.Tensor]  # (sum of clipped per-user changes + noise) / q / n_users
    n_users: int
    sampled: int
    clipped: int  # users whose change was scaled down to the bound
    loss: float  # mean BCE of the sampled users before their first step


def _user_rows(data, n_negatives: int, rng: np.random.Generator, users: np.ndarray, max_rows: int):
    """Per sampled user, its positives and fresh negatives, padded to one length: items, labels, mask."""
    all_users, all_items, all_labels = data.epoch_samples(n_negatives, rng)
    order = np.argsort(all_users, kind="stable")
    all_users, all_items, all_labels = all_users[order], all_items[order], all_labels[order]
    starts = np.searchsorted(all_users, users, side="left")
    ends = np.searchsorted(all_users, users, side="right")
    length = int(min(max(ends - starts, default=1), max_rows))
    items = np.zeros((len(users), length), np.int64)
    labels = np.zeros((len(users), length), np.float32)
    mask = np.zeros((len(users), length), np.float32)
    for row, (a, b) in enumerate(zip(starts, ends)):
        take = np.arange(a, b)
        if len(take) > length:  # a very active user: a random subset of its rows this round
            take = rng.choice(take, size=length, replace=False)
        items[row, :len(take)], labels[row, :len(take)], mask[row, :len(take)] = all_items[take], all_labels[take], 1
    return items, labels, mask


def private_update(model, data, global_state: dict[str, torch.Tensor], cfg: PrivacyConfig, sigma: float,
                   n_participants: int, n_negatives: int, rng: np.random.Generator, device: torch.device,
                   chunk: int = 64) -> PrivateUpdate:
    """This silo's clipped, noised update for one round (see the module docstring). Sampled users' own
    embeddings are updated in ``model`` in place."""
    model.load_shared_state(global_state)
    shared = {k: v.detach().to(device) for k, v in model.items.named_parameters()}
    names = list(shared)
    user_tables = dict(model.users.tables.items())
    secure = np.random.default_rng(secrets.randbits(128))  # who is sampled and the noise: unpredictable to others
    sampled = np.flatnonzero(secure.random(data.n_users) < cfg.user_sample_rate)
    total = {k: torch.zeros_like(v) for k, v in shared.items()}
    clipped, losses = 0, []

    def loss(params, user_vecs, items, labels, mask):
        vecs = {name: v.expand(items.shape[0], -1) for name, v in user_vecs.items()}
        logits = functional_call(model.items, params, (vecs, items))
        per_row = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (per_row * mask).sum() / mask.sum().clamp(min=1.0)

    step = grad_and_value(loss, argnums=(0, 1))

    def adam(value, g, m, v, t):  # per-user Adam: scale-free steps move NeuMF off its small initialisation
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        update = (m / (1 - 0.9 ** t)) / (torch.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        return value - cfg.user_lr * update, m, v

    def one_user(user_vecs, items, labels, mask):
        params, first = dict(shared), None
        state = {k: (torch.zeros_like(p), torch.zeros_like(p)) for k, p in (*params.items(), *user_vecs.items())}
        for t in range(1, cfg.user_steps + 1):
            (g_params, g_user), value = step(params, user_vecs, items, labels, mask)
            first = value if first is None else first
            for group, grads in ((params, g_params), (user_vecs, g_user)):
                for k in list(group):
                    group[k], m, v = adam(group[k], grads[k], *state[k], t)
                    state[k] = (m, v)
        return {k: params[k] - shared[k] for k in names}, user_vecs, first

    batched = vmap(one_user)
    for start in range(0, len(sampled), chunk):
        users = sampled[start:start + chunk]
        items, labels, mask = (torch.from_numpy(a).to(device)
                               for a in _user_rows(data, n_negatives, rng, users, cfg.max_rows_per_user))
        index = torch.from_numpy(users).to(device)
        with torch.no_grad():
            user_vecs = {name: table.weight[index].detach() for name, table in user_tables.items()}
        deltas, new_user_vecs, first_loss = batched(user_vecs, items, labels, mask)
        losses.append(first_loss.detach())
        with torch.no_grad():
            norms = torch.sqrt(sum(d.reshape(len(users), -1).pow(2).sum(1) for d in deltas.values()))
            scale = torch.clamp(cfg.clip_norm / (norms + 1e-12), max=1.0)
            clipped += int((scale < 1.0).sum())
            for k in names:
                total[k] += (deltas[k] * scale.view(-1, *([1] * (deltas[k].dim() - 1)))).sum(0)
            for name, table in user_tables.items():
                table.weight[index] = new_user_vecs[name]
    std = sigma * cfg.clip_norm / math.sqrt(max(n_participants, 1))
    with torch.no_grad():
        for k in names:
            noise = torch.from_numpy(secure.normal(0.0, std, size=tuple(total[k].shape))).to(total[k])
            total[k] = (total[k] + noise) / cfg.user_sample_rate / data.n_users
    model.load_shared_state(global_state)  # the shared tower moves only through the federation
    loss_mean = float(torch.cat(losses).mean()) if losses else 0.0
    return PrivateUpdate({k: v.cpu() for k, v in total.items()}, data.n_users, len(sampled), clipped, loss_mean)
