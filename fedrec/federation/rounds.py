"""One federation's steps as plain functions over the exchange and the silos' stores.

Each function is what one Prefect task does (tasks/ wraps them); each returns a small
summary (counts, seconds, bytes), never tensors, ciphertexts or keys, so nothing secret
lands in Prefect results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from fedrec import pipeline
from fedrec.config import Config
from fedrec.crypto import CKKSCodec, Codec, PlainCodec, context_fingerprint, create_keys
from fedrec.exchange import PUBLIC_CONTEXT_KEY, Exchange, aggregate_key, global_key, update_key
from fedrec.federation.filters import (LocalUpdate, aggregate_updates, decode_global, decrypt_aggregate,
                                       encode_global, encrypt_update)
from fedrec.federation.silo import EvalOutcome, SiloStore, evaluate_silo, fit
from fedrec.federation.strategy import FitInstructions, ServerState, Strategy
from fedrec.payload import EncryptedUpdate
from fedrec.training import SiloData, model_config
from models import build_model


@dataclass(frozen=True)
class Federation:
    """Identifies one federated training run: its config, id and where its payloads go."""

    cfg: Config
    run_id: str
    #: the refit phase: validation items are training positives (see TrainingConfig.refit)
    validation_in_train: bool = False

    def silo_data(self, silo_id: str) -> SiloData:
        data = pipeline.load_silo_data(self.cfg, silo_id)
        return data.with_validation_in_train() if self.validation_in_train else data

    @cached_property
    def exchange(self) -> Exchange:
        return Exchange(f"{self.cfg.federation.exchange_url.rstrip('/')}/{self.run_id}")

    def store(self, silo_id: str) -> SiloStore:
        return SiloStore.of(self.cfg, silo_id, self.run_id)

    def slots(self) -> int:
        return self.cfg.crypto.poly_modulus_degree // 2

    def silo_codec(self, silo_id: str) -> Codec:
        if not self.cfg.federation.he:
            return PlainCodec()
        public = self.exchange.get(PUBLIC_CONTEXT_KEY)
        return CKKSCodec(self.store(silo_id).load_secret_context(), self.slots(), public_context=public)

    def coordinator_codec(self) -> Codec:
        if not self.cfg.federation.he:
            return PlainCodec()
        return CKKSCodec(self.exchange.get(PUBLIC_CONTEXT_KEY), self.slots())

    def load_global(self, server_round: int) -> dict[str, torch.Tensor]:
        key = global_key(server_round)
        return decode_global(EncryptedUpdate.from_bytes(self.exchange.get(key), expect_kind="global", source=key))


def setup_keys(fed: Federation, silos: list[str]) -> str:
    """Create one CKKS context: the secret one into each silo's key store, the public one to the exchange."""
    if not fed.cfg.federation.he:
        return "plaintext"
    keys = create_keys(fed.cfg.crypto)
    for silo_id in silos:
        fed.store(silo_id).save_secret_context(keys.secret_context)
    fed.exchange.put(PUBLIC_CONTEXT_KEY, keys.public_context)
    return context_fingerprint(keys.public_context)


def initialize_global(fed: Federation) -> int:
    """Round-0 global item tower from the federation seed; returns its parameter count."""
    n_items = len(pipeline.catalogue_ids(fed.cfg))
    model = build_model(model_config(fed.cfg.model, 1, n_items),
                        torch.Generator().manual_seed(fed.cfg.federation.seed))
    state = model.shared_state()
    fed.exchange.put(global_key(0), encode_global(state, 0).to_bytes())
    return sum(t.numel() for t in state.values())


@dataclass(frozen=True)
class TrainSummary:
    silo_id: str
    round: int
    n_samples: int
    loss: float
    seconds: float


def train_local(fed: Federation, silo_id: str, instructions: FitInstructions) -> TrainSummary:
    """Train on the silo's own data from the previous round's global model; the plaintext update
    is parked in the silo's private store for the encrypt filter."""
    data = fed.silo_data(silo_id)
    store = fed.store(silo_id)
    outcome = fit(fed.cfg, silo_id, data, instructions, fed.load_global(instructions.round - 1), store)
    pending = store.pending_path(instructions.round)
    pending.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"n_samples": outcome.update.n_samples, "delta": outcome.update.delta}, pending)
    return TrainSummary(silo_id, instructions.round, outcome.update.n_samples, outcome.loss, outcome.train_seconds)


