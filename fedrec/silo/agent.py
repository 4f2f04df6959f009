"""The silo agent: everything one silo does in a federation run, holding its state in memory.

One agent per silo per run. It owns the silo's data (read once), its Great Expectations verdict, its
user tower and optimizer, and its codec; at the key-holding silo also the run's CKKS secret context.
It talks to the coordinator only through the exchange:

    validate ─► hello ─► admission (checked against its own privacy settings) ─► keys ─► per round:
    instruction ─► round mask keys + sealed shares ─► train ─► mask (against the coordinator's mask set) + encrypt
    (in memory) ─► update + report ─► [reveal shares for the survivors' unmasking, once]
    ─► [decryptor: rebuild the sum from the signed updates ─► decrypt ─► unmask ─► mean, or a signed verdict]
    ─► [evaluate global ─► metric sums]

Everything it publishes is signed with its own Ed25519 key; everything it reads is verified against the
roster (the coordinator's or the key holder's key). Nothing it publishes carries interactions, user ids,
user embeddings, a plaintext update or a secret key (the run's CKKS secret travels sealed to each silo).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fedrec.core import diagnostics as faults
from fedrec.core.coldstart import (
    evaluate_cold,  # cold-start items: their metric sums only
)
from fedrec.core.config import Config
from fedrec.core.errors import FederationError, FedrecError, PayloadError, PolicyError
from fedrec.core.item_text import (
    model_features,  # the hybrid model's (public) item text embeddings
)
from fedrec.core.objectives import objective
from fedrec.core.state import state_delta
from fedrec.core.training import (
    SiloData,
    evaluate_targets,
    for_device,
    make_optimizer,
    model_config,
    resolve_device,
    sampled_auc_sum,
    train_epoch,
)
from fedrec.crypto import masking, secagg
from fedrec.crypto.ckks import (
    CKKSCodec,
    Codec,
    PlainCodec,
    context_fingerprint,
    create_keys,
)
from fedrec.crypto.updates import (
    LocalUpdate,
    aggregate_updates,
    decrypt_aggregate,
    encode_mean,
    encrypt_update,
    invalid_encodings,
)
from fedrec.models import RecModel, build_model
from fedrec.protocol.reads import gather_masks, load_candidate, load_global, read_mask_keys, read_update
from fedrec.protocol.vetting import candidates as robust_candidates
from fedrec.silo import data as pipeline
from fedrec.silo import personal, prevalidation, privacy
from fedrec.silo.store import SiloStore, silo_seed
from fedrec.wire.exchange import (
    ADMISSION_KEY,
    COORDINATOR_KEY,
    PUBLIC_CONTEXT_KEY,
    STOP_KEY,
    Exchange,
    ExchangeConflictError,
    aggregate_key,
    check_silo_id,
    decrypt_key,
    fit_report_key,
    global_key,
    hello_key,
    instruction_key,
    left_key,
    mask_keys_key,
    mask_set_key,
    mean_key,
    metrics_key,
    no_aggregate_key,
    reveal_key,
    run_exchange,
    sealed_context_key,
    unmask_key,
    update_key,
    verdict_key,
    vet_key,
    vote_key,
)
from fedrec.wire.messages import (
    Admission,
    DecryptRequest,
    FitInstructions,
    FitReport,
    Hello,
    Left,
    MaskKeys,
    MaskSet,
    MetricReport,
    Reveal,
    Stop,
    Unmask,
    Verdict,
    VetRequest,
    Vote,
)
from fedrec.wire.payload import EncryptedUpdate
from fedrec.wire.trust import (
    COORDINATOR,
    Identity,
    PublicIdentity,
    Roster,
    RosterError,
    seal,
    self_signed_identity,
)

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


@dataclass
class RoundMasks:
    """This silo's masking state of one round (memory only): its fresh secrets, the participants it shared them
    with, the mask set it masked against, the shares of the others' secrets it holds, whether it revealed."""

    round: int
    participants: list[str]
    secrets: secagg.RoundSecrets
    mask_set: list[str] = field(default_factory=list)
    held: dict[str, secagg.Share] = field(default_factory=dict)
    revealed: bool = False


