"""The silo agent: everything one silo does in a federation run, holding its state in memory.

One agent per silo per run. It owns the silo's data (read once), its Great Expectations verdict, its
user tower and optimizer, and its codec; at the key-holding silo also the run's CKKS secret context.
It talks to the coordinator only through the exchange:

    validate ─► hello ─► admission ─► keys ─► per round: instruction ─► train ─► encrypt (in memory) ─►
    update + report ─► [key holder: aggregate ─► decrypt ─► mean] ─► [evaluate global ─► metric sums]

Nothing it publishes carries interactions, user ids, user embeddings, a plaintext update or a secret key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
import time

import numpy as np
import torch

from fedrec import pipeline
from fedrec.config import Config
from fedrec.crypto import CKKSCodec, Codec, PlainCodec, create_keys, value_limit
from fedrec.errors import FederationError, FedrecError, PayloadError
from fedrec.federation.aggregate import state_delta
from fedrec.federation.filters import (LocalUpdate, decrypt_aggregate, encode_mean, encrypt_update, load_global)
from fedrec.silo.store import SiloStore, silo_seed
from fedrec.training import SiloData, evaluate_targets, make_optimizer, model_config, resolve_device, train_epoch
from fedrec.validation import ValidationReport
from fedrec.wire.exchange import (ADMISSION_KEY, PUBLIC_CONTEXT_KEY, STOP_KEY, Exchange, aggregate_key,
                                  check_silo_id, fit_report_key, global_key, hello_key, instruction_key, left_key,
                                  mean_key, metrics_key, no_aggregate_key, run_exchange, update_key)
from fedrec.wire.messages import Admission, FitInstructions, FitReport, Hello, Left, MetricReport
from fedrec.wire.payload import EncryptedUpdate
from models import RecModel, build_model

log = logging.getLogger(__name__)


class ComputeSlot:
    """Silos hosted in one process take turns computing (one torch thread, no GIL contention); a silo waiting
    for the exchange sleeps while another computes instead of polling (polls steal the GIL from training)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._busy = False

    def __enter__(self) -> "ComputeSlot":
        self._lock.acquire()
        with self._cond:
            self._busy = True
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()
        self._lock.release()

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or while another silo computes, until it is done."""
        with self._cond:
            if self._busy:
                self._cond.wait(timeout=60.0)
                return
        time.sleep(seconds)


COMPUTE = ComputeSlot()


def public_failures(report: ValidationReport) -> list[str]:
    """The validation failures without their example values (those are raw rows; they stay in the silo)."""
    return [re.sub(r", e\.g\. .*$", "", line) for line in report.summary()]


class SiloAgent:
    """One silo's side of one federation run (see the module docstring)."""

    def __init__(self, cfg: Config, silo_id: str, run_id: str, *, validation_in_train: bool = False):
        self.cfg, self.silo_id, self.run_id = cfg, check_silo_id(silo_id), run_id
        self.exchange: Exchange = run_exchange(cfg, run_id)
        self.store = SiloStore.of(cfg, silo_id, run_id)
        self.validation_in_train = validation_in_train
        self.device = resolve_device(cfg.training.device)
        self.data: SiloData | None = None
        self.model: RecModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.codec: Codec | None = None
        self.admission: Admission | None = None
        self._global: tuple[int, dict[str, torch.Tensor]] | None = None

    def __repr__(self) -> str:  # Prefect may print task inputs: never the state
        return f"SiloAgent(silo={self.silo_id!r}, run={self.run_id!r})"

    def _wait(self, keys: list[str], timeout: float) -> str | None:
        return self.exchange.wait_any(keys, timeout=timeout, poll=self.cfg.federation.poll_interval_s,
                                      pause=COMPUTE.pause)

    # --- joining ---------------------------------------------------------------------------------------
    def validate(self) -> Hello:
        """Great Expectations on the silo's own data; on success, split it and keep it in memory."""
        try:
            with COMPUTE:
                report = pipeline.validate_silo(self.cfg, self.silo_id)
                if report.success:
                    pipeline.split_silo(self.cfg, self.silo_id)
                    data = pipeline.load_silo_data(self.cfg, self.silo_id)
                    self.data = data.with_validation_in_train() if self.validation_in_train else data
        except Exception as exc:  # unreadable data (missing, truncated, not Parquet): a verdict, not a crash
            log.exception("silo %s: its data could not be read", self.silo_id)
            hello = Hello(silo_id=self.silo_id, valid=False, n_rows=0, n_users=0, n_train=0,
                          failures=[f"data could not be read ({type(exc).__name__}; see the silo's own log)"])
        else:
            hello = Hello(silo_id=self.silo_id, valid=report.success, n_rows=report.n_rows, n_users=report.n_users,
                          n_train=self.data.n_train if self.data is not None else 0,
                          failures=public_failures(report))
        self.exchange.put(hello_key(self.silo_id), hello.to_json())
        return hello

    def await_admission(self) -> Admission | None:
        """The coordinator's admission, or None when this silo is not in it (or the run stopped)."""
        key = self._wait([ADMISSION_KEY, STOP_KEY], self.cfg.federation.join_timeout_s)
        if key is None:
            raise FederationError(f"silo {self.silo_id}: no admission from the coordinator within "
                                  f"{self.cfg.federation.join_timeout_s:.0f}s (is the coordinator running?)")
        if key == STOP_KEY:
            return None
        admission = Admission.from_json(self.exchange.get(ADMISSION_KEY), ADMISSION_KEY)
        if self.silo_id not in admission.silos or self.data is None:
            return None
        self.admission = admission
        return admission

    @property
    def _max_abs(self) -> float | None:
        """This silo's share of the CKKS value range: the sum of all contributors' values must fit."""
        if not self.cfg.federation.he:
            return None
        return value_limit(self.cfg.crypto) / max(len(self.admission.silos), 1)

    @property
    def is_key_holder(self) -> bool:
        return self.admission is not None and self.admission.key_holder == self.silo_id

    def setup(self) -> str:
        """Keys (the key holder makes the run's CKKS context; the others receive only its public part) and
        the local model; returns the context fingerprint."""
        cfg = self.cfg
        slots = cfg.crypto.poly_modulus_degree // 2
        if not cfg.federation.he:
            self.codec = PlainCodec()
        elif self.is_key_holder:
            with COMPUTE:
                keys = create_keys(cfg.crypto)
            self.store.save_secret_context(keys.secret_context)
            self.codec = CKKSCodec(keys.secret_context, slots, public_context=keys.public_context)
            self.exchange.put(PUBLIC_CONTEXT_KEY, keys.public_context)
        else:
            if self._wait([PUBLIC_CONTEXT_KEY], cfg.federation.join_timeout_s) is None:
                raise FederationError(f"silo {self.silo_id}: the key holder published no public context")
            self.codec = CKKSCodec(self.exchange.get(PUBLIC_CONTEXT_KEY), slots)
        seed = int(np.random.SeedSequence(silo_seed(cfg.federation.seed, self.silo_id)).generate_state(1)[0])
        self.model = build_model(model_config(cfg.model, self.data.n_users, self.data.n_items),
                                 torch.Generator().manual_seed(seed)).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg.training)
        return self.codec.context_id

    # --- rounds ----------------------------------------------------------------------------------------
    def next_instructions(self, last_round: int) -> FitInstructions | None:
        """Wait for round ``last_round + 1``'s instructions; None when the coordinator stopped the run."""
        key = self._wait([instruction_key(last_round + 1, self.silo_id), STOP_KEY],
                         4 * self.cfg.federation.round_timeout_s)
        if key is None:
            raise FederationError(f"silo {self.silo_id}: no instructions after round {last_round} within "
                                  f"{4 * self.cfg.federation.round_timeout_s:.0f}s; the coordinator seems gone")
        if key == STOP_KEY:
            return None
        return FitInstructions.from_json(self.exchange.get(key), key)

    def global_state(self, server_round: int) -> dict[str, torch.Tensor]:
        if self._global is None or self._global[0] != server_round:
            # global(r) follows the round's update deadline and the decryption: up to 3 deadlines away
            if self._wait([global_key(server_round)], 3 * self.cfg.federation.round_timeout_s) is None:
                raise FederationError(f"silo {self.silo_id}: global model of round {server_round} never appeared")
            self._global = (server_round, load_global(self.exchange, server_round))
        return self._global[1]

    def fit(self, ins: FitInstructions) -> FitReport:
        """E local epochs from the previous global model; the update is weighted, quantised and encrypted in
        memory, then published with a small report (loss, counts, seconds, bytes)."""
        cfg, r = self.cfg, ins.round
        start_global = self.global_state(r - 1)
        with COMPUTE:
            self.model.load_shared_state(start_global)
            reference = {k: v.to(self.device) for k, v in start_global.items()}
            rng = np.random.default_rng(silo_seed(cfg.federation.seed, self.silo_id, r))
            start = time.perf_counter()
            losses = [train_epoch(self.model, self.optimizer, self.data, cfg.training, rng, self.device,
                                  proximal=(ins.proximal_mu, reference) if ins.proximal_mu > 0 else None)
                      for _ in range(ins.local_epochs)]
            seconds_train = time.perf_counter() - start
            delta = state_delta(self.model.shared_state(), start_global)
            if not all(bool(torch.isfinite(t).all()) for t in delta.values()):
                raise PayloadError(f"silo {self.silo_id}, round {r}: the local update holds NaN/Inf; not sent")
            start = time.perf_counter()
            payload = encrypt_update(LocalUpdate(self.silo_id, r, self.data.n_train, delta), self.codec,
                                     cfg.crypto.quantization_bits, self._max_abs).to_bytes()
            seconds_encrypt = time.perf_counter() - start
        report = FitReport(silo_id=self.silo_id, round=r, n_samples=self.data.n_train, loss=float(np.mean(losses)),
                           seconds_train=seconds_train, seconds_encrypt=seconds_encrypt, bytes_sent=len(payload),
                           plaintext_bytes=4 * sum(t.numel() for t in delta.values()))
        self.exchange.put(fit_report_key(r, self.silo_id), report.to_json())
        self.exchange.put(update_key(r, self.silo_id), payload)
        return report

    def decrypt(self, server_round: int) -> bool:
        """Key holder: decrypt the round's aggregate and publish the mean; False when there was none."""
        # the sum comes once the slowest silo's update arrived or the round's deadline passed
        key = self._wait([aggregate_key(server_round), no_aggregate_key(server_round), STOP_KEY],
                         2 * self.cfg.federation.round_timeout_s)
        if key != aggregate_key(server_round):
            return False
        aggregate = EncryptedUpdate.from_bytes(self.exchange.get(key), expect_kind="aggregate", source=key)
        if aggregate.round != server_round:
            raise PayloadError(f"{key}: holds round {aggregate.round}")
        with COMPUTE:
            mean = decrypt_aggregate(aggregate, self.codec)
        self.exchange.put(mean_key(server_round), encode_mean(mean, server_round).to_bytes())
        return True

    def evaluate(self, server_round: int) -> MetricReport:
        """HR/NDCG of the round's global model on this silo's users: only sums leave the silo."""
        state = self.global_state(server_round)
        ev = self.cfg.evaluation
        with COMPUTE:
            start = time.perf_counter()
            self.model.load_shared_state(state)
            sums = evaluate_targets(self.model, self.data, ev.k, ("val", "test"), ev.full_ranking, self.device)
            seconds = time.perf_counter() - start
        report = MetricReport(silo_id=self.silo_id, round=server_round, val=dataclasses.asdict(sums["val"]),
                              test=dataclasses.asdict(sums["test"]), seconds=seconds)
        self.exchange.put(metrics_key(server_round, self.silo_id), report.to_json())
        return report

    def leave(self, after_round: int, exc: BaseException) -> None:
        """Tell the coordinator this agent stops (it then stops waiting for it). Named fedrec errors carry their
        message (written by fedrec, no data); anything else only its type."""
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, FedrecError) else type(exc).__name__
        with contextlib.suppress(Exception):
            self.exchange.put(left_key(self.silo_id), Left(self.silo_id, after_round, reason[:300]).to_json())

    def save(self) -> None:
        """Keep the trained user tower (and optimizer) in the silo's store, for recommendations."""
        self.store.root.mkdir(parents=True, exist_ok=True)
        tmp = self.store.model_path.with_suffix(".tmp")
        torch.save({"users": self.model.users.state_dict(), "optimizer": self.optimizer.state_dict()}, tmp)
        tmp.replace(self.store.model_path)
