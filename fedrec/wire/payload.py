"""Typed payloads that cross a silo boundary, with explicit serialization and validation on receipt.

Wire format: ``FEDREC1\\n`` | 8-byte big-endian header length | JSON header | chunk bytes.
The header names the payload kind, scheme (ckks | plain), the public-context fingerprint,
the tensor layout and each chunk's length and SHA-256, so truncation, bit flips, foreign
ciphertexts and mixed-up kinds are refused with :class:`PayloadError`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Literal

from fedrec.core.errors import PayloadError
from fedrec.core.state import TensorSpec

MAGIC = b"FEDREC1\n"
Kind = Literal["update", "aggregate", "mean", "global"]
Scheme = Literal["ckks", "plain"]


@dataclass(frozen=True)
class EncryptedUpdate:
    """One silo's weighted update (kind=update), their sum (aggregate) or the global model (global).

    ``chunks`` hold CKKS ciphertexts (scheme=ckks) or little-endian float64 arrays (scheme=plain).
    For an update the plaintext behind the chunks is ``n_samples / total_samples * (local - global)`` on the grid
    2^-quantization_bits, as integers packed ``pack`` per slot, modulo 2^mask_bits plus the silo's pairwise masks.
    """

    kind: Kind
    round: int
    silo_id: str
    n_samples: int
    scheme: Scheme
    context_id: str
    layout: tuple[TensorSpec, ...]
    chunks: tuple[bytes, ...]
    contributors: tuple[str, ...] = field(default=())
    #: values are multiples of 2^-quantization_bits (0: not quantized)
    quantization_bits: int = 0
    #: > 0: the chunks carry integers modulo 2^mask_bits (masked or not), centred and scaled to [-1, 1)
    mask_bits: int = 0
    #: integers packed per slot, as signed lanes of mask_bits / pack bits
    pack: int = 1
    #: the round's total declared samples the update's weight divides by (its weight: n_samples / total_samples)
    total_samples: int = 0

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks)

    def to_bytes(self) -> bytes:
        header = {
            "kind": self.kind, "round": self.round, "silo_id": self.silo_id, "n_samples": self.n_samples,
            "scheme": self.scheme, "context_id": self.context_id,
            "layout": [[t.name, list(t.shape)] for t in self.layout],
            "chunks": [[len(c), hashlib.sha256(c).hexdigest()] for c in self.chunks],
            "contributors": list(self.contributors), "quantization_bits": self.quantization_bits,
            "mask_bits": self.mask_bits, "pack": self.pack, "total_samples": self.total_samples,
        }
        raw = json.dumps(header, sort_keys=True).encode()
        return MAGIC + struct.pack(">Q", len(raw)) + raw + b"".join(self.chunks)

    @classmethod
    def from_bytes(cls, data: bytes, *, expect_kind: Kind | None = None, source: str = "payload") -> "EncryptedUpdate":
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
            raise PayloadError(f"{source}: not a fedrec payload (bad magic); was it written by another tool?")
        (hlen,) = struct.unpack(">Q", data[len(MAGIC):len(MAGIC) + 8])
        start = len(MAGIC) + 8
        try:
            header = json.loads(data[start:start + hlen])
            layout = tuple(TensorSpec(str(n), tuple(int(d) for d in s)) for n, s in header["layout"])
            sizes = [(int(n), str(h)) for n, h in header["chunks"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise PayloadError(f"{source}: corrupt header ({exc})") from exc
        body = memoryview(data)[start + hlen:]
        if len(body) != sum(n for n, _ in sizes):
            raise PayloadError(f"{source}: truncated or padded: body has {len(body)} bytes, "
                               f"header announces {sum(n for n, _ in sizes)}")
        chunks, offset = [], 0
        for i, (n, digest) in enumerate(sizes):
            chunk = bytes(body[offset:offset + n])
            offset += n
            if hashlib.sha256(chunk).hexdigest() != digest:
                raise PayloadError(f"{source}: chunk {i} fails its checksum (corrupted in transit?)")
            chunks.append(chunk)
        payload = cls(kind=header["kind"], round=int(header["round"]), silo_id=str(header["silo_id"]),
                      n_samples=int(header["n_samples"]), scheme=header["scheme"],
                      context_id=str(header["context_id"]), layout=layout, chunks=tuple(chunks),
                      contributors=tuple(header.get("contributors", [])),
                      quantization_bits=int(header.get("quantization_bits", 0)),
                      mask_bits=int(header.get("mask_bits", 0)), pack=int(header.get("pack", 1)),
                      total_samples=int(header.get("total_samples", 0)))
        if expect_kind is not None and payload.kind != expect_kind:
            raise PayloadError(f"{source}: expected a {expect_kind!r} payload, got {payload.kind!r}")
        if payload.scheme not in ("ckks", "plain"):
            raise PayloadError(f"{source}: unknown scheme {payload.scheme!r}")
        return payload
