"""CKKS (TenSEAL) and plaintext codecs for summing weighted updates.

Key holders (the silos) hold a secret context and encrypt symmetrically (with the secret key: half the noise and
twice the speed of public-key encryption, measured); the coordinator gets the bare parameters, serialized without
secret, public, galois or relinearisation keys, and the key id (138 bytes, PUBLIC_TAG): ciphertext addition needs none of them, and it can
neither decrypt (:class:`DecryptionKeyError`) nor encrypt (so it cannot forge a silo's ciphertext).
Ciphertexts are SEAL's own, made through TenSEAL's ``sealapi`` on the TenSEAL context's keys: each of the
``poly_modulus_degree / 2`` slots carries two values (its real and imaginary parts), and a silo's symmetric
ciphertexts go out seeded (the random polynomial as its seed): 8 bytes per value, a quarter of one real per slot
unseeded (TenSEAL's CKKSVector), with the same noise per value and the same exact sums.

The plaintext codec exposes the same interface so HE can be switched off (``he: false``)
to measure its cost; both produce :class:`~fedrec.wire.payload.EncryptedUpdate` chunks.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import multiprocessing
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
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
    contributors one sum can have. With two values per slot (complex encoding) a plaintext coefficient is bounded by
    the largest slot's modulus, at most sqrt(2) times the largest part: still inside the margin bit."""
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

#: the most memory a party's parsed, not yet summed ciphertexts take: a round's updates, checked on arrival and summed
#: later, are parsed once (ML-100K: 11 silos x 14 ciphertexts = 10 MB); past it the oldest are parsed again
LOADED_CACHE_BYTES = 64 * 2**20

_WORKER: dict = {}
_NAMES = itertools.count()
_SCRATCH: dict[int, str] = {}


def _scratch() -> str:
    """This process's folder for ciphertext files: TenSEAL's sealapi saves and loads SEAL objects by path only."""
    if os.getpid() not in _SCRATCH:
        _SCRATCH[os.getpid()] = path = tempfile.mkdtemp(prefix="fedrec-ckks-")
        atexit.register(shutil.rmtree, path, True)
    return _SCRATCH[os.getpid()]


def _symmetric(ctx) -> bool:
    """Whether a TenSEAL context encrypts with the secret key (TenSEAL refuses to say whether such a context has a
    public key)."""
    try:
        return not ctx.has_public_key()
    except ValueError:
        return True


