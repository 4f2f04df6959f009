"""CKKS (TenSEAL) and plaintext codecs for summing weighted updates.

Key holders (the silos) hold a secret context and encrypt symmetrically (with the secret key: half the noise and
twice the speed of public-key encryption, measured); the coordinator gets the bare parameters, serialized without
secret, public, galois or relinearisation keys, and the key id (138 bytes, PUBLIC_TAG): ciphertext addition needs none of them, and it can
neither decrypt (:class:`DecryptionKeyError`) nor encrypt (so it cannot forge a silo's ciphertext).
Flat vectors are packed into ``poly_modulus_degree / 2`` slots per ciphertext ourselves, so TenSEAL never chunks
(and warns) on its own.

The plaintext codec exposes the same interface so HE can be switched off (``he: false``)
to measure its cost; both produce :class:`~fedrec.wire.payload.EncryptedUpdate` chunks.
"""

from __future__ import annotations

import atexit
import hashlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedrec.core.config import CryptoConfig
from fedrec.core.errors import DecryptionKeyError, PayloadError


def context_fingerprint(public_context: bytes) -> str:
    return hashlib.sha256(public_context).hexdigest()[:16]


#: a public context: this tag, the key id, then TenSEAL's parameters-only context. Without a public key the
#: parameters are the same for every key, so the key id (a hash of the secret context, which a 4096-coefficient
#: ternary secret key makes infeasible to invert) names the key: runs' contexts differ, and a silo checks that
#: the secret context sealed to it is the one the published context names
PUBLIC_TAG = b"FEDREC-CKKS-PUBLIC1\n"


def key_id(secret_context: bytes) -> bytes:
    return hashlib.sha256(b"fedrec-ckks-key-id|" + secret_context).digest()


def _split_public(public_context: bytes) -> tuple[bytes, bytes]:
    """(key id, TenSEAL parameters) of a public context."""
    if not public_context.startswith(PUBLIC_TAG) or len(public_context) <= len(PUBLIC_TAG) + 32:
        raise PayloadError("not a fedrec public CKKS context (tag and key id missing)")
    rest = public_context[len(PUBLIC_TAG):]
    return rest[:32], rest[32:]


@dataclass(frozen=True)
class KeyMaterial:
    """secret_context: only for the silos' key stores. public_context: what the coordinator gets."""

    secret_context: bytes
    public_context: bytes

    def __repr__(self) -> str:  # never print key bytes
        return f"KeyMaterial(context_id={context_fingerprint(self.public_context)})"


def value_limit(cfg: CryptoConfig) -> float:
    """The largest |value| a CKKS sum may reach: past 2^(data bits - scale bits - 1) it wraps around the data
    primes' modulus and decrypts to a wrong value that still looks plausible; one bit is kept as margin (SEAL
    refuses to encode a single value past it). Each silo sends values in [-1, 1), so this is also the most
    contributors one sum can have."""
    return 2.0 ** (sum(cfg.coeff_mod_bit_sizes[:-1]) - cfg.global_scale_bits - 2)


def create_keys(cfg: CryptoConfig) -> KeyMaterial:
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=cfg.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(cfg.coeff_mod_bit_sizes), encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    ctx.global_scale = 2 ** cfg.global_scale_bits
    secret = ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    params = ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    return KeyMaterial(secret_context=secret, public_context=PUBLIC_TAG + key_id(secret) + params)


class Codec(Protocol):
    scheme: str
    context_id: str

    def encrypt(self, flat: np.ndarray) -> list[bytes]: ...
    def add(self, payloads: list[list[bytes]]) -> list[bytes]: ...
    def decrypt(self, chunks: list[bytes], length: int) -> np.ndarray: ...
    def chunk_problem(self, chunks: list[bytes], length: int) -> str | None: ...


#: below this many ciphertexts a process pool costs more than it saves (measured: bench/he_options.py --workers)
PARALLEL_MIN_CHUNKS = 256

_WORKER: dict = {}


def _worker_init(context_bytes: bytes) -> None:
    """A pool worker of this party's own process: loads the party's context once."""
    import tenseal as ts

    _WORKER["ts"], _WORKER["ctx"] = ts, ts.context_from(context_bytes)


