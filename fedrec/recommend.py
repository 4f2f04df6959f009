"""Top-K recommendations for one user, computed inside the user's silo.

Only the silo can do this: it alone holds the user's embedding (its private state from a
federated run) and history; the item tower is the federation's global model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedrec import pipeline
from fedrec.config import Config
from fedrec.errors import FedrecError
from fedrec.federation.filters import load_global
from fedrec.silo.store import SiloStore
from fedrec.trust import PublicIdentity
from fedrec.wire.exchange import run_exchange
from fedrec.training import model_config, resolve_device
from models import build_model


@dataclass(frozen=True)
class Recommendation:
    rank: int
    item_id: int
    title: str
    score: float


def latest_run_id(cfg: Config, silo_id: str) -> str:
    runs = sorted((p for p in (Path(cfg.federation.state_dir) / "silos" / silo_id).glob("*/model.pt")),
                  key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FedrecError(f"silo {silo_id!r} has no trained state under {cfg.federation.state_dir}; run `fedrec run` first")
    return runs[-1].parent.name


def recommend(cfg: Config, silo_id: str, user_id: int, k: int = 10, run_id: str | None = None,
              server_round: int | None = None) -> list[Recommendation]:
    """The k best unseen items for ``user_id`` (a user of ``silo_id``) under a federated run's model."""
    run_id = run_id or latest_run_id(cfg, silo_id)
    exchange = run_exchange(cfg, run_id)
    data = pipeline.load_silo_data(cfg, silo_id)
    matches = np.flatnonzero(data.user_ids == user_id)
    if len(matches) == 0:
        raise FedrecError(f"user {user_id} is not a user of silo {silo_id!r}")
    local = int(matches[0])
    device = resolve_device(cfg.training.device)
    model = build_model(model_config(cfg.model, data.n_users, data.n_items)).to(device)
    store = SiloStore.of(cfg, silo_id, run_id)
    saved = torch.load(store.model_path, map_location=device, weights_only=True)
    model.users.load_state_dict(saved["users"])
    rounds_done = server_round if server_round is not None else _last_round(exchange)
    coordinator = PublicIdentity.from_dict(json.loads(store.coordinator_path.read_text()), str(store.coordinator_path))
    model.load_shared_state(load_global(exchange, rounds_done, coordinator))
    scores = model.full_sort_predict(torch.tensor([local], device=device))[0].cpu().numpy()
    scores[data.seen_mask(np.array([local]))[0]] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    catalogue: pd.DataFrame = pipeline.read_catalogue(pipeline.Paths.of(cfg).catalogue)
    return [Recommendation(rank=r + 1, item_id=int(catalogue["item_id"].iloc[i]),
                           title=str(catalogue["title"].iloc[i]), score=float(scores[i]))
            for r, i in enumerate(top)]


def _last_round(exchange) -> int:
    keys = [k for k in exchange.keys("global") if k.endswith(".bin")]
    return max(int(k.rsplit("round-", 1)[1].split(".")[0]) for k in keys)
