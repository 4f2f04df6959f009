"""Small typed JSON messages that cross between the coordinator and the silos (besides tensor payloads).

Each message is a frozen dataclass with ``to_json`` / ``from_json``; a message that does not parse or
lacks a field raises :class:`~fedrec.core.errors.PayloadError`. None of them carries raw interactions,
user ids, embeddings or key material: only counts, verdicts, seconds, bytes and metric sums.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedrec.core.errors import PayloadError

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
    #: content hash of the interactions this run trains on (fedrec.silo.data.data_version): which data version
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


def _names(value: object, source: str, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
        raise PayloadError(f"{source}: {what} must be a list of distinct silo names")
    return value


def _is_hex(value: object, n_bytes: int) -> bool:
    if not isinstance(value, str) or len(value) != 2 * n_bytes:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class MaskKeys(Message):
    """A participant's round secrets, as far as they may be known (:mod:`fedrec.crypto.secagg`): the public
    half of its ephemeral mask key, a commitment to its self-mask seed, the shares' threshold, and one share of
    each secret per other participant, sealed to that participant (hex)."""

    silo_id: str
    round: int
    public: str
    commitment: str
    threshold: int
    shares: dict[str, str] = field(default_factory=dict)

    def _checked(self, source: str) -> "MaskKeys":
        if not (_is_hex(self.public, 32) and _is_hex(self.commitment, 32)):
            raise PayloadError(f"{source}: mask key or commitment is not 32 bytes of hex")
        if not isinstance(self.shares, dict) or not all(isinstance(v, str) for v in self.shares.values()):
            raise PayloadError(f"{source}: shares must map silo names to hex")
        if not isinstance(self.threshold, int) or self.threshold < 2:
            raise PayloadError(f"{source}: a share threshold of {self.threshold!r} (at least 2)")
        return self


@dataclass(frozen=True)
class MaskSet(Message):
    """The coordinator names the participants whose mask keys arrived: every update of the round is masked
    against exactly these silos."""

    round: int
    silos: list[str]

    def _checked(self, source: str) -> "MaskSet":
        _names(self.silos, source, "silos")
        return self


@dataclass(frozen=True)
class Unmask(Message):
    """After the updates' deadline: whose update is in the sum (``survivors``) and whose is not (``dropped``);
    each survivor reveals its shares of the survivors' self-masks and of the dropped silos' mask keys."""

    round: int
    survivors: list[str]
    dropped: list[str] = field(default_factory=list)

    def _checked(self, source: str) -> "Unmask":
        if set(_names(self.survivors, source, "survivors")) & set(_names(self.dropped, source, "dropped")):
            raise PayloadError(f"{source}: a silo both survived and dropped")
        return self


@dataclass(frozen=True)
class Reveal(Message):
    """A survivor's shares (point, value hex): of each survivor's self-mask seed, of each dropped silo's mask key."""

    silo_id: str
    round: int
    self_shares: dict[str, list] = field(default_factory=dict)
    key_shares: dict[str, list] = field(default_factory=dict)

    def _checked(self, source: str) -> "Reveal":
        if set(self.self_shares) & set(self.key_shares):
            raise PayloadError(f"{source}: reveals both secrets of {sorted(set(self.self_shares) & set(self.key_shares))}")
        for share in (*self.self_shares.values(), *self.key_shares.values()):
            if not (isinstance(share, list) and len(share) == 2 and isinstance(share[0], int)
                    and isinstance(share[1], str)):
                raise PayloadError(f"{source}: a share must be [point, hex value]")
        return self


@dataclass(frozen=True)
class DecryptRequest(Message):
    """The coordinator asks ``decryptor`` to decrypt round ``round``'s sum (attempt > 0: the previous decryptor is
    gone or silent)."""

    round: int
    attempt: int
    decryptor: str


@dataclass(frozen=True)
class Verdict(Message):
    """A decryptor could not open the round's sum: why, and which silos' updates were not valid encodings (their
    dropout; empty when nobody can be named). The round is skipped."""

    round: int
    attempt: int
    decryptor: str
    reason: str
    culprits: dict[str, str] = field(default_factory=dict)


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
    #: cold-start items (fedrec.core.coldstart): the same sums for each user's held-out cold item; None: none held out
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
