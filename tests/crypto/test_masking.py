"""fedrec.crypto.masking + fedrec.crypto.secagg under real CKKS: double masks (self-mask + pairwise) come
off the sum exactly with the revealed secrets (also after a dropout, with the dropped silo's key rebuilt from the
survivors' Shamir shares), a decrypted individual update is noise to whoever holds the secret key, and a sum that
holds the dropped silo's update tells nothing about it (its self-mask is never revealed)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fedrec.core.config import CryptoConfig
from fedrec.core.errors import PayloadError
from fedrec.crypto import masking, secagg
from fedrec.crypto.ckks import CKKSCodec, create_keys
from fedrec.crypto.updates import (
    LocalUpdate,
    Masks,
    aggregate_updates,
    decrypt_aggregate,
    encrypt_update,
)

CRYPTO = CryptoConfig()
LENGTH = 114_465  # the shared parameters of the project's NeuMF on ML-100K
SLOTS = masking.n_slots(LENGTH, CRYPTO.pack)  # two values per CKKS slot
NAMES = "abcd"
INFO = secagg.mask_info("run", 1)
POINTS = secagg.share_points(list(NAMES))  # a: 1, b: 2, c: 3, d: 4
THRESHOLD = secagg.threshold_for(len(NAMES), 0.67)  # 3 of 4


@pytest.fixture(scope="module")
def codec():
    keys = create_keys(CRYPTO)
    return CKKSCodec(keys.secret_context, CRYPTO.poly_modulus_degree // 2, public_context=keys.public_context)


@pytest.fixture(scope="module")
def silos():
    rng = np.random.default_rng(0)
    return {name: (secagg.RoundSecrets(),
                   LocalUpdate(name, 1, int(rng.integers(100, 5000)),
                               {"w": torch.tensor(rng.normal(0, 0.01, LENGTH), dtype=torch.float32)}))
            for name in NAMES}


@pytest.fixture(scope="module")
def shares(silos):
    """Each silo's round secrets split 3-of-4 at the participants' points, as each holder unseals them:
    {owner: {holder: Share}}."""
    return {owner: {holder: secagg.Share.parse(data, f"{owner} -> {holder}")
                    for holder, data in secrets.shares(POINTS, THRESHOLD).items()}
            for owner, (secrets, _) in silos.items()}


def _total(silos) -> int:
    return sum(u.n_samples for _, u in silos.values())  # the participants' declared samples: all four


def _masked(silos, names, codec, masked=True):
    """``names``' updates weighted by all four participants' samples, each double-masked against the other three."""
    publics = {n: secrets.public for n, (secrets, _) in silos.items()}
    out = []
    for name in names:
        secrets, update = silos[name]
        mask = secrets.pair_masks(name, {p: k for p, k in publics.items() if p != name}, INFO, SLOTS,
                                  CRYPTO.mask_bits)
        out.append(encrypt_update(update, codec, CRYPTO, _total(silos), mask if masked else None))
    return out


@pytest.fixture(scope="module")
def updates(silos, codec):
    """Every silo's double-masked ciphertext and its unmasked twin."""
    return {"masked": dict(zip(NAMES, _masked(silos, NAMES, codec))),
            "plain": dict(zip(NAMES, _masked(silos, NAMES, codec, masked=False)))}


def _truth(silos, name) -> np.ndarray:
    """Silo ``name``'s packed integer share of the round's mean (what its ciphertext carries under the mask)."""
    u = silos[name][1]
    return masking.pack_lanes(masking.quantize_share(u.delta["w"].double().numpy(), u.n_samples, _total(silos),
                                                     CRYPTO.quantization_bits), CRYPTO.pack, CRYPTO.lane_bits)


def _residues(updates, codec) -> np.ndarray:
    """The decrypted sum of ``updates``, as residues modulo 2^mask_bits (masks still on)."""
    return masking.residues(codec.decrypt(codec.add([list(u.chunks) for u in updates]), SLOTS), len(updates),
                            CRYPTO.mask_bits)


def _key_shares(shares, owner: str, holders: str) -> dict[int, int]:
    return {shares[owner][h].x: shares[owner][h].key_share for h in holders}


def _seed_shares(shares, owner: str, holders: str) -> dict[int, int]:
    return {shares[owner][h].x: shares[owner][h].self_share for h in holders}


def _uint(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).astype(np.uint64)  # two's complement: congruent mod 2^mask_bits


