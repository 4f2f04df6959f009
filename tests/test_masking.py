"""fedrec.federation.masking under real CKKS: masks cancel exactly in the sum (also after a dropout and remask),
and a decrypted individual update is noise to whoever holds the secret key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.config import CryptoConfig
from fedrec.crypto import CKKSCodec, create_keys
from fedrec.errors import PayloadError
from fedrec.federation import masking
from fedrec.federation.filters import LocalUpdate, aggregate_updates, decrypt_aggregate, encrypt_update
from fedrec.trust import Identity

CRYPTO = CryptoConfig()
LENGTH = 114_465  # the shared parameters of the project's NeuMF on ML-100K
SLOTS = masking.n_slots(LENGTH, CRYPTO.pack)  # two values per CKKS slot


@pytest.fixture(scope="module")
def codec():
    keys = create_keys(CRYPTO)
    return CKKSCodec(keys.secret_context, CRYPTO.poly_modulus_degree // 2, public_context=keys.public_context)


@pytest.fixture(scope="module")
def silos():
    rng = np.random.default_rng(0)
    return {name: (Identity.generate(name),
                   LocalUpdate(name, 1, int(rng.integers(100, 5000)),
                               {"w": torch.tensor(rng.normal(0, 0.01, LENGTH), dtype=torch.float32)}))
            for name in "abcd"}


def _masked(silos, names, codec, attempt=0, masked=True):
    peers = [silos[n][0].public for n in names]
    total = sum(silos[n][1].n_samples for n in names)
    out = []
    for name in names:
        me, update = silos[name]
        mask = masking.silo_mask(me, peers, masking.mask_info("run", 1, attempt), SLOTS, CRYPTO.mask_bits)
        out.append(encrypt_update(update, codec, CRYPTO, total, mask if masked else None))
    return out


def _mean(updates, codec):
    return decrypt_aggregate(aggregate_updates(updates, codec, 1, CRYPTO), codec).mean_delta["w"]


def test_masked_and_unmasked_ckks_sums_decode_to_the_same_model(silos, codec):
    masked = _mean(_masked(silos, "abcd", codec), codec)
    unmasked = _mean(_masked(silos, "abcd", codec, masked=False), codec)

    assert torch.equal(masked, unmasked)
    weighted = sum(u.n_samples * u.delta["w"].double() for _, u in silos.values()) / sum(u.n_samples for _, u in silos.values())
    assert float((masked.double() - weighted).abs().max()) <= 4 * 2.0 ** -18  # each share within half a step


def test_after_a_dropout_the_survivors_remask_and_the_sum_is_exact(silos, codec):
    # Prepare: d dropped after the participant set {a, b, c, d} was fixed: a, b, c's first updates hold masks with d
    first = _masked(silos, "abcd", codec)[:3]

    # Execute: the first updates no longer cancel; the survivors' remasked ones do
    def packed_sum(updates):  # the decrypted, decoded slot sum (the aggregator also refuses their weights now)
        return masking.decode_sum(codec.decrypt(codec.add([list(u.chunks) for u in updates]), SLOTS), 3,
                                  CRYPTO.mask_bits)

    second = _masked(silos, "abc", codec, attempt=1)
    remasked = _mean(second, codec)

    # Assert
    assert torch.equal(remasked, _mean(_masked(silos, "abc", codec, masked=False), codec))
    assert np.array_equal(packed_sum(second), packed_sum(_masked(silos, "abc", codec, attempt=1, masked=False)))
    assert np.std(packed_sum(first)) > 2 ** (CRYPTO.mask_bits - 3)  # d's masks left in: noise, why the remask


def test_a_key_holder_decrypting_one_silos_update_sees_noise(silos, codec):
    # Prepare: the coordinator hands silo a's ciphertext to a curious key holder
    update = _masked(silos, "abcd", codec)[0]
    a = silos["a"][1]
    truth = masking.pack_lanes(masking.quantize_share(a.delta["w"].double().numpy(), a.n_samples,
                                                      update.total_samples, CRYPTO.quantization_bits),
                               CRYPTO.pack, CRYPTO.lane_bits)

    # Execute: decrypt and decode it as if it were a sum of one
    seen = masking.decode_sum(codec.decrypt(list(update.chunks), SLOTS), 1, CRYPTO.mask_bits)

    # Assert: uncorrelated with a's update, spread over the whole 2^38 range; unmasked it would be the update
    assert abs(np.corrcoef(seen, truth)[0, 1]) < 0.025  # 6 sigma of chance over 57,233 slots
    half = 2 ** (CRYPTO.lane_bits - 1)  # the first lane of each slot, read as a curious key holder would
    assert abs(np.corrcoef((seen + half) % (2 * half) - half, a.delta["w"].double().numpy()[:SLOTS])[0, 1]) < 0.025
    assert np.std(seen) > 2 ** (CRYPTO.mask_bits - 2)
    unmasked = _masked(silos, "abcd", codec, masked=False)[0]
    assert np.array_equal(masking.decode_sum(codec.decrypt(list(unmasked.chunks), SLOTS), 1, CRYPTO.mask_bits), truth)


def test_pairwise_masks_cancel_modulo_2_to_the_mask_bits():
    ids = [Identity.generate(n) for n in "xyz"]
    masks = [masking.silo_mask(me, [i.public for i in ids], b"info", 1000, 32) for me in ids]

    assert not np.any((masks[0] + masks[1] + masks[2]) & np.uint64(2 ** 32 - 1))
    assert len(np.unique(masks[0])) > 990  # not a constant


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
