"""Integer packing and masks on updates (BatchCrypt's packing; the masks themselves: :mod:`fedrec.crypto.secagg`).

A silo's share of the round's mean update, ``n_samples / total_samples * delta``, is rounded to the grid
2^-quantization_bits and read as integers ``q``; ``pack`` of them share one slot as signed lanes of
``lane_bits`` (``V = q_0 + q_1 * 2^lane_bits``): each silo keeps its lanes within its weight's share of a lane's
range, so the lanes' sums never carry into each other and one CKKS slot carries ``pack`` values. A mask modulo
2^mask_bits (mask_bits = pack * lane_bits; a self-mask plus pairwise masks, see :mod:`fedrec.crypto.secagg`)
is added to ``V``: the masked residues ``z`` are uniform on [0, 2^mask_bits), so whoever decrypts one silo's
ciphertext alone (a curious key holder handed it by the coordinator) sees noise. The residues are centred and
scaled to [-1, 1) and carried in CKKS, whose noise (~2^(15 - scale bits)) stays far below one integer step; the
decrypted sum is rounded back to integers and reduced modulo 2^mask_bits (:func:`residues`), the masks are
removed, and :func:`center` gives ``sum(V)`` exactly, and its lanes the exact ``sum(q)``, as long as each lane's
sum stays in its signed range (each silo checks its share before sending).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedrec.core.errors import PayloadError

#: a decrypted sum further than this (in integer steps) from an integer means CKKS noise ate the margin
MAX_STEP_DEVIATION = 0.25


def quantize_share(delta: np.ndarray, n_samples: int, total_samples: int, bits: int) -> np.ndarray:
    """This silo's share of the round's mean update, ``n_samples / total_samples * delta``, as int64 steps of
    the grid 2^-bits."""
    if not 0 < n_samples <= total_samples:
        raise PayloadError(f"n_samples {n_samples} is not a share of the round's total_samples {total_samples}")
    weight = n_samples / total_samples
    return np.round(np.asarray(delta, dtype=np.float64) * weight * 2.0 ** bits).astype(np.int64)


def share_bound(lane_bits: int, n_samples: int, total_samples: int) -> int:
    """The largest |q| a silo with this weight may send: the shares of all silos sum to at most 2^(lane_bits-1) - 1,
    so no lane's sum can leave its signed range."""
    return int((2 ** (lane_bits - 1) - 1) * n_samples // total_samples)


def check_bound(q: np.ndarray, lane_bits: int, quantization_bits: int, n_samples: int, total_samples: int,
                where: str) -> None:
    bound = share_bound(lane_bits, n_samples, total_samples)
    largest = int(np.max(np.abs(q), initial=0))
    if largest > bound:
        limit = 2.0 ** (lane_bits - 1 - quantization_bits)
        raise PayloadError(f"{where}: a local update value of {largest * total_samples / n_samples / 2.0 ** quantization_bits:.3g} "
                           f"leaves the encoding's range +-{limit:g} (crypto.lane_bits={lane_bits}, "
                           f"quantization_bits={quantization_bits}); raise crypto.lane_bits or lower "
                           "crypto.quantization_bits")


def n_slots(length: int, pack: int) -> int:
    return -(-length // pack)


def pack_lanes(q: np.ndarray, pack: int, lane_bits: int) -> np.ndarray:
    """``pack`` signed lanes per slot: slot j holds q[j] + q[S + j] * 2^lane_bits + ... (S slots), exact in int64."""
    slots = n_slots(len(q), pack)
    lanes = np.zeros(slots * pack, dtype=np.int64)
    lanes[:len(q)] = q
    lanes = lanes.reshape(pack, slots)
    return sum(lanes[i] * (1 << (i * lane_bits)) for i in range(pack))


def unpack_lanes(packed: np.ndarray, pack: int, lane_bits: int, length: int) -> np.ndarray:
    """The signed lanes behind :func:`pack_lanes` (also of a sum of packed vectors whose lanes stayed in range)."""
    rest, half, width = np.asarray(packed, dtype=np.int64), 1 << (lane_bits - 1), 1 << lane_bits
    lanes = []
    for _ in range(pack):
        lane = (rest + half) % width - half
        lanes.append(lane)
        rest = (rest - lane) // width
    if np.any(rest != 0):
        raise PayloadError(f"packed sums overflow their {pack} x {lane_bits}-bit lanes")
    return np.concatenate(lanes)[:length]


def keystream(key: bytes, length: int, mask_bits: int) -> np.ndarray:
    """``length`` pseudo-random residues modulo 2^mask_bits from a 32-byte ``key`` (ChaCha20)."""
    stream = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor().update(b"\0" * (8 * length))
    return np.frombuffer(stream, dtype="<u8") & np.uint64(2 ** mask_bits - 1)


def encode(q: np.ndarray, mask: np.ndarray | None, mask_bits: int) -> np.ndarray:
    """Integers ``q`` (packed slots; + mask) modulo 2^mask_bits, centred and scaled to [-1, 1): what gets
    encrypted."""
    z = q.astype(np.uint64)  # two's complement: congruent to q modulo 2^64, hence modulo 2^mask_bits
    if mask is not None:
        z = z + mask
    z &= np.uint64(2 ** mask_bits - 1)
    half = 2 ** (mask_bits - 1)
    return (z.astype(np.int64) - half).astype(np.float64) / half


def residues(total: np.ndarray, n_contributors: int, mask_bits: int) -> np.ndarray:
    """The sum of the (masked) residues behind ``n_contributors`` encoded vectors' decrypted sum, modulo
    2^mask_bits (uint64); refuses a sum that is not close to integers (a bad encoding, or CKKS noise)."""
    half = 2 ** (mask_bits - 1)
    steps = np.asarray(total, dtype=np.float64) * half
    if not np.all(np.isfinite(steps)):
        raise PayloadError("decrypted sum holds NaN or Inf (a contributor's ciphertext was not a valid encoding)")
    rounded = np.round(steps)
    deviation = off_grid(steps, rounded)
    if deviation > MAX_STEP_DEVIATION:
        raise PayloadError(f"decrypted sum is {deviation:.2f} integer steps off: CKKS noise exceeds the margin "
                           "(lower crypto.lane_bits or raise crypto.global_scale_bits), or a contributor's encoding "
                           "is off the grid")
    return ((rounded.astype(np.int64) + n_contributors * half) % (2 * half)).astype(np.uint64)


def off_grid(steps: np.ndarray, rounded: np.ndarray | None = None) -> float:
    """How far (in integer steps) the farthest value of ``steps`` lies from an integer."""
    rounded = np.round(steps) if rounded is None else rounded
    return float(np.max(np.abs(steps - rounded), initial=0.0))


def center(residue: np.ndarray, mask_bits: int) -> np.ndarray:
    """Residues modulo 2^mask_bits as signed int64 in [-2^(mask_bits-1), 2^(mask_bits-1))."""
    half = 2 ** (mask_bits - 1)
    signed = np.asarray(residue, dtype=np.uint64).astype(np.int64)
    return np.where(signed >= half, signed - 2 * half, signed)


def decode_sum(total: np.ndarray, n_contributors: int, mask_bits: int) -> np.ndarray:
    """The exact integer sum behind ``n_contributors`` encoded vectors' decrypted sum whose masks cancel (or that
    carry none)."""
    return center(residues(total, n_contributors, mask_bits), mask_bits)
