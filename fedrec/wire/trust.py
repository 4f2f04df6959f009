"""Who is who in a federation run: long-term identities, the roster, signed envelopes and sealed blobs.

Every party (each silo, the coordinator) makes its own key pairs where it runs and keeps the private
halves in its own directory (0600 in a 0700 directory); only public keys leave it:

- Ed25519 signs everything a party writes to the exchange (:func:`seal_envelope` / :func:`open_envelope`):
  the signature covers the run, the exchange key, the author and the SHA-256 of the body, so a payload
  cannot be forged, altered, replayed under another key or run, or attributed to another party;
- X25519 agrees pairwise secrets (the silos' cancelling masks, :mod:`fedrec.crypto.masking`) and
  receives sealed blobs (:func:`seal` / :func:`unseal`: ephemeral X25519, HKDF-SHA256, ChaCha20-Poly1305),
  which is how the key-holding silo hands the run's CKKS secret context to the other silos without the
  coordinator or the exchange seeing it.

All primitives come from ``cryptography`` (OpenSSL); nothing here is hand-rolled beyond the framing.
The :class:`Roster` maps party names to public identities; the coordinator's operator pins it
(``federation.roster``, a JSON file) or, without one, it is learnt on first use and pinned thereafter.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedrec.core.errors import ConfigError, PayloadError
from fedrec.wire.messages import json_object

COORDINATOR = "coordinator"
ENVELOPE_MAGIC = b"FEDSIG1\n"
SEALED_MAGIC = b"FEDSEAL1"
_RAW = dict(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)


class SignatureError(PayloadError):
    """A payload is unsigned, signed by someone else than its expected author, or altered after signing."""


class RosterError(PayloadError):
    """A party is not in the roster, or presents other keys than the pinned ones."""


@dataclass(frozen=True)
class PublicIdentity:
    """What a party publishes: its name and its two public keys (hex)."""

    name: str
    sign: str  # Ed25519 public key
    kx: str  # X25519 public key

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.name}:{self.sign}:{self.kx}".encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"name": self.name, "sign": self.sign, "kx": self.kx}

    @classmethod
    def from_dict(cls, raw: object, source: str = "identity") -> "PublicIdentity":
        try:
            ident = cls(name=str(raw["name"]), sign=str(raw["sign"]), kx=str(raw["kx"]))
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(ident.sign))
            X25519PublicKey.from_public_bytes(bytes.fromhex(ident.kx))
        except (KeyError, TypeError, ValueError) as exc:
            raise RosterError(f"{source}: not a public identity ({type(exc).__name__}: {exc})") from exc
        return ident

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.sign)).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Identity:
    """A party's private keys (never serialised anywhere but its own key file)."""

    def __init__(self, name: str, sign_key: Ed25519PrivateKey, kx_key: X25519PrivateKey):
        self.name, self._sign, self._kx = name, sign_key, kx_key
        self.public = PublicIdentity(
            name, sign_key.public_key().public_bytes(**_RAW).hex(), kx_key.public_key().public_bytes(**_RAW).hex())

    def __repr__(self) -> str:  # never print key bytes
        return f"Identity({self.name!r}, fingerprint={self.public.fingerprint})"

    __str__ = __repr__

    def __reduce__(self):  # never pickle a private key into a Prefect result or a cache
        raise TypeError("an Identity holds private keys and is not serialisable")

    @classmethod
    def generate(cls, name: str) -> "Identity":
        return cls(name, Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, directory: Path, name: str) -> "Identity":
        """The party's identity from ``directory/identity.key``, made there (0600) on first use."""
        path = Path(directory) / "identity.key"
        if path.exists():
            raw = path.read_bytes()
            if len(raw) != 64:
                raise ConfigError(f"{path} is not a fedrec identity key file (64 bytes); move it away to make a new one")
            return cls(name, Ed25519PrivateKey.from_private_bytes(raw[:32]), X25519PrivateKey.from_private_bytes(raw[32:]))
        ident = cls.generate(name)
        private = dict(encoding=serialization.Encoding.Raw, format=serialization.PrivateFormat.Raw,
                       encryption_algorithm=serialization.NoEncryption())
        write_private(path, ident._sign.private_bytes(**private) + ident._kx.private_bytes(**private))
        return ident

    def sign(self, message: bytes) -> bytes:
        return self._sign.sign(message)

    def shared_secret(self, peer: PublicIdentity, info: bytes, length: int = 32) -> bytes:
        """A key only this party and ``peer`` can derive (X25519 + HKDF-SHA256, bound to ``info``)."""
        raw = self._kx.exchange(X25519PublicKey.from_public_bytes(bytes.fromhex(peer.kx)))
        names = b"|".join(sorted([self.name.encode(), peer.name.encode()]))
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=b"fedrec-pair|" + names + b"|" + info
                    ).derive(raw)

    def unseal(self, blob: bytes, context: bytes) -> bytes:
        """Open a blob :func:`seal`-ed to this party; refuses one that was altered or sealed to someone else."""
        if not blob.startswith(SEALED_MAGIC) or len(blob) < len(SEALED_MAGIC) + 32 + 12 + 16:
            raise PayloadError("not a sealed fedrec blob")
        body = blob[len(SEALED_MAGIC):]
        ephemeral, nonce, ciphertext = body[:32], body[32:44], body[44:]
        key = _seal_key(self._kx.exchange(X25519PublicKey.from_public_bytes(ephemeral)), ephemeral,
                        bytes.fromhex(self.public.kx), context)
        try:
            return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, context)
        except InvalidTag as exc:
            raise PayloadError("sealed blob does not open with this party's key (altered, or sealed to another "
                               "party or run)") from exc


