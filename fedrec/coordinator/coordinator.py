"""The coordinator's side of a federation run, as plain Python over the exchange.

It holds its own signing identity, the run's public HE context (no secret key: it cannot decrypt), the
global item tower, the strategy and its state. It never opens a silo's data or key directory: everything it
knows about a silo arrived on the exchange (hello, fit report, masked ciphertext update, metric sums), signed
by that silo and verified against the roster; everything it writes is signed with its own key.

    admit (roster) ─► public context ─► global(0) ─► per round: instructions ─► collect updates (deadline;
    a dropout after the set was fixed: the survivors remask) ─► add ciphertexts ─► decryptor's mean ─►
    strategy step ─► global(r) ─► [collect metric sums]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from fedrec.config import Config
from fedrec.coordinator.strategy import ServerState, build_strategy
from fedrec.crypto import CKKSCodec, Codec, PlainCodec, value_limit
from fedrec.errors import FederationError, PayloadError
from fedrec.federation.aggregate import layout_of
from fedrec.federation.filters import (AggregateResult, aggregate_updates, decode_mean, decrypt_aggregate,
                                       encode_global, update_problems)
from fedrec.training import model_config
from fedrec.trust import COORDINATOR, Identity, PublicIdentity, Roster, RosterError, peek_envelope
from fedrec.wire.exchange import (ADMISSION_KEY, COORDINATOR_KEY, PUBLIC_CONTEXT_KEY, STOP_KEY,
                                  ExchangeConflictError, aggregate_key, fit_report_key, global_key, hello_key,
                                  instruction_key, left_key, mean_key, metrics_key, no_aggregate_key, remask_key,
                                  run_exchange, update_key)
from fedrec.wire.messages import Admission, FitInstructions, FitReport, Hello, Left, MetricReport, Remask, Stop
from fedrec.wire.payload import EncryptedUpdate
from models import build_model
from fedrec.item_text import model_features  # the hybrid model's (public) item text embeddings


def checkpoint_file(cfg: Config, run_id: str) -> Path:
    """Where the coordinator checkpoints run ``run_id`` after each round."""
    return Path(cfg.federation.state_dir) / "coordinator" / run_id / "checkpoint.pt"


def checkpoint_extra(cfg: Config, run_id: str) -> dict | None:
    """What the last checkpoint of run ``run_id`` carries besides the model (history, MLflow run), or None."""
    path = checkpoint_file(cfg, run_id)
    return torch.load(path, weights_only=False)["extra"] if path.exists() else None


@dataclass(frozen=True)
class Collected:
    """What arrived for one round: well-formed updates, their reports, and why the others are missing."""

    updates: list[EncryptedUpdate]
    reports: dict[str, FitReport]
    failures: dict[str, str]
    attempts: int = 1


class Coordinator:
    """One federation run at the coordinator (see the module docstring)."""

    def __init__(self, cfg: Config, run_id: str, n_items: int, *,
                 gone: Callable[[], set[str]] | None = None):
        self.cfg, self.run_id, self.n_items = cfg, run_id, n_items
        self.exchange = run_exchange(cfg, run_id)
        self.state_dir = Path(cfg.federation.state_dir) / "coordinator"
        self.identity = Identity.load_or_create(self.state_dir / "identity", COORDINATOR)
        self.roster = Roster({COORDINATOR: self.identity.public})
        self.n_train: dict[str, int] = {}  # as each admitted silo declared it in its signed hello
        self.data_versions: dict[str, str] = {}  # each admitted silo's data version (content hash) this run
        self.decryptors: dict[int, str] = {}
        self.strategy = build_strategy(cfg.federation)
        self.server_state = ServerState()
        self._launcher_gone = gone or (lambda: set())  # silos whose agent's process or flow run ended
        self._left: dict[str, str] = {}
        self._invited: list[str] = []  # the silos asked to join, until the admission names who did
        self._left_checked = 0.0
        self.codec: Codec | None = None
        self.admission: Admission | None = None
        self.global_state: dict[str, torch.Tensor] | None = None

    def __repr__(self) -> str:
        return f"Coordinator(run={self.run_id!r})"

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

    def save_checkpoint(self, server_round: int, extra: dict) -> None:
        """Everything needed to resume after ``server_round``, written atomically (temporary file, rename): the
        global model, the strategy's state, the silos' declared sizes and ``extra`` (history, MLflow run)."""
        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"round": server_round, "global_state": self.global_state,
                    "momentum": self.server_state.momentum, "n_train": self.n_train, "extra": extra}, tmp)
        tmp.replace(path)

    def restore(self) -> tuple[int, dict] | None:
        """Resume this run after a crash: its admission, public context, global model and strategy state as of
        the last checkpointed round. Returns (round, extra), or None when the run has no checkpoint."""
        if not self.checkpoint_path.exists():
            return None
        saved = torch.load(self.checkpoint_path, weights_only=False)
        self.admission = Admission.from_json(self.exchange.read(ADMISSION_KEY, self.identity.public), ADMISSION_KEY)
        self.roster = Roster.from_dict(self.admission.roster, ADMISSION_KEY)
        self.n_train = dict(saved["n_train"])
        self.open_context()
        self.global_state = saved["global_state"]
        self.server_state = ServerState(momentum=saved["momentum"])
        return int(saved["round"]), saved["extra"]

    def gone(self) -> set[str]:
        """Silos known to have stopped: their process or flow run ended, or they left a ``left.json``
        (looked up at most twice a second)."""
        if time.monotonic() - self._left_checked > 0.5:
            self._left_checked = time.monotonic()
            for silo in (self.admission.silos if self.admission is not None else self._invited):
                if silo not in self._left and silo in self.roster and self.exchange.exists(left_key(silo)):
                    try:
                        self._left[silo] = Left.from_json(self.exchange.read(left_key(silo), self.roster.get(silo)),
                                                          left_key(silo)).reason
                    except PayloadError as exc:  # a forged "left" does not remove a silo, but is noted
                        self._left[silo] = f"unverifiable left.json ({exc})"
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
                self.n_train[silo] = hello.n_users if self.cfg.privacy.enabled else hello.n_train
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
        self.codec = CKKSCodec(self.exchange.read(PUBLIC_CONTEXT_KEY, self.roster.get(self.admission.key_holder)),
                               self.cfg.crypto.poly_modulus_degree // 2)
        if self.codec.can_decrypt:
            raise PayloadError("the published HE context contains a secret key: refusing to run with it")
        return self.codec.context_id

    def init_global(self) -> int:
        """Round-0 global item tower from the federation seed; returns its parameter count."""
        model = build_model(model_config(self.cfg.model, 1, self.n_items, task=self.cfg.task,
                                         item_features=model_features(self.cfg)),  # hybrid: public item text
                            torch.Generator().manual_seed(self.cfg.federation.seed))
        self.global_state = model.shared_state()
        self.exchange.post(global_key(0), encode_global(self.global_state, 0).to_bytes(), self.identity)
        return sum(t.numel() for t in self.global_state.values())

    def decryptor(self) -> str:
        """Who decrypts this round's sum: the key holder while it is around, else the first admitted silo
        still around (every admitted silo received the secret context, sealed to it)."""
        if not self.cfg.federation.he:
            return ""
        gone = self.gone()
        alive = [s for s in self.admission.silos if s not in gone]
        return self.admission.key_holder if self.admission.key_holder in alive else (alive[0] if alive else "")

    def start_round(self, server_round: int, evaluate: bool) -> list[str]:
        """Instructions for every admitted silo that is still around (they fix the round's participant set,
        which the masks are made for); returns them. A resumed run reuses the round's instructions if it had
        sent them before its crash."""
        for silo in self.admission.silos:
            if self.exchange.exists(instruction_key(server_round, silo)):
                key = instruction_key(server_round, silo)
                sent = FitInstructions.from_json(self.exchange.read(key, self.identity.public), key)
                self.decryptors[server_round] = sent.decryptor
                return list(sent.silos)
        silos = [s for s in self.admission.silos if s not in self.gone()]
        self.decryptors[server_round] = self.decryptor()
        for silo, ins in self.strategy.configure_fit(server_round, silos).items():
            ins = dataclasses.replace(ins, silos=silos, evaluate=evaluate, decryptor=self.decryptors[server_round],
                                      total_samples=self.total_samples(silos))
            self._post(instruction_key(server_round, silo), ins.to_json())
        return silos

    def total_samples(self, silos: list[str]) -> int:
        """The samples ``silos`` declared when they joined: the denominator of their updates' weights."""
        return sum(self.n_train[s] for s in silos)

    def _verified_update(self, server_round: int, silo: str, attempt: int, layout,
                         participants: list[str]) -> EncryptedUpdate:
        key = update_key(server_round, silo, attempt)
        update = EncryptedUpdate.from_bytes(self.exchange.read(key, self.roster.get(silo)), expect_kind="update",
                                            source=key)
        problems = update_problems(update, self.codec, server_round, self.cfg.crypto, layout, self.n_train.get(silo),
                                   self.total_samples(participants))
        if update.silo_id != silo:
            problems.append(f"claims to be from silo {update.silo_id!r}")
        if problems:
            raise PayloadError(f"{key} refused: " + ", ".join(problems))
        return update

    def collect_updates(self, server_round: int, silos: list[str]) -> Collected:
        """Updates that arrive before the round's deadline, each verified (signature, round, context, layout,
        encoding, declared n_samples); a late, missing, forged or malformed one is that silo's failure. With
        masks, the others' masks only cancel with everyone's update in the sum: when some are missing, the
        survivors are named and mask again among themselves (while at least ``min_silos`` remain)."""
        fed = self.cfg.federation
        layout = layout_of(self.global_state)
        participants, attempt = list(silos), 0
        updates: dict[str, EncryptedUpdate] = {}
        reports: dict[str, FitReport] = {}
        failures: dict[str, str] = {}
        while True:
            arrived = self.exchange.wait_all({s: update_key(server_round, s, attempt) for s in participants},
                                             timeout=fed.round_timeout_s, **self._timing)
            # a silo posts its report right after its update: wait for it too (reading it at once would race)
            self.exchange.wait_all({s: fit_report_key(server_round, s) for s in arrived if s not in reports},
                                   timeout=min(30.0, fed.round_timeout_s), **self._timing)
            updates = {}
            for silo in participants:
                if silo not in arrived:
                    failures[silo] = (self.why_gone(silo) if silo in self.gone()
                                      else f"no update within {fed.round_timeout_s:.0f}s"
                                      + (f" (remask attempt {attempt})" if attempt else ""))
                    continue
                try:
                    updates[silo] = self._verified_update(server_round, silo, attempt, layout, participants)
                    if silo not in reports:
                        report_key = fit_report_key(server_round, silo)
                        reports[silo] = FitReport.from_json(self.exchange.read(report_key, self.roster.get(silo)),
                                                            report_key)
                except PayloadError as exc:
                    failures[silo] = str(exc)
                    updates.pop(silo, None)
            if not fed.masking or len(updates) == len(participants) or len(updates) < fed.min_silos:
                break
            attempt += 1
            participants = sorted(updates)
            posted = self._post(remask_key(server_round, attempt),
                                Remask(round=server_round, attempt=attempt, silos=participants,
                                       total_samples=self.total_samples(participants)).to_json())
            participants = Remask.from_json(posted, remask_key(server_round, attempt)).silos  # a resumed run's
        if len(updates) < fed.min_silos:
            for silo in updates:
                failures[silo] = (f"round skipped: {len(updates)} valid update(s), fewer than "
                                  f"federation.min_silos={fed.min_silos}")
            updates = {}
        reports = {s: r for s, r in reports.items() if s in updates}
        return Collected([updates[s] for s in sorted(updates)], reports, failures, attempt + 1)

    def aggregate(self, server_round: int, updates: list[EncryptedUpdate]) -> EncryptedUpdate | None:
        """Add the ciphertexts (no decryption here) and publish the sum for the key holder."""
        if not updates:
            self._post(no_aggregate_key(server_round), b"{}")
            return None
        aggregate = aggregate_updates(updates, self.codec, server_round, self.cfg.crypto)
        posted = self._post(aggregate_key(server_round), aggregate.to_bytes())
        return EncryptedUpdate.from_bytes(posted, expect_kind="aggregate", source=aggregate_key(server_round))

    def mean(self, server_round: int, aggregate: EncryptedUpdate | None) -> AggregateResult | None:
        """The round's mean update: decrypted by the round's decryptor (HE), or computed here (plaintext)."""
        if aggregate is None:
            return None
        if not self.cfg.federation.he:
            return decrypt_aggregate(aggregate, self.codec)
        key, decryptor = mean_key(server_round), self.decryptors[server_round]
        found = self.exchange.wait_any([key], timeout=self.cfg.federation.round_timeout_s,
                                       poll=self.cfg.federation.poll_interval_s,
                                       give_up=lambda: decryptor in self.gone())
        if found is None:
            raise FederationError(f"round {server_round}: decryptor {decryptor} did not publish the decrypted mean "
                                  "in time")
        result = decode_mean(EncryptedUpdate.from_bytes(self.exchange.read(key, self.roster.get(decryptor)),
                                                        expect_kind="mean", source=key), server_round)
        if result.contributors != aggregate.contributors or result.total_samples != aggregate.n_samples:
            raise PayloadError(f"{key}: the mean is not of this round's aggregate")
        return result

    def step(self, server_round: int, result: AggregateResult | None, failures: dict[str, str]) -> bool:
        """Strategy step; publishes global(r) (unchanged when the strategy keeps the model). True if moved."""
        new_state, self.server_state = self.strategy.aggregate_fit(
            server_round, self.global_state, result, sorted(failures.items()), self.server_state)
        if new_state is not None:
            self.global_state = new_state
        payload = encode_global(self.global_state, server_round).to_bytes()
        if self._post(global_key(server_round), payload) != payload:  # a resumed round must agree
            raise FederationError(f"round {server_round}: the global model on the exchange differs from the one "
                                  "recomputed on resume; the run's exchange or checkpoint was changed")
        return new_state is not None

    def collect_metrics(self, server_round: int, silos: list[str]) -> tuple[list[MetricReport], dict[str, str]]:
        arrived = self.exchange.wait_all({s: metrics_key(server_round, s) for s in silos},
                                         timeout=self.cfg.federation.round_timeout_s, **self._timing)
        reports, failures = [], {}
        for silo in silos:
            if silo not in arrived:
                failures[silo] = "no metric sums in time"
                continue
            try:
                key = metrics_key(server_round, silo)
                reports.append(MetricReport.from_json(self.exchange.read(key, self.roster.get(silo)), key))
            except PayloadError as exc:
                failures[silo] = str(exc)
        return reports, failures

    def stop(self, reason: str, last_round: int) -> None:
        """Tell every agent the run is over (idempotent)."""
        if not self.exchange.exists(STOP_KEY):
            with contextlib.suppress(ExchangeConflictError):  # another stop got there first
                self.exchange.post(STOP_KEY, Stop(reason=reason, last_round=last_round).to_json(), self.identity)
