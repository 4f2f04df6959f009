"""Encryption as a filter between the trainer and the aggregator (NVIDIA FLARE style).

The trainer produces a plaintext :class:`LocalUpdate` and never imports TenSEAL; the
encrypt filter weights it by its sample count and encrypts it; the aggregator only adds
ciphertexts it has checked belong together; a key holder decrypts the sum and divides by
the total sample count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrec.crypto import Codec, PlainCodec
from fedrec.errors import PayloadError
from fedrec.federation.aggregate import flatten_state, layout_of, unflatten_state
from fedrec.wire.exchange import Exchange, global_key
from fedrec.wire.payload import EncryptedUpdate, layout_size


@dataclass(frozen=True)
class AggregateResult:
    """The decrypted aggregate of one round: mean update and who contributed."""

    mean_delta: dict[str, torch.Tensor]
    total_samples: int
    contributors: tuple[str, ...]


@dataclass(frozen=True)
class LocalUpdate:
    """A silo's plaintext update; lives only inside the silo."""

    silo_id: str
    round: int
    n_samples: int
    delta: dict[str, torch.Tensor]


#: a decrypted sum further than this (in grid steps) from the grid means CKKS noise ate the margin
MAX_GRID_DEVIATION = 0.25


def quantize(flat: np.ndarray, bits: int) -> np.ndarray:
    """Round to multiples of 2^-bits (exact in float64, so plaintext sums of them are exact too)."""
    if bits <= 0:
        return flat
    step = 2.0 ** bits
    return np.round(flat * step) / step


def encrypt_update(update: LocalUpdate, codec: Codec, quantization_bits: int = 0,
                   max_abs: float | None = None) -> EncryptedUpdate:
    """Weight by n_samples, round to the grid, then encrypt: the aggregator only has to add. ``max_abs``: the
    largest weighted value this silo may send so that the sum over all contributors stays in the HE range."""
    flat = quantize(flatten_state(update.delta) * float(update.n_samples), quantization_bits)
    if max_abs is not None and flat.size and float(np.max(np.abs(flat))) >= max_abs:
        raise PayloadError(f"silo {update.silo_id!r}, round {update.round}: a weighted update value of "
                           f"{float(np.max(np.abs(flat))):.3g} could overflow the CKKS sum (limit {max_abs:.3g} per "
                           "silo); add a data prime to crypto.coeff_mod_bit_sizes or lower crypto.global_scale_bits")
    return EncryptedUpdate(kind="update", round=update.round, silo_id=update.silo_id, n_samples=update.n_samples,
                           scheme=codec.scheme, context_id=codec.context_id, layout=layout_of(update.delta),
                           chunks=tuple(codec.encrypt(flat)), quantization_bits=quantization_bits)


def update_problems(u: EncryptedUpdate, codec: Codec, server_round: int,
                    ref: EncryptedUpdate | None = None) -> list[str]:
    """Why ``u`` cannot be added to this round's sum (empty: it can); ``ref`` is an already accepted update."""
    problems = []
    if u.kind != "update":
        problems.append(f"kind {u.kind!r}")
    if u.round != server_round:
        problems.append(f"round {u.round} (expected {server_round})")
    if u.scheme != codec.scheme:
        problems.append(f"scheme {u.scheme!r} (aggregator runs {codec.scheme!r})")
    if u.context_id != codec.context_id:
        problems.append(f"encrypted under foreign context {u.context_id} (expected {codec.context_id})")
    if ref is not None and u.layout != ref.layout:
        problems.append("tensor layout differs from the other silos'")
    if ref is not None and u.quantization_bits != ref.quantization_bits:
        problems.append(f"quantization_bits {u.quantization_bits} differs from {ref.quantization_bits}")
    if u.n_samples <= 0:
        problems.append(f"n_samples {u.n_samples}")
    return problems


def aggregate_updates(updates: list[EncryptedUpdate], codec: Codec, server_round: int) -> EncryptedUpdate:
    """Sum ciphertexts and sample counts of one round; refuses anything that does not belong."""
    if not updates:
        raise PayloadError(f"round {server_round}: no updates to aggregate")
    ref = updates[0]
    for u in updates:
        if problems := update_problems(u, codec, server_round, ref):
            raise PayloadError(f"update from silo {u.silo_id!r} refused: " + ", ".join(problems))
    ordered = sorted(updates, key=lambda u: u.silo_id)  # fixed order: HE and plain runs add alike
    return EncryptedUpdate(kind="aggregate", round=server_round, silo_id="aggregate",
                           n_samples=sum(u.n_samples for u in ordered), scheme=codec.scheme,
                           context_id=codec.context_id, layout=ref.layout,
                           chunks=tuple(codec.add([list(u.chunks) for u in ordered])),
                           contributors=tuple(u.silo_id for u in ordered), quantization_bits=ref.quantization_bits)


