"""Pairwise cancelling masks on integer-encoded updates (the SecAgg idea, under CKKS).

A silo's weighted update is rounded to the grid 2^-quantization_bits and read as integers ``q``. For
every other participant ``j`` of the round it adds ``±PRG(k_ij)`` modulo 2^mask_bits, where ``k_ij`` is
an X25519 + HKDF secret only the two silos can derive (bound to run, round and attempt) and the PRG is
ChaCha20: the smaller name adds, the larger subtracts, so the masks cancel exactly in the sum. The masked
residues ``z`` are uniform on [0, 2^mask_bits): whoever decrypts one silo's ciphertext alone (a curious
key holder handed it by the coordinator) sees noise. The residues are centred and scaled to [-1, 1) and
carried in CKKS, whose noise (~2^(15 - scale bits)) stays far below one integer step; the decrypted sum is
rounded back to integers and reduced modulo 2^mask_bits, which recovers ``sum(q)`` exactly as long as it
lies in [-2^(mask_bits-1), 2^(mask_bits-1)) (each silo checks its share of that bound before sending).

Dropout after the participant set is fixed: the coordinator names the survivors and they mask again among
themselves (a new attempt, fresh masks); see :class:`fedrec.coordinator.Coordinator`.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedrec.errors import PayloadError
from fedrec.trust import Identity, PublicIdentity

#: a decrypted sum further than this (in integer steps) from an integer means CKKS noise ate the margin
MAX_STEP_DEVIATION = 0.25


def quantize_int(weighted: np.ndarray, bits: int) -> np.ndarray:
    """``weighted`` on the grid 2^-bits, as int64 grid steps."""
    return np.round(np.asarray(weighted, dtype=np.float64) * 2.0 ** bits).astype(np.int64)


def per_silo_bound(mask_bits: int, n_participants: int) -> int:
    """The largest |q| one of ``n_participants`` silos may send so that the sum cannot wrap modulo 2^mask_bits."""
    return (2 ** (mask_bits - 1) - 1) // max(n_participants, 1)


def _keystream(key: bytes, length: int, mask_bits: int) -> np.ndarray:
    stream = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor().update(b"\0" * (8 * length))
    return np.frombuffer(stream, dtype="<u8") & np.uint64(2 ** mask_bits - 1)


def mask_info(run_id: str, server_round: int, attempt: int) -> bytes:
    return f"mask|{run_id}|round {server_round}|attempt {attempt}".encode()


def silo_mask(me: Identity, peers: list[PublicIdentity], info: bytes, length: int, mask_bits: int) -> np.ndarray:
    """This silo's total mask modulo 2^mask_bits against ``peers`` (the other participants)."""
    modulus = np.uint64(2 ** mask_bits - 1)
    total = np.zeros(length, dtype=np.uint64)
    for peer in peers:
        if peer.name == me.name:
            continue
        stream = _keystream(me.shared_secret(peer, info), length, mask_bits)
        if me.name < peer.name:
            total = (total + stream) & modulus
        else:
            total = (total - stream) & modulus  # uint64 wraps modulo 2^64, a multiple of 2^mask_bits
    return total


def encode(q: np.ndarray, mask: np.ndarray | None, mask_bits: int) -> np.ndarray:
    """Integers ``q`` (+ mask) modulo 2^mask_bits, centred and scaled to [-1, 1): what gets encrypted."""
    z = q.astype(np.uint64)  # two's complement: congruent to q modulo 2^64, hence modulo 2^mask_bits
    if mask is not None:
        z = z + mask
    z &= np.uint64(2 ** mask_bits - 1)
    half = 2 ** (mask_bits - 1)
    return (z.astype(np.int64) - half).astype(np.float64) / half


def decode_sum(total: np.ndarray, n_contributors: int, mask_bits: int) -> np.ndarray:
    """The exact integer sum behind ``n_contributors`` encoded (masked) vectors' decrypted sum."""
    half = 2 ** (mask_bits - 1)
    steps = np.asarray(total, dtype=np.float64) * half
    if not np.all(np.isfinite(steps)):
        raise PayloadError("decrypted sum holds NaN or Inf (a contributor's ciphertext was not a valid encoding)")
    rounded = np.round(steps)
    deviation = float(np.max(np.abs(steps - rounded), initial=0.0))
    if deviation > MAX_STEP_DEVIATION:
        raise PayloadError(f"decrypted sum is {deviation:.2f} integer steps off: CKKS noise exceeds the margin; "
                           "lower crypto.mask_bits or raise crypto.global_scale_bits")
    residue = (rounded.astype(np.int64) + n_contributors * half) % (2 * half)
    return np.where(residue >= half, residue - 2 * half, residue)


def check_bound(q: np.ndarray, mask_bits: int, n_participants: int, where: str) -> None:
    bound = per_silo_bound(mask_bits, n_participants)
    largest = int(np.max(np.abs(q), initial=0))
    if largest > bound:
        raise PayloadError(f"{where}: a weighted update value of {largest} grid steps exceeds this silo's share "
                           f"{bound} of the 2^{mask_bits - 1} sum range; raise crypto.mask_bits or lower "
                           "crypto.quantization_bits")
