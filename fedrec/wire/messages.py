"""Small typed JSON messages that cross between the coordinator and the silos (besides tensor payloads).

Each message is a frozen dataclass with ``to_json`` / ``from_json``. ``from_json`` checks what a party reads from
the exchange against the fields' declared types at the boundary (pydantic, strict: an integer is a JSON integer, not
``"3"``, ``3.0`` or ``true``; a number may be an integer; lists, objects and their items as declared; unknown fields
are ignored). A message that does not parse, lacks a field or holds a field of the wrong type raises
:class:`~fedrec.core.errors.PayloadError` naming the source and the field, never the value (some fields hold sealed
shares). None of them carries raw interactions, user ids, embeddings or key material: only counts, verdicts,
seconds, bytes and metric sums.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError

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


#: what a JSON value of each Python type is called in errors (the type, never the value)
_JSON_NAMES = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "dict", type(None): "null"}
#: what a field must be, by pydantic's error type
_EXPECTED = {"int_type": "an integer", "float_type": "a number", "string_type": "a string", "bool_type": "a boolean",
             "list_type": "a list", "dict_type": "an object", "none_required": "null"}


@functools.cache
def _field_types(cls: type) -> dict[str, TypeAdapter]:
    """One strict validator per declared field of message class ``cls`` (built once)."""
    hints = typing.get_type_hints(cls)
    return {f.name: TypeAdapter(hints[f.name]) for f in dataclasses.fields(cls)}


def _path(name: str, value: object, loc: tuple) -> str:
    """The field and, inside it, the item an error is at (``roster[a][sign]``, ``failures[2]``): ``loc`` walked
    through ``value`` so that pydantic's tags of union members (``int``, ``float``) drop out. Keys are shown
    escaped and cut short; values never."""
    path = name
    for step in loc:
        if isinstance(value, dict) and isinstance(step, str) and step in value:
            path, value = path + f"[{ascii(step)[1:-1][:32]}]", value[step]
        elif isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value):
            path, value = path + f"[{step}]", value[step]
    return path


def _type_error(source: str, name: str, value: object, exc: ValidationError) -> PayloadError:
    """``exc`` as a PayloadError naming the source, the field (and item) and the types wanted and found."""
    errors = exc.errors(include_url=False, include_context=False, include_input=True)
    first = errors[0]
    at = [e for e in errors if _path(name, value, e["loc"]) == _path(name, value, first["loc"])]
    wanted = list(dict.fromkeys(_EXPECTED.get(e["type"], "of the declared type") for e in at))
    if "an integer" in wanted and "a number" in wanted:
        wanted.remove("an integer")
    got = _JSON_NAMES.get(type(first.get("input")), type(first.get("input")).__name__)
    return PayloadError(f"{source}: field '{_path(name, value, first['loc'])}' must be {' or '.join(wanted)}, "
                        f"got {got}")


class Message:
    """Base: JSON serialisation with field and type checking on receipt."""

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls: type[M], data: bytes, source: str = "message") -> M:
        raw = json_object(data, source)
        types = _field_types(cls)
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        if missing := required - set(raw):
            raise PayloadError(f"{source}: {cls.__name__} lacks {sorted(missing)}")
        values = {}
        for name, value in raw.items():
            if name not in types:
                continue  # unknown fields are ignored
            try:
                values[name] = types[name].validate_python(value, strict=True)
            except ValidationError as exc:
                raise _type_error(source, name, value, exc) from None  # the cause would echo the value
        try:
            return cls(**values)._checked(source)
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
    #: federation.groups: which of the round's secure sums this silo's update joins (``silos``, ``decryptor`` and
    #: ``total_samples`` are then that group's)
    group: int = 0
    #: the round whose global model this round trains from (-1: the previous round; federation.guard_drop: an
    #: earlier one when the previous round was refused and rolled back)
    base_round: int = -1

    def _checked(self, source: str) -> "FitInstructions":
        if (self.round < 1 or self.local_epochs < 1 or not isinstance(self.group, int) or self.group < 0
                or not isinstance(self.base_round, int) or not -1 <= self.base_round < self.round):
            raise PayloadError(f"{source}: round {self.round} / local_epochs {self.local_epochs} / group {self.group!r} "
                               "out of range")
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
        if self.threshold < 2:
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
    self_shares: dict[str, list[int | str]] = field(default_factory=dict)
    key_shares: dict[str, list[int | str]] = field(default_factory=dict)

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
    #: CPU seconds of the thread that trained (torch's intra-op threads beyond it not counted: silo hosts run one)
    cpu_train: float = 0.0

    def _checked(self, source: str) -> "FitReport":
        counts = (self.n_samples, self.bytes_sent, self.plaintext_bytes)
        figures = (self.loss, self.seconds_train, self.seconds_encrypt, self.cpu_train)
        if min(counts) < 0 or not all(math.isfinite(x) for x in figures) or min(figures[1:]) < 0:
            raise PayloadError(f"{source}: implausible bookkeeping (counts {counts}, loss and seconds {figures}): "
                               "a count or a time below zero, or a figure that is not a finite number")
        return self


@dataclass(frozen=True)
class MetricReport(Message):
    """Sums over a silo's users of HR/NDCG (sampled and full) for the validation and test items."""

    silo_id: str
    round: int
    val: dict[str, int | float]
    test: dict[str, int | float]
    seconds: float = 0.0
    #: cold-start items (fedrec.core.coldstart): the same sums for each user's held-out cold item; None: none held out
    cold: dict[str, int | float] | None = None
    #: federation.guard_drop: this silo refuses the round's model (it harms its own validation users beyond the bound)
    refuse: bool = False


#: the most candidate models one vetting may ask a silo to score (every group, and each left out: groups + 1)
MAX_CANDIDATES = 65


@dataclass(frozen=True)
class VetRequest(Message):
    """federation.robust_rule vetted: round ``round``'s candidate global models are on the exchange
    (``candidate_key(round, c)`` for c < ``candidates``); each silo scores them on its own validation users."""

    round: int
    candidates: int

    def _checked(self, source: str) -> "VetRequest":
        if not 2 <= self.candidates <= MAX_CANDIDATES:
            raise PayloadError(f"{source}: {self.candidates} candidates (2..{MAX_CANDIDATES})")
        return self


@dataclass(frozen=True)
class Vote(Message):
    """A silo's validation sums (as in :class:`MetricReport`) for each candidate model of a vetted round: sums over
    its users, like its metric report, never one user's."""

    silo_id: str
    round: int
    val: list[dict[str, int | float]]
    #: federation.vet_metric auc (ranking): per candidate, the sum over its users of the share of sampled negatives
    #: scored below the validation item; empty otherwise
    auc: list[float] = field(default_factory=list)
    #: an abstention (``val`` empty): why this silo scores nothing this round (nobody waits for its vote)
    abstain: str = ""

    def _checked(self, source: str) -> "Vote":
        if self.abstain and not self.val:
            return self
        if not 1 <= len(self.val) <= MAX_CANDIDATES:
            raise PayloadError(f"{source}: {len(self.val)} candidate scores (1..{MAX_CANDIDATES})")
        if self.auc and len(self.auc) != len(self.val):
            raise PayloadError(f"{source}: {len(self.auc)} AUC sums for {len(self.val)} candidates")
        return self


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