MODULUS = np.uint64(2 ** CRYPTO.mask_bits - 1)


def test_shamir_shares_rebuild_the_secret_at_the_threshold_and_fewer_give_another():
    # Prepare: a 32-byte secret split 3-of-5
    secret = os.urandom(32)
    split = secagg.split_secret(secret, [1, 2, 3, 4, 5], 3)

    # Execute
    any_three = [secagg.combine_shares({x: split[x] for x in xs}) for xs in ([1, 2, 3], [2, 4, 5], [1, 3, 5])]
    all_five = secagg.combine_shares(split)
    two = secagg.combine_shares({x: split[x] for x in (1, 4)}, length=66)  # wide enough for any field element

    # Assert: every 3 (or all 5) rebuild it; 2 interpolate to another value of GF(2^521 - 1)
    assert any_three == [secret] * 3 and all_five == secret
    assert int.from_bytes(two, "big") != int.from_bytes(secret, "big")
    with pytest.raises(PayloadError, match="cannot share"):
        secagg.split_secret(secret, [1, 2], 3)


def test_the_share_threshold_is_more_than_half_of_the_participants():
    assert [secagg.threshold_for(n, 0.67) for n in (2, 3, 4, 5, 11)] == [2, 3, 3, 4, 8]
    assert secagg.threshold_for(10, 0.51) == 6 and secagg.threshold_for(10, 1.0) == 10
    for n in range(2, 40):
        for fraction in (0.51, 0.67, 1.0):
            assert n / 2 < secagg.threshold_for(n, fraction) <= n  # two survivor sets always share an honest silo


def test_double_masked_updates_of_all_four_sum_and_unmask_exactly(silos, codec, updates, shares):
    # Prepare: all four sent; every silo's self-mask seed is rebuilt from three survivors' reveals
    seeds = [secagg.recover_seed(_seed_shares(shares, n, "bcd"), THRESHOLD,
                                 silos[n][0].commitment, n) for n in NAMES]
    masks = Masks(tuple(seeds), {}, {n: silos[n][0].public for n in NAMES}, INFO)
    aggregate = aggregate_updates(list(updates["masked"].values()), codec, 1, CRYPTO)

    # Execute
    summed = _residues(list(updates["masked"].values()), codec)
    unmasked = secagg.unmask(summed, seeds, {}, {}, INFO, CRYPTO.mask_bits)
    mean = decrypt_aggregate(aggregate, codec, masks).mean_delta["w"]

    # Assert: the pairwise masks cancelled, the self-masks came off: exactly the plain packed sum and the plain mean
    assert np.array_equal(masking.center(unmasked, CRYPTO.mask_bits), sum(_truth(silos, n) for n in NAMES))
    plain = decrypt_aggregate(aggregate_updates(list(updates["plain"].values()), codec, 1, CRYPTO), codec)
    assert torch.equal(mean, plain.mean_delta["w"])
    weighted = sum(u.n_samples * u.delta["w"].double() for _, u in silos.values()) / _total(silos)
    assert float((mean.double() - weighted).abs().max()) <= 4 * 2.0 ** -18  # each share within half a step
    # with the self-masks left on, the sum is noise (pairwise masks alone would cancel)
    assert np.std(masking.center(summed, CRYPTO.mask_bits).astype(np.float64)) > 2.0 ** (CRYPTO.mask_bits - 3)


def test_after_a_dropout_the_survivors_reveals_unmask_their_sum_exactly(silos, codec, updates, shares):
    # Prepare: d dropped after the mask set {a, b, c, d} was fixed; a, b, c's updates hold pair masks with d.
    # The survivors reveal their shares of each other's seeds and of d's mask key (3 = the threshold)
    survivors = "abc"
    seeds = [secagg.recover_seed(_seed_shares(shares, n, survivors), THRESHOLD, silos[n][0].commitment, n)
             for n in survivors]
    d_key = secagg.recover_key(_key_shares(shares, "d", survivors), THRESHOLD, silos["d"][0].public, "d")
    dropped = {"d": (d_key, silos["d"][0].public)}
    publics = {n: silos[n][0].public for n in survivors}
    sent = [updates["masked"][n] for n in survivors]

    # Execute
    unmasked = secagg.unmask(_residues(sent, codec), seeds, dropped, publics, INFO, CRYPTO.mask_bits)
    mean = decrypt_aggregate(aggregate_updates(sent, codec, 1, CRYPTO), codec,
                             Masks(tuple(seeds), dropped, publics, INFO)).mean_delta["w"]

    # Assert: exactly the survivors' plain sum and mean (weights scaled back to one over the survivors)
    assert np.array_equal(masking.center(unmasked, CRYPTO.mask_bits), sum(_truth(silos, n) for n in survivors))
    plain = decrypt_aggregate(aggregate_updates([updates["plain"][n] for n in survivors], codec, 1, CRYPTO), codec)
    assert torch.equal(mean, plain.mean_delta["w"])
    # without d's rebuilt key its pair masks stay in: noise
    kept = secagg.unmask(_residues(sent, codec), seeds, {}, publics, INFO, CRYPTO.mask_bits)
    assert np.std(masking.center(kept, CRYPTO.mask_bits).astype(np.float64)) > 2.0 ** (CRYPTO.mask_bits - 3)


