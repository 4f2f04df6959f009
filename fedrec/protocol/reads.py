"""The round's reads from the exchange that both parties do: a silo's signed update, checked for every reason
:func:`fedrec.crypto.updates.update_problems` finds; the mask keys and reveals that rebuild the survivors' masks;
the coordinator's signed global model."""

from __future__ import annotations

import time

import torch

from fedrec.core.config import CryptoConfig
from fedrec.core.errors import PayloadError
from fedrec.core.state import TensorSpec
from fedrec.crypto import secagg
from fedrec.crypto.ckks import Codec
from fedrec.crypto.updates import Masks, decode_global, update_problems
from fedrec.wire.exchange import (
    COORDINATOR_KEY,
    Exchange,
    candidate_key,
    global_key,
    mask_keys_key,
    reveal_key,
    update_key,
)
from fedrec.wire.messages import MaskKeys, Reveal, Unmask
from fedrec.wire.payload import EncryptedUpdate
from fedrec.wire.trust import COORDINATOR, PublicIdentity, Roster, self_signed_identity


def read_update(exchange: Exchange, roster: Roster, server_round: int, silo: str, codec: Codec,
                crypto: CryptoConfig, layout: tuple[TensorSpec, ...] | None, n_samples: int | None,
                total_samples: int | None) -> EncryptedUpdate:
    """Silo ``silo``'s update of the round from the exchange, verified: signed by it, and every reason
    :func:`update_problems` finds (each chunk parsed) refuses it."""
    key = update_key(server_round, silo)
    update = EncryptedUpdate.from_bytes(exchange.read(key, roster.get(silo)), expect_kind="update", source=key)
    problems = update_problems(update, codec, server_round, crypto, layout, n_samples, total_samples)
    if update.silo_id != silo:
        problems.append(f"claims to be from silo {update.silo_id!r}")
    if problems:
        raise PayloadError(f"{key} refused: " + ", ".join(problems))
    return update


def read_mask_keys(exchange: Exchange, roster: Roster, server_round: int, silo: str) -> MaskKeys:
    key = mask_keys_key(server_round, silo)
    keys = MaskKeys.from_json(exchange.read(key, roster.get(silo)), key)
    if (keys.silo_id, keys.round) != (silo, server_round):
        raise PayloadError(f"{key}: mask keys of silo {keys.silo_id!r}, round {keys.round}")
    return keys


def gather_masks(exchange: Exchange, roster: Roster, run_id: str, unmask: Unmask, points: dict[str, int],
                 deadline: float, poll: float, pause=time.sleep) -> Masks:
    """Rebuild what removes the survivors' masks from the survivors' reveals as they arrive (signed by each; a
    share counts only at its revealer's point, ``points``), until every secret verifies against its commitment or
    ``deadline`` (time.monotonic) passes (:class:`~fedrec.crypto.secagg.MaskRecoveryError`)."""
    r = unmask.round
    keys = {s: read_mask_keys(exchange, roster, r, s) for s in (*unmask.survivors, *unmask.dropped)}
    reveals: dict[str, Reveal] = {}
    for delay in exchange.pauses(poll):
        waiting = [s for s in unmask.survivors if s not in reveals]
        arrived = exchange.present(reveal_key(r, s) for s in waiting)
        for silo in waiting:
            if reveal_key(r, silo) in arrived:
                try:
                    reveal = Reveal.from_json(exchange.read(reveal_key(r, silo), roster.get(silo)), reveal_key(r, silo))
                except PayloadError:
                    reveal = Reveal(silo_id=silo, round=r)  # a forged or malformed reveal counts for nothing
                reveals[silo] = reveal if (reveal.silo_id, reveal.round) == (silo, r) else Reveal(silo_id=silo, round=r)
        try:
            return _rebuild_masks(keys, reveals, unmask, points, secagg.mask_info(run_id, r))
        except secagg.MaskRecoveryError:
            if time.monotonic() >= deadline or len(reveals) == len(unmask.survivors):
                raise
        pause(delay)
    raise AssertionError("unreachable: Exchange.pauses never ends")


def _shares_of(reveals: dict[str, Reveal], points: dict[str, int], silo: str, kind: str) -> dict[int, int]:
    shares = {}
    for revealer, reveal in reveals.items():
        share = getattr(reveal, kind).get(silo)
        if share is not None and share[0] == points.get(revealer):
            try:
                shares[share[0]] = int(share[1], 16) % secagg.PRIME
            except ValueError:
                continue
    return shares


def _rebuild_masks(keys: dict[str, MaskKeys], reveals: dict[str, Reveal], unmask: Unmask, points: dict[str, int],
                   info: bytes) -> Masks:
    seeds = tuple(secagg.recover_seed(_shares_of(reveals, points, s, "self_shares"), keys[s].threshold,
                                      keys[s].commitment, s) for s in unmask.survivors)
    dropped = {s: (secagg.recover_key(_shares_of(reveals, points, s, "key_shares"), keys[s].threshold,
                                      keys[s].public, s), keys[s].public) for s in unmask.dropped}
    return Masks(seeds, dropped, {s: keys[s].public for s in unmask.survivors}, info)


def load_global(exchange: Exchange, server_round: int,
                coordinator: PublicIdentity | None = None) -> dict[str, torch.Tensor]:
    """The global item tower after ``server_round`` rounds (0: the initial model) from a run's exchange,
    verified as signed by ``coordinator`` (default: the identity the coordinator published on the run's
    exchange, self-signed; parties pass the key they pinned)."""
    key = global_key(server_round)
    if coordinator is None:
        coordinator = self_signed_identity(exchange, COORDINATOR_KEY, COORDINATOR)
    payload = EncryptedUpdate.from_bytes(exchange.read(key, coordinator), expect_kind="global", source=key)
    if payload.round != server_round:
        raise PayloadError(f"{key}: holds the model of round {payload.round}")
    return decode_global(payload)


def load_candidate(exchange: Exchange, server_round: int, index: int,
                   coordinator: PublicIdentity) -> dict[str, torch.Tensor]:
    """federation.robust_rule vetted: candidate ``index`` for round ``server_round``'s global model, verified as
    signed by ``coordinator``."""
    key = candidate_key(server_round, index)
    payload = EncryptedUpdate.from_bytes(exchange.read(key, coordinator), expect_kind="global", source=key)
    if payload.round != server_round:
        raise PayloadError(f"{key}: holds a candidate of round {payload.round}")
    return decode_global(payload)
