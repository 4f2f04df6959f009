"""Double masking that survives dropouts and a misbehaving coordinator (Bonawitz et al., CCS'17, "Practical Secure
Aggregation for Privacy-Preserving Machine Learning"), under CKKS. Pure functions: no I/O, no party logic.

Each round, every participant ``k`` makes two fresh secrets: a self-mask seed ``b_k`` and an ephemeral X25519 key
``s_k``. It publishes ``s_k``'s public half and a hash commitment to ``b_k``, and Shamir-shares both secrets
(threshold ``t_k``, more than half of the round's participants) among the other participants, each share sealed to
its recipient's long-term X25519 key. Its encoded update then carries

    y_k = x_k + PRG(b_k) + sum over the other participants j of +-PRG(DH(s_k, S_j))      (mod 2^mask_bits)

The pairwise terms cancel in a sum over *all* participants; the self-mask never cancels. After the coordinator
names the survivors ``U`` (those whose update arrived) and the dropped ``D``, each survivor reveals, for every silo
of ``U``, its share of ``b``, and for every silo of ``D``, its share of ``s``, never both for one silo: the decryptor
rebuilds the self-masks of ``U`` and the pairwise masks the survivors hold with ``D``, and removes them from the
decrypted sum of ``U``'s updates. A silo encrypts its update once per round; a dropped silo's update keeps its
self-mask (its ``b`` is never revealed), so no two decryptable sums of a round differ by one silo's update:
the difference of the survivors' sum and any sum that includes a dropped update still carries that update's
``PRG(b_k)``, uniform noise. Compared with Flower's SecAgg+ (pairwise masks over a random k-regular graph,
O(n log n) instead of O(n^2) key agreements, plaintext sums at the server), the complete graph costs 10
key agreements per silo at 11 silos and keeps the guarantee simple; see the README's threat table.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedrec.core.errors import PayloadError
from fedrec.crypto.masking import keystream

#: Shamir shares live in GF(P), P = 2^521 - 1 (a Mersenne prime above every 32-byte secret)
PRIME = 2 ** 521 - 1
_RAW_PUBLIC = dict(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)
_RAW_PRIVATE = dict(encoding=serialization.Encoding.Raw, format=serialization.PrivateFormat.Raw,
                    encryption_algorithm=serialization.NoEncryption())
#: at most this many subsets of the revealed shares are tried when some of them are wrong
MAX_SUBSETS = 256


class MaskRecoveryError(PayloadError):
    """Too few valid shares were revealed to rebuild a mask secret (the round cannot be unmasked)."""


# --- Shamir secret sharing over GF(2^521 - 1) -------------------------------------------------------------------
def split_secret(secret: bytes, xs: list[int], threshold: int) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` (at most 64 bytes) for the points ``xs`` (distinct, >= 1): any
    ``threshold`` of them rebuild it, fewer say nothing about it."""
    if not 1 <= threshold <= len(xs) or len(set(xs)) != len(xs) or min(xs) < 1:
        raise PayloadError(f"cannot share a secret {threshold}-of-{len(xs)} at points {xs}")
    coefficients = [int.from_bytes(secret, "big")] + [int.from_bytes(os.urandom(66), "big") % PRIME
                                                      for _ in range(threshold - 1)]
    return {x: sum(c * pow(x, i, PRIME) for i, c in enumerate(coefficients)) % PRIME for x in xs}


def combine_shares(shares: dict[int, int], length: int = 32) -> bytes:
    """The secret behind ``shares`` (Lagrange interpolation at 0), as ``length`` bytes."""
    secret = 0
    for x_i, y_i in shares.items():
        num, den = 1, 1
        for x_j in shares:
            if x_j != x_i:
                num, den = num * -x_j % PRIME, den * (x_i - x_j) % PRIME
        secret = (secret + y_i * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * length):
        raise MaskRecoveryError("the shares do not interpolate to a secret of the expected size")
    return secret.to_bytes(length, "big")


