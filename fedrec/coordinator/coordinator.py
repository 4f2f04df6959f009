"""The coordinator's side of a federation run, as plain Python over the exchange.

It holds the run's public HE context (no secret key: it cannot decrypt), the global item tower, the
strategy and its state. It never opens a silo's data or key directory: everything it knows about a
silo arrived on the exchange (hello, fit report, ciphertext update, metric sums).

    admit ─► public context ─► global(0) ─► per round: instructions ─► collect updates (deadline) ─►
    add ciphertexts ─► key holder's mean ─► strategy step ─► global(r) ─► [collect metric sums]
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from fedrec.config import Config
from fedrec.coordinator.strategy import ServerState, build_strategy
from fedrec.crypto import CKKSCodec, Codec, PlainCodec
from fedrec.errors import FederationError, PayloadError
from fedrec.federation.filters import (AggregateResult, aggregate_updates, decode_mean, decrypt_aggregate,
                                       encode_global, update_problems)
from fedrec.training import model_config
from fedrec.wire.exchange import (ADMISSION_KEY, PUBLIC_CONTEXT_KEY, STOP_KEY, aggregate_key, fit_report_key,
                                  global_key, hello_key, instruction_key, left_key, mean_key, metrics_key,
                                  no_aggregate_key, run_exchange, update_key)
from fedrec.wire.messages import Admission, FitReport, Hello, Left, MetricReport, Stop
from fedrec.wire.payload import EncryptedUpdate
from models import build_model


@dataclass(frozen=True)
class Collected:
    """What arrived for one round: well-formed updates, their reports, and why the others are missing."""

    updates: list[EncryptedUpdate]
    reports: dict[str, FitReport]
    failures: dict[str, str]


class Coordinator:
    """One federation run at the coordinator (see the module docstring)."""

    def __init__(self, cfg: Config, run_id: str, n_items: int, *,
                 gone: Callable[[], set[str]] | None = None):
        self.cfg, self.run_id, self.n_items = cfg, run_id, n_items
        self.exchange = run_exchange(cfg, run_id)
        self.strategy = build_strategy(cfg.federation)
        self.server_state = ServerState()
        self._launcher_gone = gone or (lambda: set())  # silos whose agent's process or flow run ended
        self._left: dict[str, str] = {}
        self._roster: list[str] = []
        self._left_checked = 0.0
        self.codec: Codec | None = None
        self.admission: Admission | None = None
        self.global_state: dict[str, torch.Tensor] | None = None

    def __repr__(self) -> str:
        return f"Coordinator(run={self.run_id!r})"

    def gone(self) -> set[str]:
        """Silos known to have stopped: their process or flow run ended, or they left a ``left.json``
        (looked up at most twice a second)."""
        if time.monotonic() - self._left_checked > 0.5:
            self._left_checked = time.monotonic()
            for silo in (self.admission.silos if self.admission is not None else self._roster):
                if silo not in self._left and self.exchange.exists(left_key(silo)):
                    try:
                        self._left[silo] = Left.from_json(self.exchange.get(left_key(silo)), left_key(silo)).reason
                    except PayloadError as exc:
                        self._left[silo] = str(exc)
        return self._launcher_gone() | set(self._left)

    def why_gone(self, silo: str) -> str:
        return f"its agent left the run ({self._left[silo]})" if silo in self._left else "its agent ended"

    @property
    def _timing(self) -> dict:
        return {"poll": self.cfg.federation.poll_interval_s, "gone": self.gone}

    def admit(self, roster: list[str]) -> Admission:
        """Silos whose hello arrived in time with a passing validation; the first of them holds the HE key."""
        fed = self.cfg.federation
        self._roster = list(roster)
        arrived = self.exchange.wait_all({s: hello_key(s) for s in roster}, timeout=fed.join_timeout_s,
                                         **self._timing)
        admitted, excluded = [], {}
        for silo in roster:
            if silo not in arrived:
                excluded[silo] = (f"{self.why_gone(silo)} before joining" if silo in self.gone()
                                  else f"did not join within {fed.join_timeout_s:.0f}s")
                continue
            try:
                hello = Hello.from_json(self.exchange.get(hello_key(silo)), hello_key(silo))
            except PayloadError as exc:
                excluded[silo] = str(exc)
                continue
            if hello.silo_id != silo:
                excluded[silo] = f"hello claims to be silo {hello.silo_id!r}"
            elif not hello.valid:
                excluded[silo] = "data validation failed: " + "; ".join(hello.failures)
            else:
                admitted.append(silo)
        if len(admitted) < fed.min_silos:
            self.stop(f"only {len(admitted)} silo(s) admitted", 0)
            raise FederationError(f"only {len(admitted)} silo(s) passed validation and joined but "
                                  f"federation.min_silos={fed.min_silos}; left out: {excluded}")
        self.admission = Admission(silos=sorted(admitted), excluded=excluded, key_holder=sorted(admitted)[0],
                                   he=fed.he)
        self.exchange.put(ADMISSION_KEY, self.admission.to_json())
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
        self.codec = CKKSCodec(self.exchange.get(PUBLIC_CONTEXT_KEY), self.cfg.crypto.poly_modulus_degree // 2)
        if self.codec.can_decrypt:
            raise PayloadError("the published HE context contains a secret key: refusing to run with it")
        return self.codec.context_id

    def init_global(self) -> int:
        """Round-0 global item tower from the federation seed; returns its parameter count."""
        model = build_model(model_config(self.cfg.model, 1, self.n_items),
                            torch.Generator().manual_seed(self.cfg.federation.seed))
        self.global_state = model.shared_state()
        self.exchange.put(global_key(0), encode_global(self.global_state, 0).to_bytes())
        return sum(t.numel() for t in self.global_state.values())

    def start_round(self, server_round: int, evaluate: bool) -> list[str]:
        """Instructions for every admitted silo that is still around; returns them."""
        silos = [s for s in self.admission.silos if s not in self.gone()]
        for silo, ins in self.strategy.configure_fit(server_round, silos).items():
            ins = dataclasses.replace(ins, silos=silos, evaluate=evaluate)
            self.exchange.put(instruction_key(server_round, silo), ins.to_json())
        return silos

    def collect_updates(self, server_round: int, silos: list[str]) -> Collected:
        """Updates that arrive before the round's deadline; a late, missing or malformed one is a failure."""
        fed = self.cfg.federation
        arrived = self.exchange.wait_all({s: update_key(server_round, s) for s in silos},
                                         timeout=fed.round_timeout_s, **self._timing)
        updates, reports, failures = [], {}, {}
        for silo in silos:
            if silo not in arrived:
                failures[silo] = (self.why_gone(silo) if silo in self.gone()
                                  else f"no update within {fed.round_timeout_s:.0f}s")
                continue
            try:
                key = update_key(server_round, silo)
                update = EncryptedUpdate.from_bytes(self.exchange.get(key), expect_kind="update", source=key)
                problems = update_problems(update, self.codec, server_round, updates[0] if updates else None)
                if update.silo_id != silo:
                    problems.append(f"claims to be from silo {update.silo_id!r}")
                if problems:
                    raise PayloadError(f"{key} refused: " + ", ".join(problems))
                report_key = fit_report_key(server_round, silo)
                reports[silo] = FitReport.from_json(self.exchange.get(report_key), report_key)
                updates.append(update)
            except PayloadError as exc:
                failures[silo] = str(exc)
        return Collected(updates, reports, failures)

    def aggregate(self, server_round: int, updates: list[EncryptedUpdate]) -> EncryptedUpdate | None:
        """Add the ciphertexts (no decryption here) and publish the sum for the key holder."""
        if not updates:
            self.exchange.put(no_aggregate_key(server_round), b"{}")
            return None
        aggregate = aggregate_updates(updates, self.codec, server_round)
        self.exchange.put(aggregate_key(server_round), aggregate.to_bytes())
        return aggregate

    def mean(self, server_round: int, aggregate: EncryptedUpdate | None) -> AggregateResult | None:
        """The round's mean update: decrypted by the key holder (HE), or computed here (plaintext)."""
        if aggregate is None:
            return None
        if not self.cfg.federation.he:
            return decrypt_aggregate(aggregate, self.codec)
        key = mean_key(server_round)
        found = self.exchange.wait_any([key], timeout=self.cfg.federation.round_timeout_s,
                                       poll=self.cfg.federation.poll_interval_s,
                                       give_up=lambda: self.admission.key_holder in self.gone())
        if found is None:
            raise FederationError(f"round {server_round}: key holder {self.admission.key_holder} did not "
                                  "publish the decrypted mean in time")
        result = decode_mean(EncryptedUpdate.from_bytes(self.exchange.get(key), expect_kind="mean", source=key),
                             server_round)
        if result.contributors != aggregate.contributors or result.total_samples != aggregate.n_samples:
            raise PayloadError(f"{key}: the mean is not of this round's aggregate")
        return result

    def step(self, server_round: int, result: AggregateResult | None, failures: dict[str, str]) -> bool:
        """Strategy step; publishes global(r) (unchanged when the strategy keeps the model). True if moved."""
        new_state, self.server_state = self.strategy.aggregate_fit(
            server_round, self.global_state, result, sorted(failures.items()), self.server_state)
        if new_state is not None:
            self.global_state = new_state
        self.exchange.put(global_key(server_round), encode_global(self.global_state, server_round).to_bytes())
        self._checkpoint(server_round)
        return new_state is not None

    def _checkpoint(self, server_round: int) -> None:
        """Strategy state with the coordinator, not in any silo's store."""
        path = Path(self.cfg.federation.state_dir) / "coordinator" / self.run_id / "server_state.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"round": server_round, "momentum": self.server_state.momentum}, tmp)
        tmp.replace(path)

    def collect_metrics(self, server_round: int, silos: list[str]) -> tuple[list[MetricReport], dict[str, str]]:
        arrived = self.exchange.wait_all({s: metrics_key(server_round, s) for s in silos},
                                         timeout=self.cfg.federation.round_timeout_s, **self._timing)
        reports, failures = [], {}
        for silo in silos:
            if silo not in arrived:
                failures[silo] = "no metric sums in time"
                continue
            try:
                reports.append(MetricReport.from_json(self.exchange.get(metrics_key(server_round, silo)),
                                                      metrics_key(server_round, silo)))
            except PayloadError as exc:
                failures[silo] = str(exc)
        return reports, failures

    def stop(self, reason: str, last_round: int) -> None:
        """Tell every agent the run is over (idempotent)."""
        if not self.exchange.exists(STOP_KEY):
            self.exchange.put(STOP_KEY, Stop(reason=reason, last_round=last_round).to_json())