def _worker_encrypt(values: np.ndarray, slots: int) -> list[bytes]:
    ts, ctx = _WORKER["ts"], _WORKER["ctx"]
    return [ts.ckks_vector(ctx, values[i:i + slots].tolist()).serialize() for i in range(0, len(values), slots)]


def _worker_decrypt(chunks: list[bytes]) -> np.ndarray:
    ts, ctx = _WORKER["ts"], _WORKER["ctx"]
    return np.concatenate([np.asarray(ts.ckks_vector_from(ctx, c).decrypt(), dtype=np.float64) for c in chunks])


def _results(parts: list) -> list:
    """The pool's results in order; a ciphertext a worker could not parse is a PayloadError here too."""
    try:
        return [part.result() for part in parts]
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError on garbage
        raise PayloadError(f"ciphertext does not parse under this context ({exc})") from exc


class CKKSCodec:
    """Encrypt / add / decrypt flat float vectors as lists of serialized CKKS vectors.

    With ``workers > 1``, a silo encrypts and decrypts vectors of at least PARALLEL_MIN_CHUNKS ciphertexts in parts
    across a pool of that many processes, children of its own process that load its own context (TenSEAL holds
    the GIL, so threads do not help); smaller vectors stay in this process. Additions stay in this process: they
    are cheaper than shipping the ciphertexts to a worker (measured: 3x slower with 2 workers)."""

    scheme = "ckks"

    def __init__(self, context_bytes: bytes, slots: int, public_context: bytes | None = None, workers: int = 1):
        """``context_bytes``: a silo's secret context (TenSEAL) or the coordinator's public context (tagged);
        ``workers``: processes that encrypt and decrypt large vectors (1: none)."""
        import tenseal as ts

        self._ts = ts
        if context_bytes.startswith(PUBLIC_TAG):
            self.key_id, raw = _split_public(context_bytes)
        else:
            self.key_id, raw = key_id(context_bytes), context_bytes
        try:
            self._ctx = ts.context_from(raw)
        except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError on garbage
            raise PayloadError(f"not a TenSEAL context ({exc})") from exc
        self.slots = slots  # poly_modulus_degree / 2: we pack ourselves so TenSEAL never chunks
        self.workers = max(1, workers)
        self._raw, self._pool = raw, None
        self.context_id = context_fingerprint(public_context if public_context is not None else context_bytes)

    @property
    def can_decrypt(self) -> bool:
        return self._ctx.is_private()

    def matches(self, public_context: bytes) -> bool:
        """Whether ``public_context`` (the coordinator's) names this secret context's key, and sums made under its
        parameters decrypt here."""
        probe = np.linspace(-1.0, 1.0, 8)
        try:
            public = CKKSCodec(public_context, self.slots)
            if public.can_decrypt or public.key_id != self.key_id:
                return False
            chunk = self.encrypt(probe)
            back = self.decrypt(public.add([chunk, chunk]), len(probe))
        except (DecryptionKeyError, PayloadError, ValueError):
            return False
        return bool(np.allclose(back, 2 * probe, atol=1e-6))

    def encrypt(self, flat: np.ndarray) -> list[bytes]:
        if not self.can_decrypt:
            raise DecryptionKeyError("this context holds no secret key: silos encrypt symmetrically with theirs, "
                                     "the coordinator's context can only add")
        flat = np.asarray(flat, dtype=np.float64)
        n_chunks = -(-len(flat) // self.slots)
        if (pool := self._pool_for(n_chunks)) is not None:
            parts = [pool.submit(_worker_encrypt, flat[a * self.slots:b * self.slots], self.slots)
                     for a, b in self._bounds(n_chunks)]
            return [chunk for part in parts for chunk in part.result()]
        return [self._ts.ckks_vector(self._ctx, flat[i:i + self.slots].tolist()).serialize()
                for i in range(0, len(flat), self.slots)]

    def _pool_for(self, n_chunks: int) -> ProcessPoolExecutor | None:
        """The worker pool (started on first use) when ``n_chunks`` ciphertexts are worth splitting, else None."""
        if self.workers == 1 or n_chunks < PARALLEL_MIN_CHUNKS:
            return None
        if self._pool is None:  # spawn: a fork would copy Prefect's and torch's threads
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init, initargs=(self._raw,))
            atexit.register(self._pool.shutdown, cancel_futures=True)
        return self._pool

    def _bounds(self, n_chunks: int) -> list[tuple[int, int]]:
        step = -(-n_chunks // self.workers)
        return [(a, min(a + step, n_chunks)) for a in range(0, n_chunks, step)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _load(self, chunk: bytes):
        try:
            return self._ts.ckks_vector_from(self._ctx, chunk)
        except Exception as exc:
            raise PayloadError(f"ciphertext does not parse under this context ({exc})") from exc

    def chunk_problem(self, chunks: list[bytes], length: int) -> str | None:
        """Why ``chunks`` are not ``length`` values' ciphertexts under this context (each parsed, its size
        checked), or None: a silo's garbage is found before it is added to anyone's sum."""
        expected = -(-length // self.slots)
        if len(chunks) != expected:
            return f"{len(chunks)} ciphertexts (the layout needs {expected})"
        for i, chunk in enumerate(chunks):
            try:
                size = self._load(chunk).size()
            except PayloadError as exc:
                return f"ciphertext {i}: {exc}"
            if size != min(self.slots, length - i * self.slots):
                return f"ciphertext {i} carries {size} values"
        return None

    def add(self, payloads: list[list[bytes]]) -> list[bytes]:
        n_chunks = {len(p) for p in payloads}
        if len(n_chunks) != 1:
            raise PayloadError(f"updates have different numbers of ciphertexts: {sorted(n_chunks)}")
        out = []
        for j in range(n_chunks.pop()):
            total = self._load(payloads[0][j])
            for p in payloads[1:]:
                total = total + self._load(p[j])
            out.append(total.serialize())
        return out

    def decrypt(self, chunks: list[bytes], length: int) -> np.ndarray:
        if not self.can_decrypt:
            raise DecryptionKeyError("this context holds no secret key (the coordinator's public context "
                                     "cannot decrypt); decrypt with a silo's key store")
        if (pool := self._pool_for(len(chunks))) is not None:
            parts = [pool.submit(_worker_decrypt, chunks[a:b]) for a, b in self._bounds(len(chunks))]
            flat = np.concatenate(_results(parts))
        else:
            flat = np.concatenate([np.asarray(self._load(c).decrypt(), dtype=np.float64) for c in chunks])
        if len(flat) < length:
            raise PayloadError(f"decrypted {len(flat)} values, layout needs {length}")
        return flat[:length]


class PlainCodec:
    """The same payloads in plaintext float64 (``he: false``): for measuring what HE costs."""

    scheme = "plain"
    context_id = "plaintext"
    can_decrypt = True

    def encrypt(self, flat: np.ndarray) -> list[bytes]:
        return [np.asarray(flat, dtype="<f8").tobytes()]

    def add(self, payloads: list[list[bytes]]) -> list[bytes]:
        total = None
        for p in payloads:
            arr = _plain(p)
            if total is not None and arr.shape != total.shape:
                raise PayloadError(f"plaintext updates differ in length: {arr.shape} vs {total.shape}")
            total = arr if total is None else total + arr
        return [total.tobytes()]

    def chunk_problem(self, chunks: list[bytes], length: int) -> str | None:
        if len(chunks) != 1 or len(chunks[0]) != 8 * length:
            return f"not one float64 chunk of {length} values"
        return None

    def decrypt(self, chunks: list[bytes], length: int) -> np.ndarray:
        flat = _plain(chunks)
        if len(flat) != length:
            raise PayloadError(f"plaintext payload has {len(flat)} values, layout needs {length}")
        return flat


def _plain(chunks: list[bytes]) -> np.ndarray:
    if len(chunks) != 1 or len(chunks[0]) % 8:
        raise PayloadError("plaintext payload must be one float64 chunk")
    return np.frombuffer(chunks[0], dtype="<f8").copy()