def threshold_for(n_participants: int, fraction: float) -> int:
    """Shares needed to rebuild a silo's mask secrets: more than half of the round's participants (so a
    coordinator showing two survivor sets cannot collect both secrets of one silo from honest silos), at least 2."""
    return min(n_participants, max(2, n_participants // 2 + 1, math.ceil(fraction * n_participants)))


# --- a silo's round secrets --------------------------------------------------------------------------------------
def self_commitment(seed: bytes) -> str:
    return hashlib.sha256(b"fedrec-self-mask|" + seed).hexdigest()


def public_of(private: bytes) -> str:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(**_RAW_PUBLIC).hex()


class RoundSecrets:
    """A participant's fresh secrets for one round: the self-mask seed and the ephemeral X25519 mask key. They
    stay in the silo's memory; only shares of them leave it, sealed to the other participants."""

    def __init__(self) -> None:
        self.seed = os.urandom(32)
        self._key = X25519PrivateKey.generate()
        self.public = self._key.public_key().public_bytes(**_RAW_PUBLIC).hex()
        self.commitment = self_commitment(self.seed)

    def __repr__(self) -> str:  # never print secrets
        return f"RoundSecrets(public={self.public[:16]}...)"

    def __reduce__(self):
        raise TypeError("RoundSecrets hold private mask secrets and are not serialisable")

    def shares(self, xs: dict[str, int], threshold: int) -> dict[str, bytes]:
        """One share of each secret per other participant (name -> its point), ready to be sealed to it."""
        points = sorted(xs.values())
        seeds, keys = (split_secret(self.seed, points, threshold),
                       split_secret(self._key.private_bytes(**_RAW_PRIVATE), points, threshold))
        return {name: json.dumps({"x": x, "self": format(seeds[x], "x"), "key": format(keys[x], "x")}).encode()
                for name, x in xs.items()}

    def pair_masks(self, me: str, peers: dict[str, str], info: bytes, length: int, mask_bits: int) -> np.ndarray:
        """The self-mask plus the pairwise masks with ``peers`` (name -> ephemeral public key hex) mod 2^mask_bits."""
        total = keystream(self.seed, length, mask_bits)
        return (total + pairwise_mask(self._key.private_bytes(**_RAW_PRIVATE), me, peers, info, length, mask_bits)
                ) & np.uint64(2 ** mask_bits - 1)


@dataclass(frozen=True)
class Share:
    """One participant's share of another's two round secrets, as unsealed by its recipient."""

    x: int
    self_share: int
    key_share: int

    @classmethod
    def parse(cls, data: bytes, source: str) -> "Share":
        try:
            raw = json.loads(data)
            share = cls(int(raw["x"]), int(raw["self"], 16), int(raw["key"], 16))
        except (ValueError, KeyError, TypeError) as exc:
            raise PayloadError(f"{source}: not a mask-secret share ({type(exc).__name__})") from exc
        if not (1 <= share.x < 2 ** 16 and 0 <= share.self_share < PRIME and 0 <= share.key_share < PRIME):
            raise PayloadError(f"{source}: a mask-secret share out of range")
        return share


def share_points(participants: list[str]) -> dict[str, int]:
    """Each participant's Shamir point: its position among the sorted participants, from 1."""
    return {name: i + 1 for i, name in enumerate(sorted(participants))}


# --- masks -------------------------------------------------------------------------------------------------------
def _pair_key(private: bytes, me: str, peer: str, peer_public: str, info: bytes) -> bytes:
    try:
        raw = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(
            bytes.fromhex(peer_public)))
    except ValueError as exc:
        raise PayloadError(f"silo {peer}'s mask key is not an X25519 public key") from exc
    names = b"|".join(sorted([me.encode(), peer.encode()]))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedrec-mask|" + names + b"|" + info
                ).derive(raw)


def pairwise_mask(private: bytes, me: str, peers: dict[str, str], info: bytes, length: int,
                  mask_bits: int) -> np.ndarray:
    """``me``'s pairwise masks with ``peers`` mod 2^mask_bits: the smaller name adds, the larger subtracts."""
    modulus = np.uint64(2 ** mask_bits - 1)
    total = np.zeros(length, dtype=np.uint64)
    for peer, public in sorted(peers.items()):
        if peer == me:
            continue
        stream = keystream(_pair_key(private, me, peer, public, info), length, mask_bits)
        total = (total + stream) & modulus if me < peer else (total - stream) & modulus
    return total


def mask_info(run_id: str, server_round: int) -> bytes:
    return f"secagg|{run_id}|round {server_round}".encode()


def _rebuild(shares: dict[int, int], threshold: int, valid, what: str) -> bytes:
    """The secret behind ``shares`` that ``valid`` accepts, trying subsets of ``threshold`` shares when some are
    wrong (a misbehaving silo's reveal)."""
    if len(shares) < threshold:
        raise MaskRecoveryError(f"{what}: {len(shares)} share(s) revealed, {threshold} needed")
    points = sorted(shares)
    for subset in itertools.islice(itertools.combinations(points, threshold), MAX_SUBSETS):
        try:
            secret = combine_shares({x: shares[x] for x in subset})
        except MaskRecoveryError:
            continue
        if valid(secret):
            return secret
    raise MaskRecoveryError(f"{what}: no {threshold} of the {len(shares)} revealed shares rebuild the committed "
                            "secret")


def recover_seed(shares: dict[int, int], threshold: int, commitment: str, silo: str) -> bytes:
    return _rebuild(shares, threshold, lambda s: self_commitment(s) == commitment, f"silo {silo}'s self-mask")


def recover_key(shares: dict[int, int], threshold: int, public: str, silo: str) -> bytes:
    return _rebuild(shares, threshold, lambda s: public_of(s) == public, f"silo {silo}'s mask key")


def unmask(residues: np.ndarray, seeds: list[bytes], dropped: dict[str, tuple[bytes, str]],
           survivors: dict[str, str], info: bytes, mask_bits: int) -> np.ndarray:
    """Remove the survivors' self-masks (their rebuilt ``seeds``) and the pairwise masks they hold with the
    ``dropped`` silos (name -> (rebuilt private key, its public key)) from the survivors' summed residues
    (uint64 mod 2^mask_bits): what is left is the sum of their plain encodings."""
    modulus = np.uint64(2 ** mask_bits - 1)
    out = np.asarray(residues, dtype=np.uint64).copy()
    for seed in seeds:
        out = (out - keystream(seed, len(out), mask_bits)) & modulus
    for name, (private, _) in dropped.items():
        # the dropped silo's view of each survivor's pair mask has the opposite sign of the survivor's
        out = (out + pairwise_mask(private, name, survivors, info, len(out), mask_bits)) & modulus
    return out