def test_a_sum_holding_the_dropped_silos_update_tells_nothing_about_it(silos, codec, updates, shares):
    # Prepare: d was named dropped, so its mask key was rebuilt and the survivors' seeds revealed; a coordinator
    # that adds d's late update after all (or a curious decryptor handed it) decrypts the sum of all four
    survivors = "abc"
    seeds = [secagg.recover_seed(_seed_shares(shares, n, survivors), THRESHOLD, silos[n][0].commitment, n)
             for n in survivors]
    survivors_sum = _uint(sum(_truth(silos, n) for n in survivors))  # what the survivors' opened sum gave
    truth = _truth(silos, "d")

    # Execute: remove every revealed secret from the sum of four and subtract the survivors' unmasked sum
    everything = secagg.unmask(_residues(list(updates["masked"].values()), codec), seeds, {}, {}, INFO,
                               CRYPTO.mask_bits)
    seen = masking.center((everything - survivors_sum) & MODULUS, CRYPTO.mask_bits)

    # Assert: what is left is d's update under its self-mask, never revealed: uncorrelated, spread over 2^38
    assert len(truth) > 50_000 and np.any(truth != 0)
    assert abs(np.corrcoef(seen, truth)[0, 1]) < 0.025  # 6 sigma of chance over 57,233 slots
    half = 2 ** (CRYPTO.lane_bits - 1)  # the first lane of each slot, as a curious reader would take it
    d_delta = silos["d"][1].delta["w"].double().numpy()[:SLOTS]
    assert abs(np.corrcoef((seen + half) % (2 * half) - half, d_delta)[0, 1]) < 0.025
    assert np.std(seen.astype(np.float64)) > 2.0 ** (CRYPTO.mask_bits - 3)
    # only d's self-mask stands between them: with d's seed (which nobody reveals for a dropped silo) it is d's update
    d_seed = masking.keystream(silos["d"][0].seed, SLOTS, CRYPTO.mask_bits)
    assert np.array_equal(masking.center((_uint(seen) - d_seed) & MODULUS, CRYPTO.mask_bits), truth)


def test_a_key_holder_decrypting_one_silos_update_sees_noise(silos, codec, updates):
    # Prepare: the coordinator hands silo a's ciphertext to a curious key holder
    truth = _truth(silos, "a")

    # Execute: decrypt and decode it as if it were a sum of one
    seen = masking.decode_sum(codec.decrypt(list(updates["masked"]["a"].chunks), SLOTS), 1, CRYPTO.mask_bits)

    # Assert: uncorrelated with a's update, spread over the whole 2^38 range; unmasked it would be the update
    assert abs(np.corrcoef(seen, truth)[0, 1]) < 0.025  # 6 sigma of chance over 57,233 slots
    half = 2 ** (CRYPTO.lane_bits - 1)  # the first lane of each slot, read as a curious key holder would
    a_delta = silos["a"][1].delta["w"].double().numpy()[:SLOTS]
    assert abs(np.corrcoef((seen + half) % (2 * half) - half, a_delta)[0, 1]) < 0.025
    assert np.std(seen) > 2 ** (CRYPTO.mask_bits - 2)
    plain = updates["plain"]["a"]
    assert np.array_equal(masking.decode_sum(codec.decrypt(list(plain.chunks), SLOTS), 1, CRYPTO.mask_bits), truth)


