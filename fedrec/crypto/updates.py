"""Encryption as a filter between the trainer and the aggregator (NVIDIA FLARE style).

The trainer produces a plaintext :class:`LocalUpdate` and never imports TenSEAL; the
encrypt filter weights it by its share of the round's samples, rounds it to integers, packs two per
slot, adds the silo's pairwise masks (:mod:`fedrec.crypto.masking`) and encrypts it; the
aggregator only adds ciphertexts it has checked belong together (each chunk parsed, per silo); the decrypting silo
rebuilds that sum itself from the signed updates, decrypts it, removes the survivors' masks with the secrets their
reveals rebuild (:mod:`fedrec.crypto.secagg`), unpacks it and reads the round's mean update off the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrec.core.config import CryptoConfig
from fedrec.core.errors import PayloadError
from fedrec.core.state import TensorSpec, flatten_state, layout_of, layout_size, unflatten_state
from fedrec.crypto import masking, secagg
from fedrec.crypto.ckks import Codec, PlainCodec
from fedrec.wire.payload import EncryptedUpdate


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


def encrypt_update(update: LocalUpdate, codec: Codec, crypto: CryptoConfig, total_samples: int,
                   mask: np.ndarray | None = None) -> EncryptedUpdate:
    """Weight by n_samples / total_samples (the round's participants' declared samples), round to the grid as
    integers, pack ``crypto.pack`` per slot, add this silo's pairwise ``mask`` (mod 2^mask_bits), then encrypt:
    the aggregator only has to add."""
    q = masking.quantize_share(flatten_state(update.delta), update.n_samples, total_samples, crypto.quantization_bits)
    masking.check_bound(q, crypto.lane_bits, crypto.quantization_bits, update.n_samples, total_samples,
                        f"silo {update.silo_id!r}, round {update.round}")
    carried = masking.encode(masking.pack_lanes(q, crypto.pack, crypto.lane_bits), mask, crypto.mask_bits)
    return EncryptedUpdate(kind="update", round=update.round, silo_id=update.silo_id, n_samples=update.n_samples,
                           scheme=codec.scheme, context_id=codec.context_id, layout=layout_of(update.delta),
                           chunks=tuple(codec.encrypt(carried)), quantization_bits=crypto.quantization_bits,
                           mask_bits=crypto.mask_bits, pack=crypto.pack, total_samples=total_samples)


def update_slots(layout: tuple[TensorSpec, ...], pack: int) -> int:
    """How many slot values carry a payload of this layout."""
    return masking.n_slots(layout_size(layout), pack)


def update_problems(u: EncryptedUpdate, codec: Codec, server_round: int, crypto: CryptoConfig,
                    layout: tuple[TensorSpec, ...] | None = None, n_samples: int | None = None,
                    total_samples: int | None = None) -> list[str]:
    """Why ``u`` cannot be added to this round's sum (empty: it can). ``layout``: the global model's;
    ``n_samples``: what the silo declared when it joined (a silo cannot inflate its weight later);
    ``total_samples``: the participants' declared total the round's weights divide by."""
    problems = []
    if u.kind != "update":
        problems.append(f"kind {u.kind!r}")
    if u.round != server_round:
        problems.append(f"round {u.round} (expected {server_round})")
    if u.scheme != codec.scheme:
        problems.append(f"scheme {u.scheme!r} (aggregator runs {codec.scheme!r})")
    if u.context_id != codec.context_id:
        problems.append(f"encrypted under foreign context {u.context_id} (expected {codec.context_id})")
    if layout is not None and u.layout != layout:
        problems.append("tensor layout differs from the global model's")
    if (u.quantization_bits, u.mask_bits, u.pack) != (crypto.quantization_bits, crypto.mask_bits, crypto.pack):
        problems.append(f"encoding 2^-{u.quantization_bits} x{u.pack} mod 2^{u.mask_bits} (expected "
                        f"2^-{crypto.quantization_bits} x{crypto.pack} mod 2^{crypto.mask_bits})")
    if u.n_samples <= 0 or (n_samples is not None and u.n_samples != n_samples):
        problems.append(f"n_samples {u.n_samples} (declared {n_samples} when it joined)")
    if total_samples is not None and u.total_samples != total_samples:
        problems.append(f"weighted by a total of {u.total_samples} samples (the round's is {total_samples})")
    if u.scheme == codec.scheme and not problems and (bad := codec.chunk_problem(list(u.chunks),
                                                                                update_slots(u.layout, u.pack))):
        problems.append(bad)  # garbage ciphertext is this silo's failure, found before the sum
    if u.scheme == "plain" and not problems:  # readable here (he: false): encoded values lie in [-1, 1)
        try:
            values = PlainCodec().decrypt(list(u.chunks), update_slots(u.layout, u.pack))
        except PayloadError as exc:
            problems.append(str(exc))
        else:
            if not np.all(np.isfinite(values)) or np.any(np.abs(values) > 1.0):
                problems.append("values that are not finite or outside the encoding's [-1, 1)")
    return problems


def aggregate_updates(updates: list[EncryptedUpdate], codec: Codec, server_round: int,
                      crypto: CryptoConfig) -> EncryptedUpdate:
    """Sum ciphertexts and sample counts of one round; refuses anything that does not belong."""
    if not updates:
        raise PayloadError(f"round {server_round}: no updates to aggregate")
    ref = updates[0]
    for u in updates:
        if problems := update_problems(u, codec, server_round, crypto, ref.layout, total_samples=ref.total_samples):
            raise PayloadError(f"update from silo {u.silo_id!r} refused: " + ", ".join(problems))
    n_samples = sum(u.n_samples for u in updates)
    if n_samples > ref.total_samples:
        raise PayloadError(f"round {server_round}: the updates weigh by a total of {ref.total_samples} samples but "
                           f"carry {n_samples}: their weights sum past one")
    ordered = sorted(updates, key=lambda u: u.silo_id)  # fixed order: HE and plain runs add alike
    return EncryptedUpdate(kind="aggregate", round=server_round, silo_id="aggregate", n_samples=n_samples,
                           scheme=codec.scheme, context_id=codec.context_id, layout=ref.layout,
                           chunks=tuple(codec.add([list(u.chunks) for u in ordered])),
                           contributors=tuple(u.silo_id for u in ordered), quantization_bits=ref.quantization_bits,
                           mask_bits=ref.mask_bits, pack=ref.pack, total_samples=ref.total_samples)


@dataclass(frozen=True)
class Masks:
    """What removes the survivors' masks from their sum: their rebuilt self-mask seeds, the dropped silos' rebuilt
    mask keys (name -> (private, public)), the survivors' mask public keys and the round's mask info."""

    seeds: tuple[bytes, ...]
    dropped: dict[str, tuple[bytes, str]]
    survivors: dict[str, str]
    info: bytes

    def __repr__(self) -> str:  # never print secrets
        return f"Masks(survivors={sorted(self.survivors)}, dropped={sorted(self.dropped)})"


def decrypt_aggregate(aggregate: EncryptedUpdate, codec: Codec, masks: Masks | None = None) -> AggregateResult:
    """Decryptor side: decrypt the sum, recover its integers, remove the masks (double masking: ``masks``; unmasked
    or pairwise-cancelling sums: none), unpack the lanes: the mean update."""
    if aggregate.kind != "aggregate":
        raise PayloadError(f"expected an aggregate payload, got {aggregate.kind!r}")
    if aggregate.context_id != codec.context_id:
        raise PayloadError(f"aggregate was made under context {aggregate.context_id}, ours is {codec.context_id}")
    if (aggregate.mask_bits <= 0 or aggregate.pack < 1 or aggregate.mask_bits % aggregate.pack
            or not 0 < aggregate.n_samples <= aggregate.total_samples):
        raise PayloadError(f"aggregate has mask_bits {aggregate.mask_bits}, pack {aggregate.pack}, n_samples "
                           f"{aggregate.n_samples} of a weighting total {aggregate.total_samples}")
    if masks is not None and sorted(masks.survivors) != sorted(aggregate.contributors):
        raise PayloadError(f"the masks are of {sorted(masks.survivors)}, the sum of {list(aggregate.contributors)}")
    total = codec.decrypt(list(aggregate.chunks), update_slots(aggregate.layout, aggregate.pack))
    residue = masking.residues(total, len(aggregate.contributors), aggregate.mask_bits)
    if masks is not None:
        residue = secagg.unmask(residue, list(masks.seeds), masks.dropped, masks.survivors, masks.info,
                                aggregate.mask_bits)
    integers = masking.unpack_lanes(masking.center(residue, aggregate.mask_bits), aggregate.pack,
                                    aggregate.mask_bits // aggregate.pack, layout_size(aggregate.layout))
    # silos missing from the sum (a dropout): their weights are missing too; scale the weights back to one
    flat = (integers.astype(np.float64) / 2.0 ** aggregate.quantization_bits
            * (aggregate.total_samples / aggregate.n_samples))
    return AggregateResult(mean_delta=unflatten_state(flat, aggregate.layout),
                           total_samples=aggregate.n_samples, contributors=aggregate.contributors)


def invalid_encodings(updates: list[EncryptedUpdate], codec: Codec) -> dict[str, str]:
    """The silos whose ciphertext, decrypted alone, is not a valid encoding (NaN, or off the integer grid, e.g.
    shifted by half a step): whoever made a sum undecodable. Decrypting one masked update reveals nothing (its
    residues are uniform); only whether they lie on the grid is looked at."""
    culprits = {}
    for u in updates:
        try:
            masking.residues(codec.decrypt(list(u.chunks), update_slots(u.layout, u.pack)), 1, u.mask_bits)
        except PayloadError as exc:
            culprits[u.silo_id] = f"its update is not a valid encoding ({exc})"
    return culprits


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