def write_private(path: Path, data: bytes) -> None:
    """Write key material readable by this user only (0600 in a 0700 directory), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def _seal_key(shared: bytes, ephemeral: bytes, recipient: bytes, context: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient,
                info=b"fedrec-seal|" + context).derive(shared)


def seal(data: bytes, recipient: PublicIdentity, context: bytes) -> bytes:
    """Encrypt ``data`` so that only ``recipient`` opens it (an anonymous sealed box; ``context`` binds it
    to a run and purpose and must be given again to open it)."""
    ephemeral = X25519PrivateKey.generate()
    eph_pub = ephemeral.public_key().public_bytes(**_RAW)
    recipient_pk = bytes.fromhex(recipient.kx)
    key = _seal_key(ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_pk)), eph_pub, recipient_pk,
                    context)
    nonce = os.urandom(12)
    return SEALED_MAGIC + eph_pub + nonce + ChaCha20Poly1305(key).encrypt(nonce, data, context)


@dataclass(frozen=True)
class Roster:
    """Public identities by party name (the coordinator under ``"coordinator"``)."""

    parties: dict[str, PublicIdentity] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.parties

    def get(self, name: str) -> PublicIdentity:
        try:
            return self.parties[name]
        except KeyError:
            raise RosterError(f"{name!r} is not in the federation roster") from None

    def with_party(self, ident: PublicIdentity) -> "Roster":
        return Roster({**self.parties, ident.name: ident})

    def to_json(self) -> bytes:
        return json.dumps({n: p.to_dict() for n, p in sorted(self.parties.items())}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str = "roster") -> "Roster":
        return cls.from_dict(json_object(data, source, RosterError), source)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "roster") -> "Roster":
        """From ``{party: {name, sign, kx}}`` (a roster file, or an admission's roster)."""
        parties = {}
        for name, entry in raw.items():
            ident = PublicIdentity.from_dict(entry, f"{source}[{name}]")
            if ident.name != name:
                raise RosterError(f"{source}: entry {name!r} names party {ident.name!r}")
            parties[name] = ident
        return cls(parties)

    @classmethod
    def load(cls, path: str | Path) -> "Roster":
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"federation.roster {path} does not exist (make it with `fedrec roster`)")
        return cls.from_json(path.read_bytes(), str(path))


def _signed_message(run_id: str, key: str, author: str, digest: bytes) -> bytes:
    return b"\0".join([b"fedrec-envelope-v1", run_id.encode(), key.encode(), author.encode(), digest])


def seal_envelope(body: bytes, *, run_id: str, key: str, author: Identity) -> bytes:
    """``body`` signed by ``author`` for exchange key ``key`` of run ``run_id``.

    Layout: ``FEDSIG1\\n`` | 2-byte author length | author | 64-byte Ed25519 signature | body.
    """
    name = author.name.encode()
    signature = author.sign(_signed_message(run_id, key, author.name, hashlib.sha256(body).digest()))
    return ENVELOPE_MAGIC + struct.pack(">H", len(name)) + name + signature + body


def envelope_author(data: bytes, source: str = "payload") -> str:
    if not data.startswith(ENVELOPE_MAGIC) or len(data) < len(ENVELOPE_MAGIC) + 2:
        raise SignatureError(f"{source}: unsigned (no fedrec signature envelope)")
    (n,) = struct.unpack(">H", data[len(ENVELOPE_MAGIC):len(ENVELOPE_MAGIC) + 2])
    start = len(ENVELOPE_MAGIC) + 2
    try:
        return data[start:start + n].decode()
    except UnicodeDecodeError as exc:
        raise SignatureError(f"{source}: malformed signature envelope") from exc


def peek_envelope(data: bytes, source: str = "payload") -> tuple[str, bytes]:
    """(claimed author, body) without verifying: only to learn which key to verify a self-signed envelope with."""
    author = envelope_author(data, source)
    return author, data[len(ENVELOPE_MAGIC) + 2 + len(author.encode()) + 64:]


def open_envelope(data: bytes, *, run_id: str, key: str, author: PublicIdentity) -> bytes:
    """The body, if ``author`` signed exactly these bytes for ``key`` of ``run_id``; else :class:`SignatureError`."""
    claimed = envelope_author(data, key)
    if claimed != author.name:
        raise SignatureError(f"{key}: signed by {claimed!r}, expected {author.name!r}")
    start = len(ENVELOPE_MAGIC) + 2 + len(claimed.encode())
    signature, body = data[start:start + 64], data[start + 64:]
    if len(signature) != 64 or not author.verify(
            signature, _signed_message(run_id, key, claimed, hashlib.sha256(body).digest())):
        raise SignatureError(f"{key}: bad signature from {author.name!r} (altered, replayed from another key or "
                             "run, or signed with another key than the roster's)")
    return body


def self_signed_identity(exchange, key: str, name: str) -> PublicIdentity:
    """A party's public identity as it published it on the exchange, checked to be signed by its own key
    (trust on first use: proves possession, not who runs it; pin a roster for that)."""
    data = exchange.get(key)
    ident = PublicIdentity.from_dict(json_object(peek_envelope(data, key)[1], key, RosterError), key)
    if ident.name != name:
        raise RosterError(f"{key}: names party {ident.name!r}, expected {name!r}")
    open_envelope(data, run_id=exchange.run_id, key=key, author=ident)
    return ident