@dataclass(frozen=True)
class EncryptSummary:
    silo_id: str
    round: int
    bytes_sent: int
    plaintext_bytes: int
    seconds: float


def encrypt_and_publish(fed: Federation, silo_id: str, server_round: int) -> EncryptSummary:
    """The encrypt filter: pending plaintext update -> weighted ciphertexts on the exchange."""
    store = fed.store(silo_id)
    pending: Path = store.pending_path(server_round)
    saved = torch.load(pending, weights_only=True)
    update = LocalUpdate(silo_id, server_round, int(saved["n_samples"]), saved["delta"])
    start = time.perf_counter()
    payload = encrypt_update(update, fed.silo_codec(silo_id), fed.cfg.crypto.quantization_bits)
    seconds = time.perf_counter() - start
    sent = fed.exchange.put(update_key(server_round, silo_id), payload.to_bytes())
    pending.unlink()
    fp32 = 4 * sum(t.numel() for t in update.delta.values())
    return EncryptSummary(silo_id, server_round, sent, fp32, seconds)


@dataclass(frozen=True)
class AggregateSummary:
    round: int
    contributors: tuple[str, ...]
    failures: tuple[tuple[str, str], ...]
    total_samples: int
    seconds: float


def aggregate_round(fed: Federation, server_round: int, silos: list[str]) -> AggregateSummary:
    """Coordinator: read the round's ciphertexts, refuse bad ones (recorded as failures), add the rest."""
    codec = fed.coordinator_codec()
    updates, failures = [], []
    start = time.perf_counter()
    for silo_id in silos:
        key = update_key(server_round, silo_id)
        try:
            updates.append(EncryptedUpdate.from_bytes(fed.exchange.get(key), expect_kind="update", source=key))
        except Exception as exc:  # a missing or corrupt update drops that silo from the round, not the round
            failures.append((silo_id, str(exc)))
    if not updates:  # every silo dropped out: no aggregate; the strategy keeps the previous model
        return AggregateSummary(server_round, (), tuple(failures), 0, time.perf_counter() - start)
    aggregate = aggregate_updates(updates, codec, server_round)
    fed.exchange.put(aggregate_key(server_round), aggregate.to_bytes())
    return AggregateSummary(server_round, aggregate.contributors, tuple(failures), aggregate.n_samples,
                            time.perf_counter() - start)


@dataclass(frozen=True)
class DecryptSummary:
    round: int
    updated: bool
    seconds: float


def decrypt_and_step(fed: Federation, key_holder: str, server_round: int, strategy: Strategy,
                     failures: list[tuple[str, str]]) -> DecryptSummary:
    """Key holder: decrypt the aggregate, let the strategy step, publish the new global model."""
    key = aggregate_key(server_round)
    start = time.perf_counter()
    result = None
    if fed.exchange.exists(key):
        aggregate = EncryptedUpdate.from_bytes(fed.exchange.get(key), expect_kind="aggregate", source=key)
        result = decrypt_aggregate(aggregate, fed.silo_codec(key_holder))
    seconds = time.perf_counter() - start
    store = fed.store(key_holder)
    state_path = store.root / "server_state.pt"
    server_state = ServerState(**torch.load(state_path, weights_only=True)) if state_path.exists() else ServerState()
    current = fed.load_global(server_round - 1)
    new_global, server_state = strategy.aggregate_fit(server_round, current, result, failures, server_state)
    torch.save({"momentum": server_state.momentum}, state_path)
    fed.exchange.put(global_key(server_round), encode_global(new_global or current, server_round).to_bytes())
    return DecryptSummary(server_round, new_global is not None, seconds)


def evaluate_local(fed: Federation, silo_id: str, server_round: int) -> EvalOutcome:
    data = fed.silo_data(silo_id)
    return evaluate_silo(fed.cfg, silo_id, data, fed.load_global(server_round), fed.store(silo_id))