class SiloAgent:
    """One silo's side of one federation run (see the module docstring)."""

    def __init__(self, cfg: Config, silo_id: str, run_id: str, *, validation_in_train: bool = False):
        self.device = resolve_device(cfg.training.device)
        self.cfg, self.silo_id, self.run_id = cfg, check_silo_id(silo_id), run_id
        self.exchange: Exchange = run_exchange(cfg, run_id)
        self.store = SiloStore.of(cfg, silo_id, run_id)
        self.store.private_dir(self.store.silo_dir)  # 0700 before any key or model lands in it
        self.identity = Identity.load_or_create(self.store.identity_dir, silo_id)
        self.validation_in_train = validation_in_train
        self.data: SiloData | None = None
        self.model: RecModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.codec: Codec | None = None
        self.admission: Admission | None = None
        self.roster = Roster()
        self._global: tuple[int, dict[str, torch.Tensor]] | None = None
        self._masks: RoundMasks | None = None  # this round's mask secrets and the shares this silo holds
        self._sigma = 0.0  # the DP noise multiplier (privacy.enabled), set in setup()
        self._personal: dict | None = None  # model.personalisation: the last evaluated round's personal towers
        self._kept_model = None  # model.personalisation: ditto: the personal model carried from round to round
        self._groups: dict[int, int] = {}  # federation.groups: round -> the secure sum this silo's update joins
        self._bases: dict[int, int] = {}  # federation.guard_drop: round -> the round whose model it started from
        self._own_val: dict[int, float] = {}  # federation.guard_drop: round -> its model's score on this silo's val

    def __repr__(self) -> str:  # Prefect may print task inputs: never the state
        return f"SiloAgent(silo={self.silo_id!r}, run={self.run_id!r})"

    def _wait(self, keys: list[str], timeout: float) -> str | None:
        return self.exchange.wait_any(keys, timeout=timeout, poll=self.cfg.federation.poll_interval_s,
                                      pause=COMPUTE.pause)

    def _post(self, key: str, body: bytes) -> int:
        return self.exchange.post(key, body, self.identity)

    def _post_once(self, key: str, body: bytes) -> int | None:
        """Post a key of this silo's round; None (and a warning) when someone wrote it first: a forgery that the
        coordinator refuses, so this silo sits out that step instead of stopping."""
        try:
            return self._post(key, body)
        except ExchangeConflictError:
            log.warning("silo %s: %s was written by someone else first; sitting out this step", self.silo_id, key)
            return None

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
                if (done := prevalidation.take_prevalidated(self.silo_id)) is not None:  # by its host, at start
                    frame, report = done
                else:
                    frame = pipeline.silo_interactions(self.cfg, self.silo_id, refresh=True)
                    report = pipeline.validate_silo(self.cfg, self.silo_id, frame, in_child=True)
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
        if problem := self._weaker_than_mine(admission):
            raise PolicyError(f"silo {self.silo_id} refuses run {self.run_id}: {problem}")
        self.roster, self.admission = roster, admission
        return admission

    def _weaker_than_mine(self, admission: Admission) -> str | None:
        """Why ``admission`` asks for less privacy than this silo's own params demand, or None."""
        fed = self.cfg.federation
        if fed.he and not admission.he:
            return "the admission turns homomorphic encryption off (this silo's federation.he is true)"
        if fed.masking and not admission.masking:
            return "the admission turns masking off (this silo's federation.masking is true)"
        if len(admission.silos) < fed.min_silos:
            return f"{len(admission.silos)} silo(s) admitted, fewer than this silo's federation.min_silos={fed.min_silos}"
        return None

    @property
    def is_key_holder(self) -> bool:
        return self.admission is not None and self.admission.key_holder == self.silo_id

    def setup(self) -> str:
        """Keys (the key holder makes the run's CKKS context and seals its secret to each admitted silo; the
        others unseal theirs) and the local model; returns the context fingerprint."""
        cfg = self.cfg
        workers = cfg.crypto.workers or torch.get_num_threads()  # processes for large updates (crypto.workers)
        if not cfg.federation.he:
            self.codec = PlainCodec()
        elif self.is_key_holder:
            with COMPUTE:
                keys = create_keys(cfg.crypto)
            self.store.save_secret_context(keys.secret_context)
            self.codec = CKKSCodec.of(cfg.crypto, keys.secret_context, public_context=keys.public_context,
                                      workers=workers)
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
            self.codec = CKKSCodec.of(cfg.crypto, secret, public_context=public, workers=workers)
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

    def announce(self, ins: FitInstructions) -> None:
        """With masking: this round's fresh secrets (self-mask seed, ephemeral mask key), their public half and
        commitment, and one Shamir share of each per other participant, sealed to it (:mod:`fedrec.crypto.secagg`)."""
        if not self.admission.masking or (self._masks is not None and self._masks.round == ins.round):
            return
        r, secrets = ins.round, secagg.RoundSecrets()
        self._masks = RoundMasks(r, list(ins.silos), secrets)
        others = [s for s in ins.silos if s != self.silo_id]
        threshold = secagg.threshold_for(len(ins.silos), self.cfg.federation.share_threshold)
        points = secagg.share_points(ins.silos)
        shares = secrets.shares(points, threshold)  # this silo keeps its own share and reveals it if it survives
        self._masks.held[self.silo_id] = secagg.Share.parse(shares[self.silo_id], "own share")
        sealed = {s: seal(shares[s], self.roster.get(s), self._share_binding(r, self.silo_id, s)).hex() for s in others}
        self._post_once(mask_keys_key(r, self.silo_id), MaskKeys(
            silo_id=self.silo_id, round=r, public=secrets.public, commitment=secrets.commitment, threshold=threshold,
            shares=sealed).to_json())

    def _share_binding(self, server_round: int, owner: str, holder: str) -> bytes:
        return f"fedrec-mask-share|{self.run_id}|round {server_round}|{owner}|{holder}".encode()

    def _mask(self, r: int, length: int) -> np.ndarray | None:
        """This round's mask against the coordinator's mask set: the self-mask plus the pairwise masks with each
        peer's ephemeral key (each read signed by that peer), keeping the shares of their secrets sealed to this
        silo. Raises PolicyError when the mask set is not one this silo may mask against."""
        if not self.admission.masking:
            return None
        state = self._masks
        key = mask_set_key(r, self._groups.get(r, 0))
        if self._wait([key], self.cfg.federation.round_timeout_s) is None:
            raise FederationError(f"silo {self.silo_id}: no mask set for round {r}")
        mask_set = MaskSet.from_json(self._read_coordinator(key), key)
        if (problem := self._participants_problem(mask_set.silos)) is None and not set(mask_set.silos) <= set(
                state.participants):
            problem = f"the mask set {mask_set.silos} names silos that were not the round's participants"
        if mask_set.round != r or problem:
            raise PolicyError(f"silo {self.silo_id} sits out round {r}: mask set refused ({problem})")
        peers = {}
        for silo in mask_set.silos:
            if silo == self.silo_id:
                continue
            keys = read_mask_keys(self.exchange, self.roster, r, silo)
            peers[silo] = keys.public
            try:
                state.held[silo] = secagg.Share.parse(self.identity.unseal(
                    bytes.fromhex(keys.shares.get(self.silo_id, "")), self._share_binding(r, silo, self.silo_id)),
                    mask_keys_key(r, silo))
            except (PayloadError, ValueError) as exc:  # that silo's secrets then need the others' shares
                log.warning("silo %s: no usable share from silo %s in round %d (%s)", self.silo_id, silo, r, exc)
        state.mask_set = list(mask_set.silos)
        return state.secrets.pair_masks(self.silo_id, peers, secagg.mask_info(self.run_id, r), length,
                                        self.cfg.crypto.mask_bits)

    def fit(self, ins: FitInstructions) -> FitReport | None:
        """E local epochs from the previous global model (or, with privacy on, the user-level DP update of
        fedrec.silo.privacy); the update is weighted, quantised, masked and encrypted in memory, then published with a
        small report (loss, counts, seconds, bytes). None: this silo sits out the round (it refused the
        participant or mask set, or a forger wrote its keys first)."""
        cfg, r = self.cfg, ins.round
        self._groups[r] = ins.group
        if problem := self._participants_problem(ins.silos):
            log.warning("silo %s sits out round %d: %s", self.silo_id, r, problem)
            return None
        self.announce(ins)  # before training: the others' masks need this silo's key
        self._bases[r] = ins.base_round if ins.base_round >= 0 else r - 1  # after a roll-back: an earlier model
        start_global = self.global_state(self._bases[r])
        with COMPUTE:
            start, cpu_start = time.perf_counter(), time.thread_time()
            update, loss = (self._train_private(ins, start_global) if cfg.privacy.enabled
                            else self._train(ins, start_global))
            seconds_train, cpu_train = time.perf_counter() - start, time.thread_time() - cpu_start
        if not all(bool(torch.isfinite(t).all()) for t in update.delta.values()):
            raise PayloadError(f"silo {self.silo_id}, round {r}: the local update holds NaN/Inf; not sent")
        try:
            mask = self._mask(r, masking.n_slots(sum(t.numel() for t in update.delta.values()), cfg.crypto.pack))
        except PolicyError as exc:
            log.warning("%s", exc)
            return None
        with COMPUTE:
            start = time.perf_counter()
            payload = encrypt_update(update, self.codec, cfg.crypto, ins.total_samples, mask).to_bytes()
            bytes_sent = self._post_once(update_key(r, self.silo_id), payload)
            seconds_encrypt = time.perf_counter() - start
        if bytes_sent is None:
            return None
        report = FitReport(silo_id=self.silo_id, round=r, n_samples=update.n_samples, loss=loss,
                           seconds_train=seconds_train, seconds_encrypt=seconds_encrypt, bytes_sent=bytes_sent,
                           plaintext_bytes=4 * sum(t.numel() for t in update.delta.values()), cpu_train=cpu_train)
        self._post_once(fit_report_key(r, self.silo_id), report.to_json())
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
        """User-level DP (fedrec.silo.privacy): per-user local steps, clipped, summed, noised with this silo's share of
        sigma; the update weighs by the silo's number of users."""
        cfg = self.cfg
        update = privacy.private_update(self.model, self.data, start_global, cfg.privacy, self._sigma, len(ins.silos),
                                        cfg.training.n_negatives, self._rng(ins.round), self.device)
        return LocalUpdate(self.silo_id, ins.round, update.n_users, update.delta), update.loss

    def settle(self, ins: FitInstructions) -> dict[str, int | bool]:
        """Until the round's global model appears: reveal this silo's shares once the survivors are named (masking),
        and decrypt the sum whenever the coordinator asks this silo to (the first decryptor, or one after it)."""
        r, fed, g = ins.round, self.cfg.federation, ins.group
        self._groups[r] = g
        attempt, decrypted, voted = 0, False, False
        warm = {update_key(r, s): s for s in self._decryptors_reads(ins)}
        while True:
            keys = [global_key(r), STOP_KEY]
            if self._masks is not None and self._masks.round == r and not self._masks.revealed:
                keys.append(unmask_key(r, g))
            if fed.he:
                keys.append(decrypt_key(r, attempt, g))
            if fed.robust_rule == "vetted" and not voted:
                keys.append(vet_key(r))
            key = self._wait(keys + (list(warm) if not decrypted else []), 3 * fed.round_timeout_s)
            if key is None:
                raise FederationError(f"silo {self.silo_id}: round {r} did not finish within "
                                      f"{3 * fed.round_timeout_s:.0f}s; the coordinator seems gone")
            if key == global_key(r) or (key == STOP_KEY and self._stopped()):
                break
            if key in warm:  # parsed now, while the others' arrive: decrypt() reads it again, parsed already
                with COMPUTE, contextlib.suppress(PayloadError):  # refused there, by name, if it is in the sum
                    read_update(self.exchange, self.roster, r, warm.pop(key), self.codec, self.cfg.crypto, None,
                                None, ins.total_samples)
                continue
            if key == unmask_key(r, g):
                self.reveal(r)
            elif key == vet_key(r):
                voted = True
                try:
                    self.vote(r)
                except (PolicyError, PayloadError) as exc:  # not scored (too many, or a candidate not the
                    log.warning("silo %s does not vote in round %d: %s", self.silo_id, r, exc)  # coordinator's)
                    self._post_once(vote_key(r, self.silo_id), Vote(silo_id=self.silo_id, round=r, val=[],
                                                                    abstain=str(exc)[:300]).to_json())
            else:
                request = DecryptRequest.from_json(self._read_coordinator(key), key)
                if (request.round, request.attempt) == (r, attempt) and request.decryptor == self.silo_id:
                    self.decrypt(r, ins, attempt)
                    decrypted = True
                attempt += 1
        self._masks = None
        return {"round": r, "decrypted": decrypted}

    def _decryptors_reads(self, ins: FitInstructions) -> list[str]:
        """The silos whose updates the round's decryptor (the key holder, CKKS) parses as they arrive, before it
        is asked: the sum it rebuilds then takes them parsed (none when they would not all stay parsed)."""
        if not (self.cfg.federation.he and self.is_key_holder and isinstance(self.codec, CKKSCodec)):
            return []
        masks = self._masks if self._masks is not None and self._masks.round == ins.round else None
        silos = masks.mask_set if masks is not None and masks.mask_set else list(ins.silos)
        slots = masking.n_slots(sum(t.numel() for t in self.model.shared_state().values()), self.cfg.crypto.pack)
        return silos if self.codec.keeps(len(silos) * -(-slots // self.codec.per_ciphertext)) else []

    def reveal(self, server_round: int) -> Reveal | None:
        """Once per round: this silo's shares of the survivors' self-mask seeds and of the dropped silos' mask keys,
        never both for one silo. Refuses survivors that are too few, not of its mask set, or without it."""
        state, key = self._masks, unmask_key(server_round, self._groups.get(server_round, 0))
        if state is None or state.round != server_round or state.revealed:
            return None  # one reveal per round, whatever the exchange shows later
        unmask = Unmask.from_json(self._read_coordinator(key), key)
        state.revealed = True  # whatever comes of it: this round is never revealed twice
        named = set(unmask.survivors) | set(unmask.dropped)
        problem = self._participants_problem(unmask.survivors)
        if unmask.round != server_round:
            problem = f"it is of round {unmask.round}"
        elif problem is None and named != set(state.mask_set):
            problem = f"survivors and dropped {sorted(named)} are not the mask set {state.mask_set}"
        if problem:
            log.warning("silo %s reveals nothing for round %d: %s", self.silo_id, server_round, problem)
            return None
        held = state.held
        reveal = Reveal(silo_id=self.silo_id, round=server_round,
                        self_shares={s: [held[s].x, format(held[s].self_share, "x")]
                                     for s in unmask.survivors if s in held},
                        key_shares={s: [held[s].x, format(held[s].key_share, "x")]
                                    for s in unmask.dropped if s in held})
        self._post_once(reveal_key(server_round, self.silo_id), reveal.to_json())
        return reveal

    def decrypt(self, server_round: int, ins: FitInstructions, attempt: int = 0) -> None:
        """Decryptor: rebuild the round's sum from the named survivors' signed updates (never a header's word), check
        the coordinator's aggregate is that sum, decrypt it, remove the masks with the survivors' reveals and publish
        the mean; when the sum cannot be opened, a signed verdict names whose update was no valid encoding."""
        faults.crash_point(f"silo-{self.silo_id}-decrypt", server_round)  # tests: the decryptor's host dies here
        g = ins.group
        fed, key = self.cfg.federation, aggregate_key(server_round, g)
        if self._wait([key, no_aggregate_key(server_round, g)], fed.round_timeout_s) != key:
            return
        aggregate = EncryptedUpdate.from_bytes(self._read_coordinator(key), expect_kind="aggregate", source=key)
        contributors = list(aggregate.contributors)
        if aggregate.round != server_round:
            raise PayloadError(f"{key}: holds round {aggregate.round}")
        if len(set(contributors)) < fed.min_silos or not set(contributors) <= set(ins.silos):
            raise PayloadError(f"{key}: refusing to decrypt a sum of {contributors} (participants {ins.silos}, "
                               f"federation.min_silos={fed.min_silos})")
        unmask = None
        if self.admission.masking:
            unmask = Unmask.from_json(self._read_coordinator(unmask_key(server_round, g)), unmask_key(server_round, g))
            if sorted(unmask.survivors) != sorted(contributors):
                raise PayloadError(f"{key}: a sum of {contributors}, but the survivors are {unmask.survivors}")
            # its own shares count towards the threshold too: reveal them (once per round) before waiting for the
            # others', also when the decrypt request was seen before the survivors were named
            self.reveal(server_round)
        with COMPUTE:
            updates = [read_update(self.exchange, self.roster, server_round, s, self.codec, self.cfg.crypto,
                                   aggregate.layout, None, ins.total_samples) for s in sorted(contributors)]
            rebuilt = aggregate_updates(updates, self.codec, server_round, self.cfg.crypto)
        if rebuilt.chunks != aggregate.chunks or rebuilt.n_samples != aggregate.n_samples:
            return self._verdict(server_round, attempt, "the coordinator's aggregate is not the sum of the named "
                                 "survivors' signed updates", {}, g)
        try:
            masks = None
            if unmask is not None:
                masks = gather_masks(self.exchange, self.roster, self.run_id, unmask,
                                     secagg.share_points(ins.silos), time.monotonic() + fed.round_timeout_s,
                                     fed.poll_interval_s, COMPUTE.pause)
            with COMPUTE:
                mean = decrypt_aggregate(rebuilt, self.codec, masks)
        except PayloadError as exc:
            with COMPUTE:
                culprits = invalid_encodings(updates, self.codec)
            return self._verdict(server_round, attempt, str(exc), culprits, g)
        self._post_once(mean_key(server_round, attempt, g), encode_mean(mean, server_round).to_bytes())

    def _verdict(self, server_round: int, attempt: int, reason: str, culprits: dict[str, str],
                 group: int = 0) -> None:
        log.warning("silo %s cannot open round %d's sum: %s %s", self.silo_id, server_round, reason, culprits or "")
        self._post_once(verdict_key(server_round, attempt, group), Verdict(
            round=server_round, attempt=attempt, decryptor=self.silo_id, reason=reason[:300],
            culprits={s: why[:300] for s, why in culprits.items()}).to_json())

    def vote(self, server_round: int) -> Vote:
        """federation.robust_rule vetted: score each candidate model of the round on this silo's validation users
        (the selection metric's sums, with this round's user vectors and, model.personalisation recency, the head)
        and send the sums; the coordinator publishes the candidate the federation's users are best served by."""
        request = VetRequest.from_json(self._read_coordinator(vet_key(server_round)), vet_key(server_round))
        fed = self.cfg.federation
        allowed = len(robust_candidates(fed.groups, fed.vet_drop))
        if request.candidates > allowed:  # each score tells something of its users
            raise PolicyError(f"silo {self.silo_id}: round {server_round} asks it to score {request.candidates} "
                              f"candidate models; its federation.groups {fed.groups} and vet_drop {fed.vet_drop} "
                              f"allow {allowed}")
        ev = self.cfg.evaluation
        full = ev.selection_metric.startswith("full_")
        auc = fed.vet_metric == "auc" and self.cfg.task == "ranking"
        kept = {k: v.clone() for k, v in self.model.shared_state().items()}
        sums, aucs = [], []
        try:
            for c in range(request.candidates):
                state = load_candidate(self.exchange, server_round, c, self.coordinator)
                with COMPUTE:
                    self.model.load_shared_state(state)
                    scorer = self.model
                    if personal.uses_recency(self.cfg):
                        scorer = personal.evaluation_scorer(scorer, self.data, self.cfg)
                    val = evaluate_targets(scorer, self.data, ev.k, ("val",), full, self.device)["val"]
                    if auc:
                        aucs.append(sampled_auc_sum(scorer, self.data, self.device))
                sums.append(dataclasses.asdict(val))
        finally:
            self.model.load_shared_state(kept)
        vote = self._ballot(Vote(silo_id=self.silo_id, round=server_round, val=sums, auc=aucs))
        self._post_once(vote_key(server_round, self.silo_id), vote.to_json())
        return vote

    def _ballot(self, vote: Vote) -> Vote:
        """The vote as sent: this silo's honest scores (the attack suite's lying voter overrides it)."""
        return vote

    def evaluate(self, server_round: int) -> MetricReport:
        """HR/NDCG of the round's global model on this silo's users (model.personalisation: of this silo's personal
        view of it, fedrec.silo.personal): only sums leave the silo."""
        state = self.global_state(server_round)
        ev = self.cfg.evaluation
        with COMPUTE:
            start = time.perf_counter()
            self.model.load_shared_state(state)
            scorer = self.model
            if personal.finetunes(self.cfg):  # this silo's own fine-tuned view scores its users; it is never sent
                rng = np.random.default_rng(silo_seed(self.cfg.federation.seed, self.silo_id, server_round,
                                                      personal.PERSONAL_STREAM))
                scorer = personal.personalise(self.model, self.data, state, self.cfg, rng, self.device,
                                              kept=self._kept_model)
                self._personal = personal.personal_state(scorer, server_round)
                if personal.keeps(self.cfg):  # ditto: next round trains on from this one
                    self._kept_model = scorer
                scorer = personal.blended(scorer, self.model, self.cfg)
            if personal.uses_recency(self.cfg):  # each user's own recent items (kept here) re-rank the scores
                scorer = personal.evaluation_scorer(scorer, self.data, self.cfg)
            sums = evaluate_targets(scorer, self.data, ev.k, ("val", "test"), ev.full_ranking, self.device)
            cold = evaluate_cold(scorer, self.data, ev.k, ev.full_ranking, self.device)  # cold-start items
            seconds = time.perf_counter() - start
        report = MetricReport(silo_id=self.silo_id, round=server_round, val=dataclasses.asdict(sums["val"]),
                              test=dataclasses.asdict(sums["test"]), seconds=seconds,
                              cold=dataclasses.asdict(cold) if cold is not None else None,
                              refuse=self._guard(server_round, sums["val"]))
        self._post(metrics_key(server_round, self.silo_id), report.to_json())
        return report

    def _guard(self, server_round: int, val) -> bool:
        """federation.guard_drop: does this round's model score this silo's validation users more than the bound
        below the model the round started from? (Its own users only: a sum, like its metric report.)"""
        ev, fed = self.cfg.evaluation, self.cfg.federation
        task = objective(self.cfg.task)
        score = task.score(val.means(ev.k), task.selection(ev.selection_metric), ev.k)
        self._own_val[server_round] = score
        before = self._own_val.get(self._bases.get(server_round, server_round - 1))
        return fed.guard_drop > 0 and before is not None and score < before - fed.guard_drop

    def leave(self, after_round: int, exc: BaseException) -> None:
        """Tell the coordinator this agent stops (it then stops waiting for it). Named fedrec errors carry their
        message (written by fedrec, no data); anything else only its type."""
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, FedrecError) else type(exc).__name__
        with contextlib.suppress(Exception):
            self._post(left_key(self.silo_id), Left(self.silo_id, after_round, reason[:300]).to_json())

    def save(self) -> None:
        """Keep the trained user tower (and optimizer) in the silo's store (0600 in 0700), for recommendations, and
        the coordinator key this silo trusted during the run: recommendations verify the global model with it."""
        state = {"users": self.model.users.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self._personal is not None:  # model.personalisation: the last round's personal view, for recommendations
            state["personal"] = self._personal
        self.store.save_model(state)
        self.store.save_coordinator(self.coordinator.to_dict())
