"""Small typed JSON messages that cross between the coordinator and the silos (besides tensor payloads).

Each message is a frozen dataclass with ``to_json`` / ``from_json``; a message that does not parse or
lacks a field raises :class:`~fedrec.errors.PayloadError`. None of them carries raw interactions,
user ids, embeddings or key material: only counts, verdicts, seconds, bytes and metric sums.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedrec.errors import PayloadError

M = TypeVar("M", bound="Message")


def json_object(data: bytes, source: str, error: type[PayloadError] = PayloadError) -> dict:
    """``data`` parsed as one JSON object, else ``error`` naming ``source``."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise error(f"{source}: not JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise error(f"{source}: expected a JSON object")
    return raw


class Message:
    """Base: JSON serialisation with field checking on receipt."""

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls: type[M], data: bytes, source: str = "message") -> M:
        raw = json_object(data, source)
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        if missing := required - set(raw):
            raise PayloadError(f"{source}: {cls.__name__} lacks {sorted(missing)}")
        try:
            return cls(**{k: v for k, v in raw.items() if k in names})._checked(source)
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"{source}: malformed {cls.__name__} ({exc})") from exc

    def _checked(self: M, source: str) -> M:
        return self


@dataclass(frozen=True)
class Hello(Message):
    """A silo joins a federation run: its validation verdict and sizes (no examples of bad rows)."""

    silo_id: str
    valid: bool
    n_rows: int
    n_users: int
    n_train: int
    failures: list[str] = field(default_factory=list)
    #: the silo's public identity (name, Ed25519 and X25519 public keys); the hello is signed with it
    identity: dict[str, str] = field(default_factory=dict)
    #: content hash of the interactions this run trains on (fedrec.pipeline.data_version): which data version
    data_version: str = ""

    def _checked(self, source: str) -> "Hello":
        if min(self.n_rows, self.n_users, self.n_train) < 0 or self.n_train > self.n_rows:
            raise PayloadError(f"{source}: implausible sizes (rows {self.n_rows}, users {self.n_users}, "
                               f"train {self.n_train})")
        return self


@dataclass(frozen=True)
class Admission(Message):
    """The coordinator's decision: who takes part, who makes the HE keys, everyone's public keys."""

    silos: list[str]
    excluded: dict[str, str]
    key_holder: str
    he: bool
    #: public identities of the coordinator and the admitted silos (party name -> name/sign/kx)
    roster: dict[str, dict[str, str]] = field(default_factory=dict)
    masking: bool = True


@dataclass(frozen=True)
class FitInstructions(Message):
    """What a silo is told to do in a round; ``evaluate``: also evaluate the round's global model."""

    round: int
    local_epochs: int
    proximal_mu: float = 0.0
    silos: list[str] = field(default_factory=list)
    evaluate: bool = False
    #: the silo that decrypts this round's sum (the key holder while it is around)
    decryptor: str = ""
    #: the participants' declared samples: each silo weights its update by n_samples / total_samples
    total_samples: int = 0

    def _checked(self, source: str) -> "FitInstructions":
        if self.round < 1 or self.local_epochs < 1:
            raise PayloadError(f"{source}: round {self.round} / local_epochs {self.local_epochs} out of range")
        return self


@dataclass(frozen=True)
class Remask(Message):
    """Some participants of a round dropped out after the set was fixed: the survivors mask and send again."""

    round: int
    attempt: int
    silos: list[str]
    #: the survivors' declared samples (the weights' new denominator)
    total_samples: int = 0


@dataclass(frozen=True)
class FitReport(Message):
    """A silo's bookkeeping for one round (its update travels separately, encrypted)."""

    silo_id: str
    round: int
    n_samples: int
    loss: float
    seconds_train: float
    seconds_encrypt: float
    bytes_sent: int
    plaintext_bytes: int


@dataclass(frozen=True)
class MetricReport(Message):
    """Sums over a silo's users of HR/NDCG (sampled and full) for the validation and test items."""

    silo_id: str
    round: int
    val: dict[str, Any]
    test: dict[str, Any]
    seconds: float = 0.0
    #: cold-start items (fedrec.coldstart): the same sums for each user's held-out cold item; None: none held out
    cold: dict[str, Any] | None = None


@dataclass(frozen=True)
class Stop(Message):
    """The federation run is over (``reason``: finished, or why it stopped); agents exit."""

    reason: str
    last_round: int


@dataclass(frozen=True)
class Left(Message):
    """A silo agent stopped before the end of the run; ``reason`` names the error (no data)."""

    silo_id: str
    after_round: int
    reason: str