class _Seal:
    """SEAL's objects for one TenSEAL context: TenSEAL's ``sealapi`` works on TenSEAL's own C++ types directly.

    A ciphertext of ``slots`` CKKS slots carries ``slots * slot_values`` reals: with ``slot_values`` 2 a pair is
    encoded as one complex number (real and imaginary parts; the same noise per value, at most sqrt(2) more on a
    plaintext coefficient, inside value_limit's margin bit). A symmetric ciphertext goes out ``seeded``: SEAL sends
    its uniformly random polynomial as the seed it was drawn from, and loading draws it again (half the bytes, no
    cost in range or noise)."""

    def __init__(self, ctx, slots: int, slot_values: int, seeded: bool):
        import tenseal.sealapi as sealapi

        self.api, self.slots, self.slot_values = sealapi, slots, slot_values
        self.context = ctx.seal_context().data
        self.scale = ctx.global_scale
        self.encoder = sealapi.CKKSEncoder(self.context)
        self.evaluator = sealapi.Evaluator(self.context)
        self.encryptor = self.decryptor = None
        self.symmetric = _symmetric(ctx)
        self.seeded = seeded and self.symmetric
        if ctx.is_private():
            secret = ctx.secret_key().data
            self.decryptor = sealapi.Decryptor(self.context, secret)
            self.encryptor = sealapi.Encryptor(self.context, secret if self.symmetric else ctx.public_key().data)
        self._kept: OrderedDict[bytes, object] = OrderedDict()  # parsed on arrival, taken by the sum
        self._sizes: dict[bytes, int] = {}
        self._kept_bytes, self._lock = 0, threading.Lock()

    @property
    def per_ciphertext(self) -> int:
        return self.slots * self.slot_values

    def _through_file(self, write, read):
        path = os.path.join(_scratch(), f"{threading.get_ident()}-{next(_NAMES)}")
        try:
            write(path)
            return read(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _bytes(self, obj) -> bytes:
        return self._through_file(obj.save, lambda path: Path(path).read_bytes())

    def encrypt(self, values: np.ndarray) -> bytes:
        """One ciphertext of at most ``per_ciphertext`` values (zeros after them)."""
        padded = np.zeros(self.per_ciphertext)
        padded[:len(values)] = values
        encoded = (padded[:self.slots] + 1j * padded[self.slots:] if self.slot_values == 2 else padded).tolist()
        plain = self.api.Plaintext()
        self.encoder.encode(encoded, self.scale, plain)
        if self.seeded:
            return self._bytes(self.encryptor.encrypt_symmetric(plain))
        cipher = self.api.Ciphertext(self.context)
        (self.encryptor.encrypt_symmetric if self.symmetric else self.encryptor.encrypt)(plain, cipher)
        return self._bytes(cipher)

    def load(self, chunk: bytes, keep: bool = False):
        """A ciphertext of this context's data level, or PayloadError: what SEAL refuses to load, and what loads
        but cannot be added here (another level, scale or size). ``keep``: hold it (up to LOADED_CACHE_BYTES, the
        oldest dropped first) until a sum takes it, so the checks on arrival and the sum parse each chunk once."""
        digest = hashlib.blake2b(chunk, digest_size=16).digest()
        with self._lock:
            if (kept := self._kept.get(digest)) is not None:
                return kept
        cipher = self._parse(chunk)
        if keep:
            size = 2 * 8 * cipher.poly_modulus_degree() * cipher.coeff_modulus_size()  # two polynomials in memory
            with self._lock:
                self._kept[digest], self._sizes[digest] = cipher, size
                self._kept_bytes += size
                while self._kept_bytes > LOADED_CACHE_BYTES and len(self._kept) > 1:
                    oldest, _ = self._kept.popitem(last=False)
                    self._kept_bytes -= self._sizes.pop(oldest)
        return cipher

    def take(self, chunk: bytes):
        """The ciphertext of ``chunk``, released from the kept ones (parsed now if it was not kept)."""
        digest = hashlib.blake2b(chunk, digest_size=16).digest()
        with self._lock:
            if (kept := self._kept.pop(digest, None)) is not None:
                self._kept_bytes -= self._sizes.pop(digest)
                return kept
        return self._parse(chunk)

    def _parse(self, chunk: bytes):
        cipher = self.api.Ciphertext(self.context)
        try:
            self._through_file(lambda path: Path(path).write_bytes(chunk), lambda path: cipher.load(self.context, path))
        except Exception as exc:  # SEAL raises bare ValueError/RuntimeError on garbage
            raise PayloadError(f"ciphertext does not parse under this context ({exc})") from exc
        if (cipher.size() != 2 or cipher.parms_id() != self.context.first_parms_id() or not cipher.is_ntt_form()
                or cipher.scale != self.scale):
            raise PayloadError(f"a ciphertext of {cipher.size()} polynomials at scale 2^{np.log2(cipher.scale):.1f} "
                               "off this context's data level (fresh ones have 2 at its scale)")
        return cipher

    def sum(self, chunks: list[bytes]) -> bytes:
        total = self.take(chunks[0])
        for chunk in chunks[1:]:
            self.evaluator.add_inplace(total, self.take(chunk))
        return self._bytes(total)

    def decrypt(self, chunk: bytes) -> np.ndarray:
        plain = self.api.Plaintext()
        self.decryptor.decrypt(self.load(chunk), plain)
        if self.slot_values == 2:
            z = np.asarray(self.encoder.decode_complex(plain))
            return np.concatenate([z.real, z.imag])
        return np.asarray(self.encoder.decode_double(plain), dtype=np.float64)


def _worker_init(context_bytes: bytes, slots: int, slot_values: int, seeded: bool) -> None:
    """A pool worker of this party's own process: loads the party's context once."""
    import tenseal as ts

    _WORKER["seal"] = _Seal(ts.context_from(context_bytes), slots, slot_values, seeded)


def _worker_encrypt(values: np.ndarray) -> list[bytes]:
    seal = _WORKER["seal"]
    step = seal.per_ciphertext
    return [seal.encrypt(values[i:i + step]) for i in range(0, len(values), step)]


def _worker_decrypt(chunks: list[bytes]) -> np.ndarray:
    return np.concatenate([_WORKER["seal"].decrypt(c) for c in chunks])


def _results(parts: list) -> list:
    """The pool's results in order; a ciphertext a worker could not parse is a PayloadError here too."""
    try:
        return [part.result() for part in parts]
    except Exception as exc:  # SEAL raises bare ValueError/RuntimeError on garbage
        raise PayloadError(f"ciphertext does not parse under this context ({exc})") from exc


class CKKSCodec:
    """Encrypt / add / decrypt flat float vectors as lists of serialized CKKS ciphertexts (SEAL's own format).

    ``slots`` CKKS slots per ciphertext, ``slot_values`` reals per slot (2: complex encoding), symmetric
    ciphertexts ``seeded`` (crypto.slot_values, crypto.seeded: together 4x fewer bytes than one real per slot,
    unseeded). With ``workers > 1``, a silo encrypts and decrypts vectors of at least PARALLEL_MIN_CHUNKS
    ciphertexts in parts across a pool of that many processes, children of its own process that load its own
    context (SEAL's calls hold the GIL, so threads do not help); smaller vectors stay in this process. Additions
    stay in this process: they are cheaper than shipping the ciphertexts to a worker (measured: 3x slower with 2
    workers)."""

    scheme = "ckks"

    def __init__(self, context_bytes: bytes, slots: int, public_context: bytes | None = None, workers: int = 1,
                 slot_values: int = 2, seeded: bool = True):
        """``context_bytes``: a silo's secret context (TenSEAL) or the coordinator's public context (tagged);
        ``workers``: processes that encrypt and decrypt large vectors (1: none)."""
        import tenseal as ts

        if context_bytes.startswith(PUBLIC_TAG):
            self.key_id, raw = _split_public(context_bytes)
        else:
            self.key_id, raw = key_id(context_bytes), context_bytes
        try:
            self._ctx = ts.context_from(raw)
        except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError on garbage
            raise PayloadError(f"not a TenSEAL context ({exc})") from exc
        if slot_values not in (1, 2):
            raise ValueError(f"slot_values must be 1 or 2, not {slot_values}")
        self._seal = _Seal(self._ctx, slots, slot_values, seeded)
        self.slots, self.slot_values, self.seeded = slots, slot_values, seeded
        self.per_ciphertext = self._seal.per_ciphertext
        self.workers = max(1, workers)
        self._raw, self._pool = raw, None
        self.context_id = context_fingerprint(public_context if public_context is not None else context_bytes)

    @classmethod
    def of(cls, crypto: CryptoConfig, context_bytes: bytes, public_context: bytes | None = None,
           workers: int = 1) -> CKKSCodec:
        """The codec ``crypto`` describes (its ring's slots, values per slot, seeding)."""
        return cls(context_bytes, crypto.poly_modulus_degree // 2, public_context=public_context, workers=workers,
                   slot_values=crypto.slot_values, seeded=crypto.seeded)

    @property
    def can_decrypt(self) -> bool:
        return self._ctx.is_private()

    def matches(self, public_context: bytes) -> bool:
        """Whether ``public_context`` (the coordinator's) names this secret context's key, and sums made under its
        parameters decrypt here."""
        probe = np.linspace(-1.0, 1.0, 8)
        try:
            public = CKKSCodec(public_context, self.slots, slot_values=self.slot_values, seeded=self.seeded)
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
        flat, step = np.asarray(flat, dtype=np.float64), self.per_ciphertext
        n_chunks = -(-len(flat) // step)
        if (pool := self._pool_for(n_chunks)) is not None:
            parts = [pool.submit(_worker_encrypt, flat[a * step:b * step]) for a, b in self._bounds(n_chunks)]
            return [chunk for part in parts for chunk in part.result()]
        return [self._seal.encrypt(flat[i:i + step]) for i in range(0, len(flat), step)]

    def _pool_for(self, n_chunks: int) -> ProcessPoolExecutor | None:
        """The worker pool (started on first use) when ``n_chunks`` ciphertexts are worth splitting, else None."""
        if self.workers == 1 or n_chunks < PARALLEL_MIN_CHUNKS:
            return None
        if self._pool is None:  # spawn: a fork would copy Prefect's and torch's threads
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init,
                                             initargs=(self._raw, self.slots, self.slot_values, self.seeded))
            atexit.register(self._pool.shutdown, cancel_futures=True)
        return self._pool

    def _bounds(self, n_chunks: int) -> list[tuple[int, int]]:
        step = -(-n_chunks // self.workers)
        return [(a, min(a + step, n_chunks)) for a in range(0, n_chunks, step)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def chunk_problem(self, chunks: list[bytes], length: int) -> str | None:
        """Why ``chunks`` are not ``length`` values' ciphertexts under this context (each parsed, its level,
        scale and size checked), or None: a silo's garbage is found before it is added to anyone's sum."""
        expected = -(-length // self.per_ciphertext)
        if len(chunks) != expected:
            return f"{len(chunks)} ciphertexts (the layout needs {expected})"
        for i, chunk in enumerate(chunks):
            try:
                self._seal.load(chunk, keep=True)
            except PayloadError as exc:
                return f"ciphertext {i}: {exc}"
        return None

    def keeps(self, n_chunks: int) -> bool:
        """Whether ``n_chunks`` parsed ciphertexts fit what this party keeps parsed (LOADED_CACHE_BYTES): only then
        does parsing them ahead of their sum (:meth:`chunk_problem`) save the sum's parsing."""
        data = self._seal.context.first_context_data().parms()
        return n_chunks * 2 * 8 * data.poly_modulus_degree() * len(data.coeff_modulus()) <= LOADED_CACHE_BYTES

    def add(self, payloads: list[list[bytes]]) -> list[bytes]:
        n_chunks = {len(p) for p in payloads}
        if len(n_chunks) != 1:
            raise PayloadError(f"updates have different numbers of ciphertexts: {sorted(n_chunks)}")
        return [self._seal.sum([p[j] for p in payloads]) for j in range(n_chunks.pop())]

    def decrypt(self, chunks: list[bytes], length: int) -> np.ndarray:
        if not self.can_decrypt:
            raise DecryptionKeyError("this context holds no secret key (the coordinator's public context "
                                     "cannot decrypt); decrypt with a silo's key store")
        if (pool := self._pool_for(len(chunks))) is not None:
            parts = [pool.submit(_worker_decrypt, chunks[a:b]) for a, b in self._bounds(len(chunks))]
            flat = np.concatenate(_results(parts))
        else:
            flat = np.concatenate([self._seal.decrypt(c) for c in chunks])
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
