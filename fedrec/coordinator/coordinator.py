"""The coordinator's side of a federation run, as plain Python over the exchange.

It holds its own signing identity, the run's public HE context (no secret key: it cannot decrypt), the
global item tower, the strategy and its state. It never opens a silo's data or key directory: everything it
knows about a silo arrived on the exchange (hello, fit report, masked ciphertext update, metric sums), signed
by that silo and verified against the roster; everything it writes is signed with its own key.

    admit (roster) ─► public context ─► global(0) ─► per round: instructions ─► mask set (whose round mask keys
    arrived) ─► collect updates (deadline) ─► unmask (survivors, dropped) ─► add ciphertexts ─► decrypt request ─►
    decryptor's mean (or its verdict; another decryptor when it is gone) ─► strategy step ─► global(r)
    ─► [collect metric sums]

With masking (federation.masking), updates carry SecAgg's double masks (:mod:`fedrec.crypto.secagg`): a silo
encrypts its update once per round, and a dropout is unmasked by the survivors' reveals, never by asking them to
send again, so nothing this coordinator does (or is tricked into by a forged file) yields two decryptable sums of a
round that differ by one silo's update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np
import torch

from fedrec.coordinator import robust
from fedrec.coordinator.state import RunState
from fedrec.coordinator.strategy import ServerState, build_strategy
from fedrec.core.config import Config
from fedrec.core.errors import FederationError, PayloadError
from fedrec.core.item_text import (
    model_features,  # the hybrid model's (public) item text embeddings
)
from fedrec.core.objectives import objective
from fedrec.core.state import layout_of
from fedrec.core.training import model_config
from fedrec.crypto import secagg
from fedrec.crypto.ckks import CKKSCodec, Codec, PlainCodec, value_limit
from fedrec.crypto.updates import (
    AggregateResult,
    aggregate_updates,
    decode_mean,
    decrypt_aggregate,
    encode_global,
    invalid_encodings,
)
from fedrec.models import build_model
from fedrec.protocol import vetting
from fedrec.protocol.reads import gather_masks, load_global, read_mask_keys, read_update
from fedrec.wire.exchange import (
    ADMISSION_KEY,
    COORDINATOR_KEY,
    PUBLIC_CONTEXT_KEY,
    STOP_KEY,
    ExchangeConflictError,
    aggregate_key,
    candidate_key,
    check_run_id,
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
    run_exchange,
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
    MaskSet,
    MetricReport,
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
    peek_envelope,
)

log = logging.getLogger(__name__)

def checkpoint_file(cfg: Config, run_id: str) -> Path:
    """Where the coordinator checkpoints run ``run_id`` after each round."""
    return Path(cfg.federation.state_dir) / "coordinator" / check_run_id(run_id) / "checkpoint.pt"


def checkpoint_extra(cfg: Config, run_id: str) -> dict | None:
    """What the last checkpoint of run ``run_id`` carries beside the run's state (e.g. its MLflow run), with
    ``rounds_done``: its last round; None without a checkpoint."""
    path = checkpoint_file(cfg, run_id)
    if not path.exists():
        return None
    state, extra = RunState.load(path)
    return dict(extra) | {"rounds_done": state.round}


@dataclass(frozen=True)
class Collected:
    """What arrived for one round: well-formed updates, their reports, and why the others are missing."""

    updates: list[EncryptedUpdate]
    reports: dict[str, FitReport]
    failures: dict[str, str]
    #: the silos whose mask keys arrived (every update is masked against them); the participants without masking
    mask_set: list[str] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class Opened:
    """The round's sum, opened: its mean (None: the round is skipped), silos that failed in the opening (a
    decryptor that left, an update that was no valid encoding) and how many decryptors were asked."""

    result: AggregateResult | None
    failures: dict[str, str]
    attempts: int = 1


def slot(server_round: int, group: int) -> int | tuple[int, int]:
    """Where a round's per-group bookkeeping lives: group 0 under the round's number, group g > 0 under (round, g)."""
    return server_round if group == 0 else (server_round, group)


def split_groups(silos: list[str], groups: int, min_silos: int, seed: int, server_round: int) -> list[list[str]]:
    """federation.groups: ``silos`` in a random order (seeded by the run's seed and the round) cut into as many
    groups as asked that each hold >= ``min_silos`` (sizes differ by at most one); one group of every silo when
    they cannot fill two."""
    n = max(1, min(groups, len(silos) // max(min_silos, 1)))
    if n == 1:
        return [list(silos)]
    order = [silos[i] for i in np.random.default_rng([seed, server_round, 0x9A0]).permutation(len(silos))]
    return [sorted(order[g::n]) for g in range(n)]


def _vote_problem(sums: list, n_train: int, task: str, auc: list[float] = ()) -> str | None:
    """What is impossible about a silo's vote: candidates scored over different numbers of users, more users than
    its training rows, a negative or non-finite sum, or (ranking) a hit, NDCG or AUC sum outside [0, users]. What
    passes moves the pooled score by at most its users' share, and federation.vote_trim bounds it further."""
    users = {getattr(x, "n", None) for x in sums}
    if len(users) != 1:
        return "the candidates are scored over different numbers of users"
    n = users.pop()
    if n is None:
        return None
    if not 0 <= n <= n_train:
        return f"{n} users scored, more than its {n_train} training rows"
    if any(not np.isfinite(v) or v < 0 for x in sums for v in dataclasses.asdict(x).values()):
        return "a sum that is negative or not a finite number"  # e.g. a rating vote's NaN or negative squared error
    if task == "ranking" and any(not 0 <= v <= n for x in sums for f, v in dataclasses.asdict(x).items() if f != "n"):
        return "a sum outside [0, users]"
    if any(not 0 <= a <= n for a in auc):
        return "an AUC sum outside [0, users]"
    return None


class Coordinator:
    """One federation run at the coordinator (see the module docstring)."""

    def __init__(self, cfg: Config, run_id: str, n_items: int, *,
                 gone: Callable[[], set[str]] | None = None):
        self.cfg, self.run_id, self.n_items = cfg, run_id, n_items
        self.exchange = run_exchange(cfg, run_id)
        self.state_dir = Path(cfg.federation.state_dir) / "coordinator"
        self.identity = Identity.load_or_create(self.state_dir / "identity", COORDINATOR)
        self.roster = Roster({COORDINATOR: self.identity.public})
        self.data_versions: dict[str, str] = {}  # each admitted silo's data version (content hash) this run
        self.strategy = build_strategy(cfg.federation)
        self._launcher_gone = gone or (lambda: set())  # silos whose agent's process or flow run ended
        self._left: dict[str, str] = {}
        # the round in progress: who decrypts it and who takes part (instructions sent fix both)
        # (federation.groups: one of each per group; group 0 under the round's number, group g > 0 under (round, g))
        self.decryptors: dict[int | tuple[int, int], str] = {}
        self._participants: dict[int | tuple[int, int], list[str]] = {}
        self.groups: dict[int, list[list[str]]] = {}  # each round's groups (one: every participant)
        self._ban_lock = threading.Lock()
        self._invited: list[str] = []  # the silos asked to join, until the admission names who did
        self._declared: dict[str, int] = {}  # each admitted silo's samples as its signed hello declared them
        self._left_checked = 0.0
        self.codec: Codec | None = None
        self.admission: Admission | None = None
        #: the run's state (fedrec.coordinator.state): set when global(0) is published or a checkpoint restored,
        #: then replaced (never edited) by each step of a round
        self.state: RunState | None = None

    def __repr__(self) -> str:
        return f"Coordinator(run={self.run_id!r})"

    # read-only views of the run's state
    @property
    def global_state(self) -> Mapping[str, torch.Tensor] | None:
        return self.state.global_state if self.state is not None else None

    @property
    def n_train(self) -> Mapping[str, int]:
        return self.state.n_train if self.state is not None else MappingProxyType(self._declared)

    @property
    def banned(self) -> Mapping[str, str]:
        return self.state.banned if self.state is not None else MappingProxyType({})

    @property
    def server_state(self) -> ServerState:
        return self.state.server_state if self.state is not None else ServerState()

    def _post(self, key: str, body: bytes) -> bytes:
        """Write ``body`` under ``key`` signed by this coordinator, or, when a previous life of this run's
        coordinator wrote it already (a resumed run), use what is there: each key means the same thing once."""
        if self.exchange.exists(key):
            return self.exchange.read(key, self.identity.public)
        try:
            self.exchange.post(key, body, self.identity)
        except ExchangeConflictError:
            return self.exchange.read(key, self.identity.public)
        return body

    @property
    def checkpoint_path(self) -> Path:
        return checkpoint_file(self.cfg, self.run_id)

    def save_checkpoint(self, extra: dict | None = None) -> None:
        """The run's state after its last round (:meth:`RunState.save`), with ``extra`` (e.g. the MLflow run)."""
        self.state.save(self.checkpoint_path, extra)

    def restore(self) -> tuple[RunState, dict] | None:
        """Resume this run after a crash: its admission and public context from the exchange, its state from the
        checkpoint. Returns (state, extra), or None when the run has no checkpoint."""
        if not self.checkpoint_path.exists():
            return None
        self.admission = Admission.from_json(self.exchange.read(ADMISSION_KEY, self.identity.public), ADMISSION_KEY)
        self.roster = Roster.from_dict(self.admission.roster, ADMISSION_KEY)
        self.open_context()
        self.state, extra = RunState.load(self.checkpoint_path)
        return self.state, extra

    def gone(self) -> set[str]:
        """Silos known to have stopped: their process or flow run ended, or they left a ``left.json``
        (looked up at most twice a second)."""
        if time.monotonic() - self._left_checked > 0.5:
            self._left_checked = time.monotonic()
            watched = [s for s in (self.admission.silos if self.admission is not None else self._invited)
                       if s not in self._left and s in self.roster]
            left = self.exchange.present(left_key(s) for s in watched)  # one listing per silo prefix at most
            for silo in watched:
                if left_key(silo) in left:
                    try:
                        self._left[silo] = Left.from_json(self.exchange.read(left_key(silo), self.roster.get(silo)),
                                                          left_key(silo)).reason
                    except PayloadError:  # a forged "left" removes nobody (and is looked at again)
                        continue
        return self._launcher_gone() | set(self._left)

    def why_gone(self, silo: str) -> str:
        return f"its agent left the run ({self._left[silo]})" if silo in self._left else "its agent ended"

    @property
    def _timing(self) -> dict:
        return {"poll": self.cfg.federation.poll_interval_s, "gone": self.gone}

    def _pinned(self) -> Roster:
        """Silo keys this coordinator trusts: the configured roster, else those it pinned on first use."""
        if self.cfg.federation.roster:
            return Roster.load(self.cfg.federation.roster)
        path = self.state_dir / "known_silos.json"
        return Roster.from_json(path.read_bytes(), str(path)) if path.exists() else Roster()

    def _pin(self, silos: list[PublicIdentity]) -> None:
        if self.cfg.federation.roster or not silos:
            return
        pinned = self._pinned()
        for ident in silos:
            pinned = pinned.with_party(ident)
        path = self.state_dir / "known_silos.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pinned.to_json())
        tmp.replace(path)

    def _hello(self, silo: str, pinned: Roster) -> tuple[Hello, PublicIdentity]:
        """A silo's hello, verified: signed by the key it carries, which is the pinned one (or new, first use)."""
        key = hello_key(silo)
        author, body = peek_envelope(self.exchange.get(key), key)
        if author != silo:
            raise RosterError(f"{key}: signed by {author!r}, not by silo {silo!r}")
        claimed = Hello.from_json(body, key)
        ident = PublicIdentity.from_dict(claimed.identity, key)
        if ident.name != silo or claimed.silo_id != silo:
            raise RosterError(f"{key}: hello claims to be silo {claimed.silo_id!r} ({ident.name!r})")
        if silo in pinned:
            if pinned.get(silo) != ident:
                raise RosterError(f"silo {silo} presents other keys than the pinned ones "
                                  f"(fingerprint {ident.fingerprint}, pinned {pinned.get(silo).fingerprint})")
        elif self.cfg.federation.roster:
            raise RosterError(f"silo {silo} is not in the pinned roster {self.cfg.federation.roster}")
        hello = Hello.from_json(self.exchange.read(key, ident), key)
        return hello, ident

    def admit(self, roster: list[str]) -> Admission:
        """Silos whose signed hello arrived in time with a passing validation and the pinned keys; the first
        of them makes the run's HE keys."""
        fed = self.cfg.federation
        self._invited = list(roster)
        with contextlib.suppress(ExchangeConflictError):  # a resumed coordinator announced itself already
            self.exchange.post(COORDINATOR_KEY, json.dumps(self.identity.public.to_dict()).encode(),
                               self.identity)
        arrived = self.exchange.wait_all({s: hello_key(s) for s in roster}, timeout=fed.join_timeout_s,
                                         **self._timing)
        admitted, excluded, idents = [], {}, {}
        pinned = self._pinned()
        for silo in roster:
            if silo not in arrived:
                excluded[silo] = (f"{self.why_gone(silo)} before joining" if silo in self.gone()
                                  else f"did not join within {fed.join_timeout_s:.0f}s")
                continue
            try:
                hello, idents[silo] = self._hello(silo, pinned)
            except PayloadError as exc:
                excluded[silo] = str(exc)
                continue
            if not hello.valid:
                excluded[silo] = "data validation failed: " + "; ".join(hello.failures)
            elif hello.n_train <= 0:
                excluded[silo] = "no training interactions"
            else:
                admitted.append(silo)
                self.data_versions[silo] = hello.data_version
                # the weight each update must carry: training rows, or (user-level DP) the silo's users
                self._declared[silo] = hello.n_users if self.cfg.privacy.enabled else hello.n_train
        self._pin([idents[s] for s in admitted])
        capacity = int(value_limit(self.cfg.crypto)) if fed.he else 2 ** 20
        if len(admitted) < fed.min_silos or len(admitted) > capacity:
            self.stop(f"{len(admitted)} silo(s) admitted", 0)
            raise FederationError(f"{len(admitted)} silo(s) passed validation and joined but "
                                  f"federation.min_silos={fed.min_silos} (and at most {capacity} fit the HE sum's "
                                  f"range); left out: {excluded}")
        for silo in admitted:
            self.roster = self.roster.with_party(idents[silo])
        self.admission = Admission(silos=sorted(admitted), excluded=excluded, key_holder=sorted(admitted)[0],
                                   he=fed.he, roster={n: p.to_dict() for n, p in self.roster.parties.items()},
                                   masking=fed.masking)
        self.exchange.post(ADMISSION_KEY, self.admission.to_json(), self.identity)
        return self.admission

    def open_context(self) -> str:
        """The public context the key holder published (HE), or plaintext; returns its fingerprint."""
        if not self.cfg.federation.he:
            self.codec = PlainCodec()
            return self.codec.context_id
        found = self.exchange.wait_any([PUBLIC_CONTEXT_KEY], timeout=self.cfg.federation.join_timeout_s,
                                       poll=self.cfg.federation.poll_interval_s,
                                       give_up=lambda: self.admission.key_holder in self.gone())
        if found is None:
            raise FederationError(f"key holder {self.admission.key_holder} published no public HE context")
        self.codec = CKKSCodec.of(self.cfg.crypto,
                                  self.exchange.read(PUBLIC_CONTEXT_KEY, self.roster.get(self.admission.key_holder)))
        if self.codec.can_decrypt:
            raise PayloadError("the published HE context contains a secret key: refusing to run with it")
        return self.codec.context_id

    def init_global(self) -> int:
        """Round-0 global item tower from the federation seed; returns its parameter count."""
        model = build_model(model_config(self.cfg.model, 1, self.n_items, task=self.cfg.task,
                                         item_features=model_features(self.cfg)),  # hybrid: public item text
                            torch.Generator().manual_seed(self.cfg.federation.seed))
        self.state = RunState(round=0, global_state=model.shared_state(), n_train=self._declared)
        self.exchange.post(global_key(0), encode_global(dict(self.global_state), 0).to_bytes(), self.identity)
        return sum(t.numel() for t in self.global_state.values())

    def decryptor(self, among: list[str] | None = None) -> str:
        """Who decrypts this round's sum: the key holder while it is around, else the first silo of ``among``
        (default: the admitted ones) still around (every admitted silo received the secret context, sealed to it)."""
        if not self.cfg.federation.he:
            return ""
        gone = self.gone()
        alive = [s for s in (self.admission.silos if among is None else among) if s not in gone]
        return self.admission.key_holder if self.admission.key_holder in alive else (alive[0] if alive else "")

    def start_round(self, server_round: int, evaluate: bool) -> list[str]:
        """Instructions for every admitted silo that is still around (they fix the round's participant set,
        which the masks are made for); returns them. A resumed run reuses the round's instructions if it had
        sent them before its crash."""
        sent_before: dict[int, list[str]] = {}
        for silo in self.admission.silos:
            if self.exchange.exists(instruction_key(server_round, silo)):
                key = instruction_key(server_round, silo)
                sent = FitInstructions.from_json(self.exchange.read(key, self.identity.public), key)
                self.decryptors[slot(server_round, sent.group)] = sent.decryptor
                self._participants[slot(server_round, sent.group)] = list(sent.silos)
                sent_before[sent.group] = list(sent.silos)
        if sent_before:  # a resumed round: its groups as sent
            self.groups[server_round] = [sent_before[g] for g in sorted(sent_before)]
            return sorted({s for group in sent_before.values() for s in group})
        gone = self.gone()
        silos = [s for s in self.admission.silos if s not in gone and s not in self.banned]
        self.groups[server_round] = groups = split_groups(silos, self.cfg.federation.groups,
                                                          self.cfg.federation.min_silos, self.cfg.federation.seed,
                                                          server_round)
        configured = self.strategy.configure_fit(server_round, silos)
        base = self.state.base_round  # federation.guard_drop: after a roll-back, the model the round starts from
        base = base if 0 <= base < server_round - 1 else -1
        for g, members in enumerate(groups):
            self._participants[slot(server_round, g)] = members
            self.decryptors[slot(server_round, g)] = self.decryptor(members if len(groups) > 1 else None)
            for silo in members:
                ins = dataclasses.replace(configured[silo], silos=members, evaluate=evaluate, group=g, base_round=base,
                                          decryptor=self.decryptors[slot(server_round, g)],
                                          total_samples=self.total_samples(members))
                self._post(instruction_key(server_round, silo), ins.to_json())
        return silos

    def total_samples(self, silos: list[str]) -> int:
        """The samples ``silos`` declared when they joined: the denominator of their updates' weights."""
        return sum(self.n_train[s] for s in silos)

    def fix_mask_set(self, server_round: int, silos: list[str], group: int = 0) -> list[str]:
        """With masking: wait for the participants' round mask keys (each verified: signed, one sealed share per
        other participant, a threshold they can meet) and name those that arrived; every update of the round is
        masked against exactly them. Without masking: the participants."""
        if not self.cfg.federation.masking:
            return list(silos)
        fed = self.cfg.federation
        arrived = self.exchange.wait_all({s: mask_keys_key(server_round, s) for s in silos},
                                         timeout=fed.round_timeout_s, **self._timing)
        ready = []
        for silo in sorted(arrived):
            try:
                keys = read_mask_keys(self.exchange, self.roster, server_round, silo)
            except PayloadError:
                continue  # refused again, by name, when its update is collected
            if set(keys.shares) == set(silos) - {silo} and keys.threshold <= len(silos):
                ready.append(silo)
        posted = self._post(mask_set_key(server_round, group), MaskSet(round=server_round, silos=ready).to_json())
        return MaskSet.from_json(posted, mask_set_key(server_round, group)).silos  # a resumed run's

    def collect_updates(self, server_round: int, silos: list[str], participants: list[str] | None = None,
                        group: int = 0) -> Collected:
        """Updates of the mask set ``silos`` that arrive before the round's deadline, each verified (signature,
        round, context, layout, encoding, every ciphertext parsed, declared n_samples); a late, missing, forged or
        malformed one is that silo's failure. With masking, the survivors and the dropped are then named
        (:class:`Unmask`): the survivors reveal what removes the masks; nobody sends again. ``participants``: the
        round's (default ``silos``), whose declared samples the weights divide by."""
        fed = self.cfg.federation
        layout = layout_of(self.global_state)
        participants = list(participants if participants is not None
                            else self._participants.get(slot(server_round, group), silos))
        total = self.total_samples(participants)
        failures = {s: self._mask_failure(server_round, s) for s in participants if s not in silos}
        checked: dict[str, EncryptedUpdate | PayloadError] = {}

        def check(silo: str) -> None:  # each update verified as it arrives: at the last arrival, one is left
            try:
                checked[silo] = read_update(self.exchange, self.roster, server_round, silo, self.codec,
                                            self.cfg.crypto, layout, self.n_train.get(silo), total)
            except PayloadError as exc:
                checked[silo] = exc

        arrived = self.exchange.wait_all({s: update_key(server_round, s) for s in silos},
                                         timeout=fed.round_timeout_s, on_arrival=check, **self._timing)
        # a silo posts its report right after its update: wait for it too (reading it at once would race)
        self.exchange.wait_all({s: fit_report_key(server_round, s) for s in arrived},
                               timeout=min(30.0, fed.round_timeout_s), **self._timing)
        updates: dict[str, EncryptedUpdate] = {}
        reports: dict[str, FitReport] = {}
        for silo in silos:
            if silo not in arrived:
                failures[silo] = (self.why_gone(silo) if silo in self.gone()
                                  else f"no update within {fed.round_timeout_s:.0f}s")
                continue
            if isinstance(update := checked[silo], PayloadError):
                failures[silo] = str(update)
                continue
            try:
                report_key = fit_report_key(server_round, silo)
                reports[silo] = FitReport.from_json(self.exchange.read(report_key, self.roster.get(silo)), report_key)
                updates[silo] = update
            except PayloadError as exc:
                failures[silo] = str(exc)
        if len(updates) < fed.min_silos:
            for silo in updates:
                failures[silo] = (f"round skipped: {len(updates)} valid update(s), fewer than "
                                  f"federation.min_silos={fed.min_silos}")
            updates = {}
        elif fed.masking:
            posted = self._post(unmask_key(server_round, group), Unmask(
                round=server_round, survivors=sorted(updates), dropped=sorted(set(silos) - set(updates))).to_json())
            survivors = Unmask.from_json(posted, unmask_key(server_round, group)).survivors  # a resumed run's
            updates = {s: u for s, u in updates.items() if s in survivors}
        reports = {s: r for s, r in reports.items() if s in updates}
        return Collected([updates[s] for s in sorted(updates)], reports, failures, list(silos))

    def _mask_failure(self, server_round: int, silo: str) -> str:
        if silo in self.gone():
            return self.why_gone(silo)
        if not self.exchange.exists(mask_keys_key(server_round, silo)):
            return f"no round mask keys within {self.cfg.federation.round_timeout_s:.0f}s"
        try:
            read_mask_keys(self.exchange, self.roster, server_round, silo)
        except PayloadError as exc:
            return str(exc)
        return "mask keys refused (shares not for every other participant, or a threshold above their number)"

    def aggregate(self, server_round: int, updates: list[EncryptedUpdate], group: int = 0) -> EncryptedUpdate | None:
        """Add the ciphertexts (no decryption here) and publish the sum for the key holder."""
        if not updates:
            self._post(no_aggregate_key(server_round, group), b"{}")
            return None
        aggregate = aggregate_updates(updates, self.codec, server_round, self.cfg.crypto)
        posted = self._post(aggregate_key(server_round, group), aggregate.to_bytes())
        return EncryptedUpdate.from_bytes(posted, expect_kind="aggregate", source=aggregate_key(server_round, group))

    def open_sum(self, server_round: int, aggregate: EncryptedUpdate | None,
                 updates: list[EncryptedUpdate] = (), group: int = 0) -> Opened:
        """The round's mean update: decrypted by a decryptor silo (HE; when it is gone or silent, the next
        survivor is asked), or opened here (plaintext). A sum that cannot be opened skips the round, never the
        run: the silos whose update was no valid encoding are named (and left out from then on)."""
        if aggregate is None:
            return Opened(None, {}, 0)
        if not self.cfg.federation.he:
            return self._open_here(server_round, aggregate, list(updates), group)
        fed = self.cfg.federation
        first = self.decryptors.get(slot(server_round, group)) or self.decryptor(list(aggregate.contributors))
        failures: dict[str, str] = {}
        attempt = 0
        while True:
            gone = self.gone()
            asked = [first] + [s for s in aggregate.contributors if s != first]
            candidates = [s for s in asked if s not in gone and s not in failures]
            if self.exchange.exists(decrypt_key(server_round, attempt, group)):  # a resumed run's request
                key = decrypt_key(server_round, attempt, group)
                decryptor = DecryptRequest.from_json(self.exchange.read(key, self.identity.public), key).decryptor
            elif candidates:
                decryptor = candidates[0]
                self._post(decrypt_key(server_round, attempt, group),
                           DecryptRequest(round=server_round, attempt=attempt, decryptor=decryptor).to_json())
            else:
                return Opened(None, {s: "round skipped: no decryptor left among the round's survivors"
                                     for s in aggregate.contributors} | failures, attempt)
            found = self.exchange.wait_any([mean_key(server_round, attempt, group),
                                            verdict_key(server_round, attempt, group)],
                                           timeout=fed.round_timeout_s, poll=fed.poll_interval_s,
                                           give_up=lambda d=decryptor: d in self.gone())
            try:
                if found == mean_key(server_round, attempt, group):
                    result = decode_mean(EncryptedUpdate.from_bytes(
                        self.exchange.read(found, self.roster.get(decryptor)), expect_kind="mean", source=found),
                        server_round)
                    if result.contributors != aggregate.contributors or result.total_samples != aggregate.n_samples:
                        raise PayloadError(f"{found}: the mean is not of this round's aggregate")
                    return Opened(result, failures, attempt + 1)
                if found == verdict_key(server_round, attempt, group):
                    verdict = Verdict.from_json(self.exchange.read(found, self.roster.get(decryptor)), found)
                    return Opened(None, failures | self._ban(server_round, verdict.culprits, verdict.reason,
                                                             aggregate.contributors), attempt + 1)
                why = (self.why_gone(decryptor) if decryptor in self.gone()
                       else f"no mean within {fed.round_timeout_s:.0f}s")
            except PayloadError as exc:  # forged, foreign-signed or not this sum's: the next survivor is asked
                why = f"answer refused: {exc}"
            failures[decryptor] = f"as round {server_round}'s decryptor: {why}"
            attempt += 1

    def _open_here(self, server_round: int, aggregate: EncryptedUpdate, updates: list[EncryptedUpdate],
                   group: int = 0) -> Opened:
        """Plaintext runs: this coordinator removes the masks with the survivors' reveals and decodes the sum."""
        fed = self.cfg.federation
        try:
            masks = None
            if fed.masking:
                unmask = Unmask.from_json(self.exchange.read(unmask_key(server_round, group), self.identity.public),
                                          unmask_key(server_round, group))
                masks = gather_masks(self.exchange, self.roster, self.run_id, unmask,
                                     secagg.share_points(self._participants.get(
                                         slot(server_round, group), sorted(set(unmask.survivors) | set(unmask.dropped)))),
                                     time.monotonic() + fed.round_timeout_s, fed.poll_interval_s)
            return Opened(decrypt_aggregate(aggregate, self.codec, masks), {})
        except PayloadError as exc:
            return Opened(None, self._ban(server_round, invalid_encodings(updates, self.codec), str(exc),
                                          aggregate.contributors))

    def _ban(self, server_round: int, culprits: dict[str, str], reason: str, contributors) -> dict[str, str]:
        """The failures of a round whose sum could not be opened; culprits are left out of the following rounds."""
        named = {s: why for s, why in culprits.items() if s in contributors}
        with self._ban_lock:  # federation.groups: the groups' sums are opened in threads
            self.state = self.state.replace(banned={**self.state.banned,
                                                    **{s: f"round {server_round}: {why}" for s, why in named.items()}})
        skipped = f"round skipped: its sum could not be opened ({reason})"
        return {s: (f"{named[s]}; left out from now on" if s in named else skipped) for s in contributors}

    def step(self, server_round: int, result: AggregateResult | None, failures: dict[str, str]) -> bool:
        """Strategy step; publishes global(r) (unchanged when the strategy keeps the model). True if moved. The
        state after it is round ``server_round``'s."""
        new_state, server_state = self.strategy.aggregate_fit(
            server_round, dict(self.global_state), result, sorted(failures.items()), self.server_state)
        self.state = self.state.replace(round=server_round, server_state=server_state, base_round=-1,
                                        global_state=self.global_state if new_state is None else new_state)
        payload = encode_global(dict(self.global_state), server_round).to_bytes()
        if self._post(global_key(server_round), payload) != payload:  # a resumed round must agree
            raise FederationError(f"round {server_round}: the global model on the exchange differs from the one "
                                  "recomputed on resume; the run's exchange or checkpoint was changed")
        return new_state is not None

    def vet(self, server_round: int, results: list[AggregateResult | None],
            voters: list[str]) -> tuple[AggregateResult | None, dict[str, float], list[AggregateResult]]:
        """federation.robust_rule vetted: a group mean far out of the others' spread (:func:`robust.odd_one_out`,
        ``federation.outlier_ratio``: a scaled update) is left out first, and counts towards
        ``federation.vet_drop`` and the silos' group testing; then each item row a remaining group moved far
        beyond the others takes their mean (:func:`robust.guard_rows`, ``federation.row_guard``: a promoted item,
        whose boosted rows barely move the silos' validation scores); then, while ``vet_drop`` allows more, the
        candidate models (every remaining group; every group but one) are published, the ``voters`` score each on
        their own validation users (:class:`Vote`), and the round's result is the candidate :func:`robust.pick`
        chooses on the pooled scores (each silo's gains clipped to the other silos' range, ``federation.vote_trim``:
        :func:`robust.pooled_scores`). Returns it, each candidate's score (a silo without a vote in time is not
        counted; with no vote at all every remaining group is kept) and the group results the candidates were
        made of."""
        opened = [r for r in results if r is not None]
        drop = self.cfg.federation.vet_drop  # the most groups this round may leave out, the odd one included
        if len(opened) >= 3:
            kept = robust.odd_one_out(opened, self.cfg.federation.outlier_ratio)
            drop, opened = drop - (len(opened) - len(kept)), kept
        opened, replaced = robust.guard_rows(opened, self.n_items, self.cfg.federation.row_guard)
        if replaced:
            log.warning("round %d: %d item rows of %d group means far beyond the other groups' took their mean "
                        "(federation.row_guard): %s", server_round, len(replaced), len({g for g, _, _ in replaced}),
                        ", ".join(f"{name}[{row}]" for _, name, row in replaced[:8]))
        if len(opened) < 2 or drop < 1:
            return robust.combine(opened, "mean"), {}, opened
        sets = vetting.candidates(len(opened), drop)
        combined = [robust.combine([opened[g] for g in groups], "mean") for groups in sets]
        try:
            for c, result in enumerate(combined):
                new_state, _ = self.strategy.aggregate_fit(server_round, dict(self.global_state), result, [],
                                                           self.server_state)
                self._post(candidate_key(server_round, c), encode_global(new_state or dict(self.global_state),
                                                                         server_round).to_bytes())
            self._post(vet_key(server_round), VetRequest(round=server_round, candidates=len(sets)).to_json())
        except PayloadError as exc:  # a key of this round's vetting holds what this coordinator never signed
            log.warning("round %d: not vetted, every group kept: %s", server_round, exc)
            return combined[0], {}, opened
        arrived = self.exchange.wait_all({s: vote_key(server_round, s) for s in voters},
                                         timeout=self.cfg.federation.round_timeout_s, **self._timing)
        task, ev = objective(self.cfg.task), self.cfg.evaluation
        totals = [task.empty_sums() for _ in sets]
        auc_totals, auc_users = np.zeros(len(sets)), 0  # federation.vet_metric auc: sums over every voter's users
        counted: list = []  # per counted vote over users: its users, its sums and AUC sums of each candidate
        for silo in voters:
            if silo not in arrived:
                continue
            try:
                key = vote_key(server_round, silo)
                vote = Vote.from_json(self.exchange.read(key, self.roster.get(silo)), key)
                if vote.abstain and not vote.val:
                    log.info("round %d: silo %s abstains: %s", server_round, silo, vote.abstain)
                    continue
                if vote.round != server_round or vote.silo_id != silo or len(vote.val) != len(sets):
                    raise PayloadError(f"{key}: not silo {silo}'s vote on the {len(sets)} candidates of round "
                                       f"{server_round}")
                sums = [task.sums(v) for v in vote.val]
                if problem := _vote_problem(sums, self.n_train.get(silo, 0), self.cfg.task, vote.auc):
                    raise PayloadError(f"{key}: {problem}")
            except PayloadError as exc:
                log.warning("round %d: vote of silo %s not counted: %s", server_round, silo, exc)
                continue
            totals = [t + v for t, v in zip(totals, sums)]
            if vote.auc:
                auc_totals, auc_users = auc_totals + np.asarray(vote.auc), auc_users + sums[0].n
            if (users := getattr(sums[0], "n", 0) or 0) > 0:
                counted.append((users, sums, vote.auc))
        selection = task.selection(ev.selection_metric)
        if self.cfg.federation.vet_metric == "auc" and auc_users > 0:
            scores = [float(a) / auc_users for a in auc_totals]
            ballots = [(n, [float(a) / n for a in auc]) for n, _, auc in counted if auc]
        else:
            scores = [task.score(t.means(ev.k), selection, ev.k) for t in totals]
            ballots = [(n, [task.score(v.means(ev.k), selection, ev.k) for v in sums]) for n, sums, _ in counted]
        if (trim := self.cfg.federation.vote_trim) and len(ballots) > 2 * trim + 1:  # lying voters clipped
            shift = np.subtract(robust.pooled_scores(ballots, trim), robust.pooled_scores(ballots, 0))
            scores = [float(s + d) for s, d in zip(scores, shift)]
        chosen = robust.pick(scores, self.cfg.federation.vet_margin) if arrived else 0
        return combined[chosen], {f"candidate_{c}": s for c, s in enumerate(scores)}, opened

    def roll_back(self, base_round: int) -> None:
        """federation.guard_drop: the silos refused the last round's model; the next round starts again from round
        ``base_round``'s global model (read back from the exchange, where this coordinator signed it)."""
        restored = load_global(self.exchange, base_round, self.identity.public)
        self.state = self.state.replace(global_state=restored, base_round=base_round)

    def collect_metrics(self, server_round: int, silos: list[str]) -> tuple[list[MetricReport], dict[str, str]]:
        arrived = self.exchange.wait_all({s: metrics_key(server_round, s) for s in silos},
                                         timeout=self.cfg.federation.round_timeout_s, **self._timing)
        reports, failures, task = [], {}, objective(self.cfg.task)
        for silo in silos:
            if silo not in arrived:
                failures[silo] = "no metric sums in time"
                continue
            try:
                key = metrics_key(server_round, silo)
                report = MetricReport.from_json(self.exchange.read(key, self.roster.get(silo)), key)
                task.sums(report.val), task.sums(report.test)  # this run's task's sums, or refused by name
                if report.cold:  # cold-start items: HR/NDCG sums
                    objective("ranking").sums(report.cold)
                reports.append(report)
            except PayloadError as exc:
                failures[silo] = f"{key}: {exc}" if key not in str(exc) else str(exc)
        return reports, failures

    def stop(self, reason: str, last_round: int) -> None:
        """Tell every agent the run is over (idempotent)."""
        if not self.exchange.exists(STOP_KEY):
            with contextlib.suppress(ExchangeConflictError):  # another stop got there first
                self.exchange.post(STOP_KEY, Stop(reason=reason, last_round=last_round).to_json(), self.identity)