def decrypt_aggregate(aggregate: EncryptedUpdate, codec: Codec) -> AggregateResult:
    """Key holder side: decrypt the sum, divide by the total number of samples."""
    if aggregate.kind != "aggregate":
        raise PayloadError(f"expected an aggregate payload, got {aggregate.kind!r}")
    if aggregate.context_id != codec.context_id:
        raise PayloadError(f"aggregate was made under context {aggregate.context_id}, ours is {codec.context_id}")
    total = codec.decrypt(list(aggregate.chunks), layout_size(aggregate.layout))
    if aggregate.quantization_bits > 0:
        steps = total * 2.0 ** aggregate.quantization_bits
        deviation = float(np.max(np.abs(steps - np.round(steps)), initial=0.0))
        if deviation > MAX_GRID_DEVIATION:
            raise PayloadError(f"decrypted sum is {deviation:.2f} grid steps off the 2^-{aggregate.quantization_bits} grid: "
                               "CKKS noise exceeds the margin; lower crypto.quantization_bits or raise global_scale_bits")
        total = np.round(steps) / 2.0 ** aggregate.quantization_bits
    flat = total / float(aggregate.n_samples)
    return AggregateResult(mean_delta=unflatten_state(flat, aggregate.layout),
                           total_samples=aggregate.n_samples, contributors=aggregate.contributors)


def _plaintext_payload(kind: str, server_round: int, state: dict[str, torch.Tensor], n_samples: int = 0,
                       contributors: tuple[str, ...] = ()) -> EncryptedUpdate:
    """A payload that is meant to be readable (an aggregate of several silos, never one silo's update)."""
    codec = PlainCodec()
    return EncryptedUpdate(kind=kind, round=server_round, silo_id=kind, n_samples=n_samples, scheme=codec.scheme,
                           context_id=codec.context_id, layout=layout_of(state),
                           chunks=tuple(codec.encrypt(flatten_state(state))), contributors=contributors)


_PLAINTEXT_KINDS = {"global": "global-model", "mean": "round-mean"}


def _plaintext_flat(payload: EncryptedUpdate, kind: str) -> np.ndarray:
    if payload.kind != kind or payload.scheme != "plain":
        raise PayloadError(f"not a {_PLAINTEXT_KINDS[kind]} payload (kind={payload.kind!r}, scheme={payload.scheme!r})")
    return PlainCodec().decrypt(list(payload.chunks), layout_size(payload.layout))


def encode_global(state: dict[str, torch.Tensor], server_round: int) -> EncryptedUpdate:
    """The global item tower after a round, as a plaintext payload."""
    return _plaintext_payload("global", server_round, state)


def decode_global(payload: EncryptedUpdate) -> dict[str, torch.Tensor]:
    return unflatten_state(_plaintext_flat(payload, "global"), payload.layout)


def encode_mean(result: AggregateResult, server_round: int) -> EncryptedUpdate:
    """The key holder's decrypted round mean, as a plaintext payload."""
    return _plaintext_payload("mean", server_round, result.mean_delta, result.total_samples, result.contributors)


def decode_mean(payload: EncryptedUpdate, server_round: int) -> AggregateResult:
    flat = _plaintext_flat(payload, "mean")
    if payload.round != server_round:
        raise PayloadError(f"not the round-{server_round} mean (it is of round {payload.round})")
    if not np.all(np.isfinite(flat)):
        raise PayloadError(f"round {server_round}: the decrypted mean holds NaN or Inf")
    return AggregateResult(mean_delta=unflatten_state(flat, payload.layout), total_samples=payload.n_samples,
                           contributors=payload.contributors)


def load_global(exchange: Exchange, server_round: int) -> dict[str, torch.Tensor]:
    """The global item tower after ``server_round`` rounds (0: the initial model) from a run's exchange."""
    key = global_key(server_round)
    payload = EncryptedUpdate.from_bytes(exchange.get(key), expect_kind="global", source=key)
    if payload.round != server_round:
        raise PayloadError(f"{key}: holds the model of round {payload.round}")
    return decode_global(payload)
