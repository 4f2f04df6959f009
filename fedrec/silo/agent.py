"""The silo agent: everything one silo does in a federation run, holding its state in memory.

One agent per silo per run. It owns the silo's data (read once), its Great Expectations verdict, its
user tower and optimizer, and its codec; at the key-holding silo also the run's CKKS secret context.
It talks to the coordinator only through the exchange:

    validate ─► hello ─► admission ─► keys ─► per round: instruction ─► train ─► mask + encrypt (in memory)
    ─► update + report ─► [remask among survivors] [decryptor: aggregate ─► decrypt ─► mean]
    ─► [evaluate global ─► metric sums]

Everything it publishes is signed with its own Ed25519 key; everything it reads is verified against the
roster (the coordinator's or the key holder's key). Nothing it publishes carries interactions, user ids,
user embeddings, a plaintext update or a secret key (the run's CKKS secret travels sealed to each silo).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time

import numpy as np
import torch

from fedrec import pipeline, privacy
from fedrec.coldstart import evaluate_cold  # cold-start items: their metric sums only
from fedrec.config import Config
from fedrec.crypto import CKKSCodec, Codec, PlainCodec, context_fingerprint, create_keys
from fedrec.errors import FederationError, FedrecError, PayloadError
from fedrec.federation import masking
from fedrec.federation.aggregate import state_delta
from fedrec.federation.filters import LocalUpdate, decrypt_aggregate, encode_mean, encrypt_update, load_global
from fedrec.item_text import model_features  # the hybrid model's (public) item text embeddings
from fedrec.silo.store import SiloStore, silo_seed
from fedrec.training import (SiloData, evaluate_targets, for_device, make_optimizer, model_config, resolve_device,
                             train_epoch)
from fedrec.trust import COORDINATOR, Identity, PublicIdentity, Roster, RosterError, seal, self_signed_identity
from fedrec.wire.exchange import (ADMISSION_KEY, COORDINATOR_KEY, PUBLIC_CONTEXT_KEY, STOP_KEY, Exchange,
                                  aggregate_key, check_silo_id, fit_report_key, global_key, hello_key,
                                  instruction_key, left_key, mean_key, metrics_key, no_aggregate_key, remask_key,
                                  run_exchange, sealed_context_key, update_key)
from fedrec.wire.messages import Admission, FitInstructions, FitReport, Hello, Left, MetricReport, Remask, Stop
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


class SiloAgent:
    """One silo's side of one federation run (see the module docstring)."""

    def __init__(self, cfg: Config, silo_id: str, run_id: str, *, validation_in_train: bool = False):
        self.device = resolve_device(cfg.training.device)
        self.cfg, self.silo_id, self.run_id = cfg, check_silo_id(silo_id), run_id
        self.exchange: Exchange = run_exchange(cfg, run_id)
        self.store = SiloStore.of(cfg, silo_id, run_id)
        self.identity = Identity.load_or_create(self.store.identity_dir, silo_id)
        self.validation_in_train = validation_in_train
        self.data: SiloData | None = None
        self.model: RecModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.codec: Codec | None = None
        self.admission: Admission | None = None
        self.roster = Roster()
        self._global: tuple[int, dict[str, torch.Tensor]] | None = None
        self._pending: LocalUpdate | None = None  # this round's update, kept until global(r) for a remask
        self._sigma = 0.0  # the DP noise multiplier (privacy.enabled), set in setup()

    def __repr__(self) -> str:  # Prefect may print task inputs: never the state
        return f"SiloAgent(silo={self.silo_id!r}, run={self.run_id!r})"

    def _wait(self, keys: list[str], timeout: float) -> str | None:
        return self.exchange.wait_any(keys, timeout=timeout, poll=self.cfg.federation.poll_interval_s,
                                      pause=COMPUTE.pause)

    def _post(self, key: str, body: bytes) -> int:
        return self.exchange.post(key, body, self.identity)

    @property
    def coordinator(self) -> PublicIdentity:
        return self.roster.get(COORDINATOR)

    def _read_coordinator(self, key: str) -> bytes:
        return self.exchange.read(key, self.coordinator)

    def _stopped(self) -> bool:
        """True: the coordinator stopped the run (its stop.json verified; a forged one is a named error)."""
        Stop.from_json(self._read_coordinator(STOP_KEY), STOP_KEY)
        return True

    # --- joining ---------------------------------------------------------------------------------------
    def validate(self) -> Hello:
        """Great Expectations on the silo's own data; on success, split it and keep it in memory."""
        try:
            with COMPUTE:  # a database silo snapshots its rows first (silo.source)
                frame = pipeline.silo_interactions(self.cfg, self.silo_id, refresh=True)
                report = pipeline.validate_silo(self.cfg, self.silo_id, frame)
                if report.success:
                    pipeline.split_silo(self.cfg, self.silo_id, frame)
                    data = pipeline.load_silo_data(self.cfg, self.silo_id)
                    self.data = data.with_validation_in_train() if self.validation_in_train else data
        except Exception as exc:  # unreadable data (missing, truncated, not Parquet, DB down): a verdict, not a crash
            log.exception("silo %s: its data could not be read", self.silo_id)
            why = (f"{type(exc).__name__}: {exc}" if isinstance(exc, FedrecError)  # named errors carry no row values
                   else f"data could not be read ({type(exc).__name__}; see the silo's own log)")
            hello = Hello(silo_id=self.silo_id, valid=False, n_rows=0, n_users=0, n_train=0, failures=[why],
                          identity=self.identity.public.to_dict())
        else:  # the report keeps counts and expectation names only (no row values)
            hello = Hello(silo_id=self.silo_id, valid=report.success, n_rows=report.n_rows, n_users=report.n_users,
                          n_train=self.data.n_train if self.data is not None else 0,
                          failures=report.summary(), identity=self.identity.public.to_dict(),
                          data_version=pipeline.data_version(frame))
        self._post(hello_key(self.silo_id), hello.to_json())
        return hello

    def _trusted_coordinator(self, pinned: Roster | None) -> PublicIdentity:
        """The coordinator's public identity: from the pinned roster, else as published on the run's exchange."""
        if pinned is not None:
            return pinned.get(COORDINATOR)
        if self._wait([COORDINATOR_KEY], self.cfg.federation.join_timeout_s) is None:
            raise FederationError(f"silo {self.silo_id}: the coordinator published no identity")
        return self_signed_identity(self.exchange, COORDINATOR_KEY, COORDINATOR)

    def await_admission(self) -> Admission | None:
        """The coordinator's admission, or None when this silo is not in it (or the run stopped)."""
        key = self._wait([ADMISSION_KEY, STOP_KEY], self.cfg.federation.join_timeout_s)
        if key is None:
            raise FederationError(f"silo {self.silo_id}: no admission from the coordinator within "
                                  f"{self.cfg.federation.join_timeout_s:.0f}s (is the coordinator running?)")
        if key == STOP_KEY:  # stopped before admitting anyone (too few silos): nothing to verify against yet
            return None
        pinned = Roster.load(self.cfg.federation.roster) if self.cfg.federation.roster else None
        self.roster = Roster({COORDINATOR: self._trusted_coordinator(pinned)})
        admission = Admission.from_json(self._read_coordinator(ADMISSION_KEY), ADMISSION_KEY)
        if self.silo_id not in admission.silos or self.data is None:
            return None
        roster = Roster.from_dict(admission.roster, ADMISSION_KEY)
        if roster.get(self.silo_id) != self.identity.public:
            raise RosterError(f"{ADMISSION_KEY}: lists other keys for this silo ({self.silo_id}) than its own")
        if roster.get(COORDINATOR) != self.coordinator:
            raise RosterError(f"{ADMISSION_KEY}: names another coordinator key than the trusted one")
        if pinned is not None:  # a pinned roster: every peer's keys must be the pinned ones
            for silo in admission.silos:
                if roster.get(silo) != pinned.get(silo):
                    raise RosterError(f"{ADMISSION_KEY}: silo {silo}'s keys differ from the pinned roster's")
        self.roster, self.admission = roster, admission
        return admission

    @property
    def is_key_holder(self) -> bool:
        return self.admission is not None and self.admission.key_holder == self.silo_id

    def setup(self) -> str:
        """Keys (the key holder makes the run's CKKS context and seals its secret to each admitted silo; the
        others unseal theirs) and the local model; returns the context fingerprint."""
        cfg = self.cfg
        slots = cfg.crypto.poly_modulus_degree // 2
        workers = cfg.crypto.workers or torch.get_num_threads()  # processes for large updates (crypto.workers)
        if not cfg.federation.he:
            self.codec = PlainCodec()
        elif self.is_key_holder:
            with COMPUTE:
                keys = create_keys(cfg.crypto)
            self.store.save_secret_context(keys.secret_context)
            self.codec = CKKSCodec(keys.secret_context, slots, public_context=keys.public_context, workers=workers)
            self._post(PUBLIC_CONTEXT_KEY, keys.public_context)
            for silo in self.admission.silos:
                if silo != self.silo_id:
                    self._post(sealed_context_key(silo), seal(keys.secret_context, self.roster.get(silo),
                                                              self._seal_binding(silo, self.codec.context_id)))
        else:
            holder = self.roster.get(self.admission.key_holder)
            if self._wait([sealed_context_key(self.silo_id)], cfg.federation.join_timeout_s) is None:
                raise FederationError(f"silo {self.silo_id}: the key holder sealed no HE context to it")
            public = self.exchange.read(PUBLIC_CONTEXT_KEY, holder)
            secret = self.identity.unseal(self.exchange.read(sealed_context_key(self.silo_id), holder),
                                          self._seal_binding(self.silo_id, context_fingerprint(public)))
            self.codec = CKKSCodec(secret, slots, public_context=public, workers=workers)
            if not self.codec.matches(public):
                raise PayloadError(f"silo {self.silo_id}: the sealed secret context does not belong to the "
                                   "published public context")
        self.cfg = cfg = for_device(cfg, self.device, self.data.n_train)  # a large silo on a GPU: its batch and lr
        seed = int(np.random.SeedSequence(silo_seed(cfg.federation.seed, self.silo_id)).generate_state(1)[0])
        self.model = build_model(model_config(cfg.model, self.data.n_users, self.data.n_items, task=cfg.task,
                                              item_features=model_features(cfg)),  # hybrid: public item text
                                 torch.Generator().manual_seed(seed)).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg.training)
        # sigma for the planned rounds (Opacus searches it when privacy.target_epsilon is set): once per run
        self._sigma = privacy.noise_multiplier(cfg.privacy, cfg.federation.rounds) if cfg.privacy.enabled else 0.0
        return self.codec.context_id

    def _seal_binding(self, silo: str, context_id: str) -> bytes:
        return f"fedrec-ckks-secret|{self.run_id}|{silo}|{context_id}".encode()

    # --- rounds ----------------------------------------------------------------------------------------
    def next_instructions(self, last_round: int) -> FitInstructions | None:
        """Wait for round ``last_round + 1``'s instructions; None when the coordinator stopped the run."""
        key = self._wait([instruction_key(last_round + 1, self.silo_id), STOP_KEY],
                         4 * self.cfg.federation.round_timeout_s)
        if key is None:
            raise FederationError(f"silo {self.silo_id}: no instructions after round {last_round} within "
                                  f"{4 * self.cfg.federation.round_timeout_s:.0f}s; the coordinator seems gone")
        if key == STOP_KEY and self._stopped():
            return None
        return FitInstructions.from_json(self._read_coordinator(key), key)

    def global_state(self, server_round: int) -> dict[str, torch.Tensor]:
        if self._global is None or self._global[0] != server_round:
            # global(r) follows the round's update deadline and the decryption: up to 3 deadlines away
            if self._wait([global_key(server_round)], 3 * self.cfg.federation.round_timeout_s) is None:
                raise FederationError(f"silo {self.silo_id}: global model of round {server_round} never appeared")
            self._global = (server_round, load_global(self.exchange, server_round, self.coordinator))
        return self._global[1]

    def _participants_problem(self, silos: list[str]) -> str | None:
        """Why this silo must not mask with ``silos`` (a set too small would reveal its update), or None."""
        if self.silo_id not in silos:
            return "this silo is not among them"
        if len(silos) < self.cfg.federation.min_silos:
            return f"{len(silos)} participant(s), fewer than this silo's federation.min_silos={self.cfg.federation.min_silos}"
        if unknown := [s for s in silos if s not in self.admission.silos]:
            return f"not admitted: {unknown}"
        return None

    def _send_update(self, r: int, attempt: int, silos: list[str], total_samples: int) -> int:
        """Mask this round's update against ``silos`` (fresh masks per attempt), weight it by its share of their
        ``total_samples``, encrypt, sign, publish; returns the bytes written (signed envelope included)."""
        crypto = self.cfg.crypto
        mask = None
        if self.admission.masking:
            length = masking.n_slots(sum(t.numel() for t in self._pending.delta.values()), crypto.pack)
            mask = masking.silo_mask(self.identity, [self.roster.get(s) for s in silos],
                                     masking.mask_info(self.run_id, r, attempt), length, crypto.mask_bits)
        payload = encrypt_update(self._pending, self.codec, crypto, total_samples, mask).to_bytes()
        return self._post(update_key(r, self.silo_id, attempt), payload)

    def fit(self, ins: FitInstructions) -> FitReport | None:
        """E local epochs from the previous global model (or, with privacy on, the user-level DP update of
        fedrec.privacy); the update is weighted, quantised, masked and encrypted in memory, then published with a
        small report (loss, counts, seconds, bytes). None: this silo refused the round's participant set."""
        cfg, r = self.cfg, ins.round
        if problem := self._participants_problem(ins.silos):
            log.warning("silo %s sits out round %d: %s", self.silo_id, r, problem)
            return None
        start_global = self.global_state(r - 1)
        with COMPUTE:
            start = time.perf_counter()
            update, loss = (self._train_private(ins, start_global) if cfg.privacy.enabled
                            else self._train(ins, start_global))
            seconds_train = time.perf_counter() - start
            if not all(bool(torch.isfinite(t).all()) for t in update.delta.values()):
                raise PayloadError(f"silo {self.silo_id}, round {r}: the local update holds NaN/Inf; not sent")
            self._pending = update
            start = time.perf_counter()
            bytes_sent = self._send_update(r, 0, ins.silos, ins.total_samples)
            seconds_encrypt = time.perf_counter() - start
        report = FitReport(silo_id=self.silo_id, round=r, n_samples=update.n_samples, loss=loss,
                           seconds_train=seconds_train, seconds_encrypt=seconds_encrypt, bytes_sent=bytes_sent,
                           plaintext_bytes=4 * sum(t.numel() for t in update.delta.values()))
        self._post(fit_report_key(r, self.silo_id), report.to_json())
        return report

    def _rng(self, server_round: int) -> np.random.Generator:
        return np.random.default_rng(silo_seed(self.cfg.federation.seed, self.silo_id, server_round))

    def _train(self, ins: FitInstructions, start_global: dict[str, torch.Tensor]) -> tuple[LocalUpdate, float]:
        """E local epochs of the whole silo's data; the update weighs by its training rows."""
        cfg = self.cfg
        self.model.load_shared_state(start_global)
        reference = {k: v.to(self.device) for k, v in start_global.items()}
        rng = self._rng(ins.round)
        losses = [train_epoch(self.model, self.optimizer, self.data, cfg.training, rng, self.device,
                              proximal=(ins.proximal_mu, reference) if ins.proximal_mu > 0 else None)
                  for _ in range(ins.local_epochs)]
        delta = state_delta(self.model.shared_state(), start_global)
        return LocalUpdate(self.silo_id, ins.round, self.data.n_train, delta), float(np.mean(losses))

    def _train_private(self, ins: FitInstructions,
                       start_global: dict[str, torch.Tensor]) -> tuple[LocalUpdate, float]:
        """User-level DP (fedrec.privacy): per-user local steps, clipped, summed, noised with this silo's share of
        sigma; the update weighs by the silo's number of users."""
        cfg = self.cfg
        update = privacy.private_update(self.model, self.data, start_global, cfg.privacy, self._sigma, len(ins.silos),
                                        cfg.training.n_negatives, self._rng(ins.round), self.device)
        return LocalUpdate(self.silo_id, ins.round, update.n_users, update.delta), update.loss

    def settle(self, ins: FitInstructions) -> dict[str, int | bool]:
        """Until the round's global model appears: mask again among the survivors when asked (a dropout after
        the participant set was fixed), and, as the round's decryptor, decrypt the sum and publish the mean."""
        r, fed = ins.round, self.cfg.federation
        attempt, decrypted, remasks = 0, not (fed.he and ins.decryptor == self.silo_id), 0
        while True:
            keys = [global_key(r), remask_key(r, attempt + 1), STOP_KEY]
            if not decrypted:
                keys += [aggregate_key(r), no_aggregate_key(r)]
            key = self._wait(keys, 3 * fed.round_timeout_s)
            if key is None:
                raise FederationError(f"silo {self.silo_id}: round {r} did not finish within "
                                      f"{3 * fed.round_timeout_s:.0f}s; the coordinator seems gone")
            if key == global_key(r) or (key == STOP_KEY and self._stopped()):
                break
            if key == remask_key(r, attempt + 1):
                attempt += 1
                remask = Remask.from_json(self._read_coordinator(key), key)
                problem = (f"{key} is for round {remask.round}, attempt {remask.attempt}"
                           if (remask.round, remask.attempt) != (r, attempt) else self._participants_problem(remask.silos))
                if problem is None and self._pending is not None and self._pending.round == r:
                    with COMPUTE:
                        self._send_update(r, attempt, remask.silos, remask.total_samples)
                    remasks += 1
                elif self.silo_id in remask.silos:
                    log.warning("silo %s does not remask round %d: %s", self.silo_id, r, problem)
            elif key == aggregate_key(r):
                self.decrypt(r, ins.silos)
                decrypted = True
            else:  # no aggregate this round
                decrypted = True
        self._pending = None
        return {"round": r, "remasks": remasks, "decrypted": fed.he and ins.decryptor == self.silo_id}

    def decrypt(self, server_round: int, participants: list[str]) -> None:
        """Decryptor: decrypt the round's sum and publish the mean; refuses a sum of too few silos (which would
        reveal them) or of silos that were not the round's participants."""
        key = aggregate_key(server_round)
        aggregate = EncryptedUpdate.from_bytes(self._read_coordinator(key), expect_kind="aggregate", source=key)
        if aggregate.round != server_round:
            raise PayloadError(f"{key}: holds round {aggregate.round}")
        contributors = list(aggregate.contributors)
        if len(set(contributors)) < self.cfg.federation.min_silos or not set(contributors) <= set(participants):
            raise PayloadError(f"{key}: refusing to decrypt a sum of {contributors} (participants {participants}, "
                               f"federation.min_silos={self.cfg.federation.min_silos})")
        with COMPUTE:
            mean = decrypt_aggregate(aggregate, self.codec)
        self._post(mean_key(server_round), encode_mean(mean, server_round).to_bytes())

    def evaluate(self, server_round: int) -> MetricReport:
        """HR/NDCG of the round's global model on this silo's users: only sums leave the silo."""
        state = self.global_state(server_round)
        ev = self.cfg.evaluation
        with COMPUTE:
            start = time.perf_counter()
            self.model.load_shared_state(state)
            sums = evaluate_targets(self.model, self.data, ev.k, ("val", "test"), ev.full_ranking, self.device)
            cold = evaluate_cold(self.model, self.data, ev.k, ev.full_ranking, self.device)  # cold-start items
            seconds = time.perf_counter() - start
        report = MetricReport(silo_id=self.silo_id, round=server_round, val=dataclasses.asdict(sums["val"]),
                              test=dataclasses.asdict(sums["test"]), seconds=seconds,
                              cold=dataclasses.asdict(cold) if cold is not None else None)
        self._post(metrics_key(server_round, self.silo_id), report.to_json())
        return report

    def leave(self, after_round: int, exc: BaseException) -> None:
        """Tell the coordinator this agent stops (it then stops waiting for it). Named fedrec errors carry their
        message (written by fedrec, no data); anything else only its type."""
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, FedrecError) else type(exc).__name__
        with contextlib.suppress(Exception):
            self._post(left_key(self.silo_id), Left(self.silo_id, after_round, reason[:300]).to_json())

    def save(self) -> None:
        """Keep the trained user tower (and optimizer) in the silo's store, for recommendations."""
        self.store.root.mkdir(parents=True, exist_ok=True)
        tmp = self.store.model_path.with_suffix(".tmp")
        torch.save({"users": self.model.users.state_dict(), "optimizer": self.optimizer.state_dict()}, tmp)
        tmp.replace(self.store.model_path)
        # the coordinator key this silo trusted during the run: recommendations verify the global model with it
        self.store.coordinator_path.write_text(json.dumps(self.coordinator.to_dict()))