def test_a_wrong_share_set_is_refused_and_one_wrong_share_of_t_plus_one_is_outvoted(silos, shares):
    secrets = silos["a"][0]
    seed_shares, key_shares = _seed_shares(shares, "a", "bcd"), _key_shares(shares, "a", "bcd")
    wrong_seed = {**seed_shares, 3: (seed_shares[3] + 1) % secagg.PRIME}  # c reveals a tampered share
    wrong_key = {**key_shares, 3: (key_shares[3] + 1) % secagg.PRIME}

    # Assert: exactly t shares, one wrong: nothing verifies against the commitment or the public key
    with pytest.raises(secagg.MaskRecoveryError, match="rebuild the committed secret"):
        secagg.recover_seed(wrong_seed, THRESHOLD, secrets.commitment, "a")
    with pytest.raises(secagg.MaskRecoveryError, match="rebuild the committed secret"):
        secagg.recover_key(wrong_key, THRESHOLD, secrets.public, "a")
    # another silo's shares, or too few, rebuild nothing of a's
    with pytest.raises(secagg.MaskRecoveryError):
        secagg.recover_seed(_seed_shares(shares, "b", "acd"), THRESHOLD, secrets.commitment, "a")
    with pytest.raises(secagg.MaskRecoveryError, match="2 share\\(s\\) revealed, 3 needed"):
        secagg.recover_key(_key_shares(shares, "a", "bc"), THRESHOLD, secrets.public, "a")
    # t + 1 shares with one wrong: the subset without it verifies
    own = shares["a"]["a"]
    assert secagg.recover_seed({**wrong_seed, own.x: own.self_share}, THRESHOLD, secrets.commitment,
                               "a") == secrets.seed
    rebuilt = secagg.recover_key({**wrong_key, own.x: own.key_share}, THRESHOLD, secrets.public, "a")
    assert secagg.public_of(rebuilt) == secrets.public


def test_masks_cancel_in_a_sum_once_the_self_masks_are_removed():
    # Prepare: three participants' round secrets, each masking against the other two's public keys
    secrets = {n: secagg.RoundSecrets() for n in "xyz"}
    publics = {n: s.public for n, s in secrets.items()}

    # Execute
    masks = {n: s.pair_masks(n, {p: k for p, k in publics.items() if p != n}, b"info", 1000, 32)
             for n, s in secrets.items()}
    pairwise = {n: (masks[n] - masking.keystream(secrets[n].seed, 1000, 32)) & np.uint64(2 ** 32 - 1)
                for n in secrets}

    # Assert: the pairwise parts cancel modulo 2^32; each silo's total mask is no constant
    assert not np.any((pairwise["x"] + pairwise["y"] + pairwise["z"]) & np.uint64(2 ** 32 - 1))
    assert len(np.unique(masks["x"])) > 990 and len(np.unique(pairwise["x"])) > 990


def test_an_update_too_large_for_its_share_of_the_sum_is_refused_at_the_silo(codec):
    update = LocalUpdate("a", 1, 10_000, {"w": torch.full((10,), 3.0)})

    with pytest.raises(PayloadError, match="leaves the encoding's range"):
        encrypt_update(update, codec, CRYPTO, 40_000)


@pytest.mark.parametrize("pack, lane_bits", [(1, 32), (2, 19), (3, 14)])
def test_packed_lanes_sum_like_their_values(pack, lane_bits):
    # Prepare: signed shares of five silos, each within its fifth of a lane's range (the silos' check)
    rng = np.random.default_rng(pack)
    bound = (2 ** (lane_bits - 1) - 1) // 5
    shares = [rng.integers(-bound, bound + 1, 1001) for _ in range(5)]
    shares[0][:3] = [bound, -bound, 0]

    # Execute: pack each, add the packed integers (what the decrypted CKKS sum carries), unpack
    total = sum(masking.pack_lanes(q, pack, lane_bits) for q in shares)
    got = masking.unpack_lanes(total, pack, lane_bits, 1001)

    # Assert
    assert len(total) == -(-1001 // pack)
    np.testing.assert_array_equal(got, sum(shares))


def test_lanes_that_overflowed_are_a_named_error():
    packed = masking.pack_lanes(np.array([2 ** 18 - 1, 2 ** 18 - 1]), 2, 19)  # each lane at its top

    with pytest.raises(PayloadError, match="overflow their 2 x 19-bit lanes"):
        masking.unpack_lanes(packed * 2, 2, 19, 2)


def test_a_sum_that_decrypts_to_nan_is_refused():
    with pytest.raises(PayloadError, match="NaN or Inf"):
        masking.decode_sum(np.array([0.5, np.nan]), 3, 32)
