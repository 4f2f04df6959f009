"""fedrec.crypto.ckks + fedrec.crypto.updates: CKKS weighted sums with real TenSEAL ciphertexts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedrec.core.config import CryptoConfig
from fedrec.core.errors import DecryptionKeyError, PayloadError
from fedrec.core.state import flatten_state, weighted_average
from fedrec.crypto.ckks import (
    CKKSCodec,
    PlainCodec,
    context_fingerprint,
    create_keys,
    value_limit,
)
from fedrec.crypto.updates import (
    LocalUpdate,
    aggregate_updates,
    decrypt_aggregate,
    encrypt_update,
)

CRYPTO = CryptoConfig()  # 4096 -> 2048 slots per ciphertext, two reals per slot (complex encoding)
SLOTS = CRYPTO.poly_modulus_degree // 2
PER_CIPHERTEXT = 2 * SLOTS
LENGTH = 2 * PER_CIPHERTEXT + 123  # three ciphertexts per vector
N_SAMPLES = [120, 45, 300]


@pytest.fixture(scope="module")
def keys():
    return create_keys(CRYPTO)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    return [rng.normal(scale=0.05, size=LENGTH) for _ in N_SAMPLES]


def silo_codec(keys) -> CKKSCodec:
    return CKKSCodec(keys.secret_context, SLOTS, public_context=keys.public_context)


def coordinator_codec(keys) -> CKKSCodec:
    return CKKSCodec(keys.public_context, SLOTS)


def test_key_material_contexts(keys):
    assert silo_codec(keys).can_decrypt
    assert not coordinator_codec(keys).can_decrypt
    # both sides name the context by the public context's fingerprint
    assert silo_codec(keys).context_id == coordinator_codec(keys).context_id == context_fingerprint(keys.public_context)
    assert len(keys.secret_context) > len(keys.public_context)
    assert repr(keys) == f"KeyMaterial(context_id={context_fingerprint(keys.public_context)})"  # no key bytes


def test_ckks_weighted_sum_round_trip(keys, vectors):
    # Prepare
    silo, coordinator = silo_codec(keys), coordinator_codec(keys)

    # Execute: each silo encrypts n_k * x_k; the coordinator adds; a key holder decrypts and divides
    payloads = [silo.encrypt(n * x) for n, x in zip(N_SAMPLES, vectors)]
    total = coordinator.add(payloads)
    average = silo.decrypt(total, LENGTH) / sum(N_SAMPLES)

    # Assert: both halves of every ciphertext (real and imaginary parts) come back in place
    assert all(len(p) == 3 for p in payloads) and len(total) == 3
    expected = weighted_average(vectors, N_SAMPLES)
    assert average.shape == (LENGTH,)
    np.testing.assert_allclose(average, expected, atol=1e-6)
    assert not np.allclose(average, np.mean(vectors, axis=0), atol=1e-6)  # weights matter


@pytest.mark.parametrize(("slot_values", "seeded", "per_value"), [(2, True, 8.1), (1, True, 16.1), (2, False, 16.1),
                                                                 (1, False, 32.1)])
def test_bytes_per_value_and_the_same_sum(keys, vectors, slot_values, seeded, per_value):
    """Complex encoding halves the ciphertexts, seeding halves each one's bytes: 8 bytes per value together (4 per
    shared parameter with two lanes per value: x1 of fp32) against 32 for one real per slot, unseeded; every form
    gives the same sum."""
    silo = CKKSCodec(keys.secret_context, SLOTS, public_context=keys.public_context, slot_values=slot_values,
                     seeded=seeded)
    coordinator = CKKSCodec(keys.public_context, SLOTS, slot_values=slot_values, seeded=seeded)

    payloads = [silo.encrypt(x) for x in vectors]
    total = silo.decrypt(coordinator.add(payloads), LENGTH)

    sent = sum(len(c) for c in payloads[0])
    assert len(payloads[0]) == -(-LENGTH // (SLOTS * slot_values))
    assert per_value - 0.3 < sent / (len(payloads[0]) * SLOTS * slot_values) <= per_value
    np.testing.assert_allclose(total, np.sum(vectors, axis=0), atol=1e-6)


def test_a_ciphertext_off_the_data_level_is_named(keys):
    """What parses but cannot be added to an honest sum (another scale) is refused before the sum."""
    import tenseal as ts

    ctx = ts.context_from(keys.secret_context)
    ctx.global_scale = 2.0 ** 40
    forged = CKKSCodec(ctx.serialize(save_secret_key=True), SLOTS).encrypt(np.zeros(10))

    problem = coordinator_codec(keys).chunk_problem(forged, 10)

    assert problem is not None and "scale 2^40.0" in problem
    assert coordinator_codec(keys).chunk_problem(silo_codec(keys).encrypt(np.zeros(10)), 10) is None


def test_coordinator_cannot_decrypt(keys, vectors):
    coordinator = coordinator_codec(keys)
    total = coordinator.add([silo_codec(keys).encrypt(vectors[0])])

    with pytest.raises(DecryptionKeyError, match="no secret key"):
        coordinator.decrypt(total, LENGTH)
    with pytest.raises(DecryptionKeyError, match="can only add"):  # nor encrypt: it cannot forge a silo's update
        coordinator.encrypt(vectors[0])
    assert len(keys.public_context) < 200  # parameters only: no public, galois or relinearisation keys


def test_add_refuses_different_chunk_counts(keys):
    codec = silo_codec(keys)
    with pytest.raises(PayloadError, match="different numbers of ciphertexts"):
        codec.add([codec.encrypt(np.zeros(10)), codec.encrypt(np.zeros(PER_CIPHERTEXT + 10))])


def test_garbage_context_and_ciphertext(keys):
    with pytest.raises(PayloadError, match="not a TenSEAL context"):
        CKKSCodec(b"definitely not a context", SLOTS)
    codec = silo_codec(keys)
    with pytest.raises(PayloadError, match="does not parse"):
        codec.decrypt([b"\x00" * 64], 1)


def test_plain_codec_gives_the_same_average(vectors):
    codec = PlainCodec()

    total = codec.add([codec.encrypt(n * x) for n, x in zip(N_SAMPLES, vectors)])
    average = codec.decrypt(total, LENGTH) / sum(N_SAMPLES)

    np.testing.assert_allclose(average, weighted_average(vectors, N_SAMPLES), rtol=0, atol=1e-12)
    with pytest.raises(PayloadError, match="differ in length"):
        codec.add([codec.encrypt(np.zeros(3)), codec.encrypt(np.zeros(4))])
    with pytest.raises(PayloadError, match="layout needs 5"):
        codec.decrypt(total, 5)


def test_weighted_average_hand_computed():
    got = weighted_average([np.array([1.0, 0.0]), np.array([4.0, 2.0])], [1, 3])

    assert got.tolist() == [13 / 4, 6 / 4]


def _updates(vectors, round_=3):
    # split each flat vector into two named tensors, as a model's item tower would be
    out = []
    for i, (n, x) in enumerate(zip(N_SAMPLES, vectors)):
        delta = {"item_gmf.weight": torch.from_numpy(x[:-123].reshape(-1, 8)).float(),
                 "out.weight": torch.from_numpy(x[-123:]).float()}
        out.append(LocalUpdate(silo_id=f"s{i}", round=round_, n_samples=n, delta=delta))
    return out


@pytest.mark.parametrize("he", [True, False])
def test_filters_encrypt_aggregate_decrypt(keys, vectors, he):
    # Prepare
    silo = silo_codec(keys) if he else PlainCodec()
    coordinator = coordinator_codec(keys) if he else PlainCodec()
    updates = _updates(vectors)
    flats = [flatten_state(u.delta) for u in updates]  # float32-rounded, as the silos really send

    # Execute
    encrypted = [encrypt_update(u, silo, CRYPTO, sum(N_SAMPLES)) for u in updates]
    aggregate = aggregate_updates(list(reversed(encrypted)), coordinator, 3, CRYPTO)
    result = decrypt_aggregate(aggregate, silo)

    # Assert
    assert [e.scheme for e in encrypted] == ["ckks" if he else "plain"] * 3
    assert aggregate.kind == "aggregate" and aggregate.n_samples == sum(N_SAMPLES)
    assert aggregate.contributors == ("s0", "s1", "s2") == result.contributors
    assert result.total_samples == sum(N_SAMPLES)
    expected = weighted_average(flats, N_SAMPLES)
    got = flatten_state(result.mean_delta)
    np.testing.assert_allclose(got, expected, atol=2.0 ** -CRYPTO.quantization_bits * len(updates))
    assert result.mean_delta["item_gmf.weight"].shape == (2 * PER_CIPHERTEXT // 8, 8)
    # two lanes per value, two values per slot: LENGTH values in ceil(LENGTH / 2 / PER_CIPHERTEXT) = 2 ciphertexts
    assert all(len(e.chunks) == (2 if he else 1) for e in encrypted)


def test_aggregate_refuses_mismatched_round(keys, vectors):
    silo = silo_codec(keys)
    encrypted = [encrypt_update(u, silo, CRYPTO, N_SAMPLES[0]) for u in _updates(vectors[:1], round_=2)]

    with pytest.raises(PayloadError, match=r"silo 's0' refused: round 2 \(expected 3\)"):
        aggregate_updates(encrypted, coordinator_codec(keys), 3, CRYPTO)


def test_aggregate_refuses_plaintext_under_ckks(keys, vectors):
    plain = [encrypt_update(u, PlainCodec(), CRYPTO, N_SAMPLES[0]) for u in _updates(vectors[:1])]

    with pytest.raises(PayloadError, match="scheme 'plain'"):
        aggregate_updates(plain, coordinator_codec(keys), 3, CRYPTO)


def test_aggregate_refuses_empty_round(keys):
    with pytest.raises(PayloadError, match="no updates"):
        aggregate_updates([], coordinator_codec(keys), 1, CRYPTO)


def test_quantized_he_and_plain_aggregates_are_bit_identical(keys, vectors):
    # Prepare: the same updates through the CKKS path and the plaintext path, on the 2^-17 grid as integers
    updates = _updates(vectors)
    bits = CRYPTO.quantization_bits

    # Execute
    total = sum(N_SAMPLES)
    he_agg = aggregate_updates([encrypt_update(u, silo_codec(keys), CRYPTO, total) for u in updates],
                               coordinator_codec(keys), 3, CRYPTO)
    he = flatten_state(decrypt_aggregate(he_agg, silo_codec(keys)).mean_delta)
    plain_agg = aggregate_updates([encrypt_update(u, PlainCodec(), CRYPTO, total) for u in updates], PlainCodec(),
                                  3, CRYPTO)
    plain = flatten_state(decrypt_aggregate(plain_agg, PlainCodec()).mean_delta)

    # Assert: CKKS noise is rounded away; both are within a grid step of the exact weighted average
    assert (he_agg.quantization_bits, he_agg.mask_bits) == (bits, CRYPTO.mask_bits)
    np.testing.assert_array_equal(he, plain)
    np.testing.assert_allclose(he, weighted_average([flatten_state(u.delta) for u in updates], N_SAMPLES),
                               atol=2.0 * 2.0 ** -bits)  # each silo's share is rounded by half a step


def test_noise_beyond_the_integer_margin_is_a_named_error(keys, vectors):
    # Prepare: 2 x 24-bit lanes, 2^48 residues carried at scale 2^52: an integer step (2^-47) far below CKKS
    # noise (~2^-43)
    fine = CryptoConfig(lane_bits=24)
    updates = _updates(vectors)
    agg = aggregate_updates([encrypt_update(u, silo_codec(keys), fine, sum(N_SAMPLES)) for u in updates],
                            coordinator_codec(keys), 3, fine)

    # Execute / Assert
    with pytest.raises(PayloadError, match="integer steps off"):
        decrypt_aggregate(agg, silo_codec(keys))


def test_mixed_encodings_are_refused(keys, vectors):
    updates = _updates(vectors)
    mixed = [encrypt_update(updates[0], silo_codec(keys), CRYPTO, sum(N_SAMPLES)),
             encrypt_update(updates[1], silo_codec(keys), CryptoConfig(quantization_bits=8), sum(N_SAMPLES))]

    with pytest.raises(PayloadError, match="encoding 2\\^-8"):
        aggregate_updates(mixed, coordinator_codec(keys), 3, CRYPTO)


def test_a_sum_past_the_value_limit_wraps_silently_which_is_why_contributors_are_capped(keys):
    # Prepare: the default parameters (one 60-bit data prime, scale 2^52) wrap sums at 2^7; the limit keeps 2^6,
    # i.e. at most 64 contributors of values in [-1, 1)
    limit = value_limit(CRYPTO)
    assert limit == 2.0 ** 6
    # (every real part of the ciphertext: a few large values among zeros spread over many coefficients and do not
    # wrap; a constant real part is one coefficient)
    inside = np.full(PER_CIPHERTEXT, limit / 3)
    outside = np.concatenate([np.full(SLOTS, limit * 0.9), np.zeros(SLOTS)])

    # Execute: sums of three ciphertexts each (each value alone is fine)
    sums = [silo_codec(keys).decrypt(coordinator_codec(keys).add([silo_codec(keys).encrypt(v) for _ in range(3)]),
                                     PER_CIPHERTEXT) for v in (inside, outside)]

    # Assert: inside the range the sum is exact to the grid; past 2^7 it decrypts to something else, no error
    np.testing.assert_allclose(sums[0], 3 * inside, atol=1e-6)
    assert np.all(np.abs(sums[1][:SLOTS] - 3 * outside[:SLOTS]) > 1.0)


def test_a_silo_refuses_to_encrypt_an_update_that_could_overflow_the_sum(keys):
    # the lanes hold the round's mean update within +-2^(19 - 1 - 17) = +-2; each silo may use its weight's share
    update = LocalUpdate("s", 1, 1000, {"w": torch.tensor([0.1, -1.9, 0.0, 1.0])})
    too_big = LocalUpdate("s", 1, 1000, {"w": torch.tensor([0.1, -2.1, 0.0, 1.0])})

    with pytest.raises(PayloadError, match=r"value of -?2.1 leaves the encoding's range \+-2 "):
        encrypt_update(too_big, silo_codec(keys), CRYPTO, 4000)
    assert encrypt_update(update, silo_codec(keys), CRYPTO, 4000).total_samples == 4000
    with pytest.raises(PayloadError, match="not a share of the round's total_samples 999"):
        encrypt_update(update, silo_codec(keys), CRYPTO, 999)


def test_a_secret_context_matches_only_its_own_public_context(keys):
    other = create_keys(CRYPTO)

    assert silo_codec(keys).matches(keys.public_context)
    assert not CKKSCodec(other.secret_context, SLOTS).matches(keys.public_context)


@pytest.mark.parametrize("he", [True, False])
def test_an_unmasked_round_missing_a_silo_averages_over_the_others(keys, vectors, he):
    # Prepare: three silos were told the round's total; s2 never sent (no masks to remove, no reweighting)
    silo = silo_codec(keys) if he else PlainCodec()
    updates = _updates(vectors)[:2]
    sent = [encrypt_update(u, silo, CRYPTO, sum(N_SAMPLES)) for u in updates]

    # Execute
    aggregate = aggregate_updates(sent, coordinator_codec(keys) if he else PlainCodec(), 3, CRYPTO)
    result = decrypt_aggregate(aggregate, silo)

    # Assert: the weights are scaled back to one over the two that sent
    assert (aggregate.n_samples, aggregate.total_samples) == (sum(N_SAMPLES[:2]), sum(N_SAMPLES))
    np.testing.assert_allclose(flatten_state(result.mean_delta),
                               weighted_average([flatten_state(u.delta) for u in updates], N_SAMPLES[:2]),
                               atol=4 * 2.0 ** -CRYPTO.quantization_bits)



@pytest.mark.slow
def test_large_vectors_are_split_across_worker_processes_with_the_same_result(keys):
    # Prepare: 256 ciphertexts' worth of values (crypto.PARALLEL_MIN_CHUNKS), two worker processes per side
    from fedrec.crypto.ckks import PARALLEL_MIN_CHUNKS

    n = PARALLEL_MIN_CHUNKS * PER_CIPHERTEXT
    x = np.random.default_rng(3).uniform(-1, 1, n)
    silo = CKKSCodec(keys.secret_context, SLOTS, public_context=keys.public_context, workers=2)
    coordinator = CKKSCodec(keys.public_context, SLOTS)
    small = CKKSCodec(keys.secret_context, SLOTS, public_context=keys.public_context, workers=2)
    try:
        # Execute
        chunks = silo.encrypt(x)
        total = coordinator.add([chunks, silo_codec(keys).encrypt(x)])
        pooled, single = silo.decrypt(total, n), silo_codec(keys).decrypt(total, n)
        small.encrypt(x[:PER_CIPHERTEXT * (PARALLEL_MIN_CHUNKS - 1)])

        # Assert: the parts come back in order; below the threshold no pool is started
        assert len(chunks) == len(total) == PARALLEL_MIN_CHUNKS and silo._pool is not None
        np.testing.assert_allclose(pooled, 2 * x, atol=1e-9)
        np.testing.assert_array_equal(pooled, single)
        assert small._pool is None
        with pytest.raises(PayloadError, match="does not parse"):
            silo.decrypt([b"\x00" * 64] * PARALLEL_MIN_CHUNKS, n)
    finally:
        silo.close()


def test_updates_whose_weights_sum_past_one_are_refused(keys, vectors):
    # Prepare: two silos each claim a share of a round total smaller than their samples together
    silo = silo_codec(keys)
    updates = [dataclasses.replace(u, n_samples=60) for u in _updates(vectors)[:2]]
    sent = [encrypt_update(u, silo, CRYPTO, 100) for u in updates]

    # Execute / Assert: at the aggregator
    with pytest.raises(PayloadError, match="weigh by a total of 100 samples but carry 120"):
        aggregate_updates(sent, coordinator_codec(keys), 3, CRYPTO)


def test_the_decryptor_refuses_an_aggregate_weighing_past_one(keys, vectors):
    # Prepare: a well-formed aggregate whose header claims more samples than its weights' total
    aggregate = aggregate_updates([encrypt_update(u, silo_codec(keys), CRYPTO, sum(N_SAMPLES)) for u in _updates(vectors)],
                                  coordinator_codec(keys), 3, CRYPTO)
    forged = dataclasses.replace(aggregate, n_samples=aggregate.total_samples + 1)

    # Execute / Assert
    with pytest.raises(PayloadError, match="n_samples .* of a weighting total"):
        decrypt_aggregate(forged, silo_codec(keys))


def test_checked_ciphertexts_are_parsed_once_and_released_by_the_sum(keys, vectors, monkeypatch):
    """The coordinator parses every chunk when it checks an update on arrival; the sum takes those, and holds
    nothing afterwards."""
    silo, coordinator = silo_codec(keys), coordinator_codec(keys)
    payloads = [silo.encrypt(x) for x in vectors]
    parsed = []
    parse = coordinator._seal._parse
    monkeypatch.setattr(coordinator._seal, "_parse", lambda chunk: parsed.append(chunk) or parse(chunk))

    problems = [coordinator.chunk_problem(p, LENGTH) for p in payloads]
    total = coordinator.add(payloads)

    assert problems == [None] * len(payloads)
    assert len(parsed) == sum(len(p) for p in payloads) == 9
    assert not coordinator._seal._kept and coordinator._seal._kept_bytes == 0
    np.testing.assert_allclose(silo.decrypt(total, LENGTH), np.sum(vectors, axis=0), atol=1e-6)
