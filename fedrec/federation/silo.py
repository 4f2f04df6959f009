"""The silo side of a round: local training and local evaluation, with private state on local disk.

``state/silos/<silo>/`` holds the user tower, the optimizer state and the key store; none of
it is ever returned to the orchestrator or written to the exchange.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedrec.config import Config
from fedrec.federation.aggregate import state_delta
from fedrec.federation.filters import LocalUpdate
from fedrec.federation.strategy import FitInstructions
from fedrec.metrics import MetricSums
from fedrec.training import (SiloData, evaluate_targets, make_optimizer, model_config, resolve_device, train_epoch)
from models import RecModel, build_model


def silo_seed(base: int, silo_id: str, *extra: int) -> list[int]:
    digest = int(hashlib.sha256(silo_id.encode()).hexdigest()[:8], 16)
    return [base, digest, *extra]


@dataclass(frozen=True)
class SiloStore:
    """A silo's private directory."""

    root: Path

    @classmethod
    def of(cls, cfg: Config, silo_id: str, run_id: str) -> "SiloStore":
        return cls(Path(cfg.federation.state_dir) / "silos" / silo_id / run_id)

    @property
    def model_path(self) -> Path:
        return self.root / "model.pt"

    @property
    def secret_context_path(self) -> Path:
        return self.root / "keys" / "secret.ctx"

    def save_secret_context(self, data: bytes) -> None:
        path = self.secret_context_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    def load_secret_context(self) -> bytes:
        return self.secret_context_path.read_bytes()

    def pending_path(self, server_round: int) -> Path:
        return self.root / "pending" / f"round-{server_round:04d}.pt"


def _load_model(cfg: Config, silo_id: str, data: SiloData, store: SiloStore, device: torch.device,
                with_optimizer: bool = True):
    """The silo's model (its own user tower, freshly seeded on first use) and, for training, its optimizer."""
    seed = int(np.random.SeedSequence(silo_seed(cfg.federation.seed, silo_id)).generate_state(1)[0])
    model = build_model(model_config(cfg.model, data.n_users, data.n_items), torch.Generator().manual_seed(seed))
    model.to(device)
    optimizer = make_optimizer(model, cfg.training) if with_optimizer else None
    if store.model_path.exists():
        saved = torch.load(store.model_path, map_location=device, weights_only=True)
        model.users.load_state_dict(saved["users"])
        if optimizer is not None:
            optimizer.load_state_dict(saved["optimizer"])
    return model, optimizer


def _save_model(store: SiloStore, model: RecModel, optimizer: torch.optim.Optimizer) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    tmp = store.model_path.with_suffix(".tmp")
    torch.save({"users": model.users.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
    tmp.replace(store.model_path)


@dataclass(frozen=True)
class FitOutcome:
    update: LocalUpdate
    loss: float
    train_seconds: float


def fit(cfg: Config, silo_id: str, data: SiloData, instructions: FitInstructions,
        global_state: dict[str, torch.Tensor], store: SiloStore) -> FitOutcome:
    """Start from the global item tower and this silo's own user tower; train E local epochs."""
    device = resolve_device(cfg.training.device)
    model, optimizer = _load_model(cfg, silo_id, data, store, device)
    model.load_shared_state(global_state)
    reference = {k: v.to(device) for k, v in global_state.items()}
    rng = np.random.default_rng(silo_seed(cfg.federation.seed, silo_id, instructions.round))
    start = time.perf_counter()
    losses = [train_epoch(model, optimizer, data, cfg.training, rng, device,
                          proximal=(instructions.proximal_mu, reference) if instructions.proximal_mu > 0 else None)
              for _ in range(instructions.local_epochs)]
    seconds = time.perf_counter() - start
    _save_model(store, model, optimizer)
    update = LocalUpdate(silo_id=silo_id, round=instructions.round, n_samples=data.n_train,
                         delta=state_delta(model.shared_state(), global_state))
    return FitOutcome(update=update, loss=float(np.mean(losses)), train_seconds=seconds)


@dataclass(frozen=True)
class EvalOutcome:
    """Only sums and counts: what a silo may disclose about its users' metrics."""

    silo_id: str
    val: MetricSums
    test: MetricSums


def evaluate_silo(cfg: Config, silo_id: str, data: SiloData, global_state: dict[str, torch.Tensor],
                  store: SiloStore) -> EvalOutcome:
    device = resolve_device(cfg.training.device)
    model, _ = _load_model(cfg, silo_id, data, store, device, with_optimizer=False)
    model.load_shared_state(global_state)
    ev = cfg.evaluation
    sums = evaluate_targets(model, data, ev.k, ("val", "test"), ev.full_ranking, device)
    return EvalOutcome(silo_id=silo_id, val=sums["val"], test=sums["test"])
