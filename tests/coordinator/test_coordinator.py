"""fedrec.coordinator + fedrec.wire + fedrec.wire.trust against curious or forging parties: admission with pinned keys,
deadlines, a dropout unmasked by the survivors' reveals (SecAgg double masks, nobody sends twice), and every forged or
replayed payload as one silo's dropout with a named reason, on a real exchange directory with real signed payloads
(plaintext codec, masks on: the coordinator opens the sum itself; CKKS: test_masking and test_federated_flow)."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

from fedrec.coordinator.coordinator import Coordinator
from fedrec.core.config import from_dict
from fedrec.core.errors import ConfigError, FederationError, PayloadError
from fedrec.core.state import TensorSpec, flatten_state, layout_size
from fedrec.crypto import masking, secagg
from fedrec.crypto.ckks import PlainCodec
from fedrec.crypto.updates import LocalUpdate, encrypt_update
from fedrec.orchestration.launch import balanced_groups
from fedrec.protocol.reads import load_global, read_mask_keys
from fedrec.wire.exchange import (
    ADMISSION_KEY,
    STOP_KEY,
    ExchangeConflictError,
    check_silo_id,
    fit_report_key,
    global_key,
    hello_key,
    instruction_key,
    left_key,
    mask_keys_key,
    metrics_key,
    reveal_key,
    run_exchange,
    unmask_key,
    update_key,
)
from fedrec.wire.messages import (
    Admission,
    FitInstructions,
    FitReport,
    Hello,
    Left,
    MaskKeys,
    MetricReport,
    Reveal,
    Stop,
    Unmask,
)
from fedrec.wire.payload import EncryptedUpdate
from fedrec.wire.trust import Identity, Roster, SignatureError, seal, seal_envelope


@pytest.fixture()
def cfg(tmp_path):
    return from_dict({"federation": {"he": False, "join_timeout_s": 0.3, "round_timeout_s": 0.3,
                                     "exchange_url": str(tmp_path / "exchange"), "state_dir": str(tmp_path / "state")},
                      "model": {"name": "gmf", "embedding_dim": 4}})


N_TRAIN = 8


def _share_binding(coord: Coordinator, server_round: int, owner: str, holder: str) -> bytes:
    return f"fedrec-mask-share|{coord.run_id}|round {server_round}|{owner}|{holder}".encode()


class Silo:
    """A silo as the coordinator sees it: an identity that signs what it writes to the exchange, and plays the
    round's SecAgg steps (mask keys and sealed shares, a double-masked update, its reveal)."""

    def __init__(self, name: str):
        self.name, self.identity = name, Identity.generate(name)
        self.secrets: secagg.RoundSecrets | None = None  # this round's self-mask seed and ephemeral mask key
        self.participants: list[str] = []
        self.own_share: secagg.Share | None = None

    def hello(self, coord: Coordinator, valid: bool = True, *, as_silo: str | None = None) -> None:
        silo = as_silo or self.name
        hello = Hello(silo_id=self.name, valid=valid, n_rows=10, n_users=2, n_train=N_TRAIN,
                      failures=[] if valid else ["expect_column_values_to_be_between(rating): 1 unexpected value(s)"],
                      identity=self.identity.public.to_dict())
        coord.exchange.post(hello_key(silo), hello.to_json(), self.identity)

    def announce(self, coord: Coordinator, server_round: int, participants: list[str]) -> None:
        """Fresh round secrets; post their public half, the seed's commitment and one share of each per other
        participant, sealed to it; keep its own share."""
        self.secrets, self.participants = secagg.RoundSecrets(), list(participants)
        threshold = secagg.threshold_for(len(participants), coord.cfg.federation.share_threshold)
        shares = self.secrets.shares(secagg.share_points(participants), threshold)
        self.own_share = secagg.Share.parse(shares[self.name], "own share")
        sealed = {s: seal(shares[s], coord.roster.get(s), _share_binding(coord, server_round, self.name, s)).hex()
                  for s in participants if s != self.name}
        coord.exchange.post(mask_keys_key(server_round, self.name), MaskKeys(
            silo_id=self.name, round=server_round, public=self.secrets.public, commitment=self.secrets.commitment,
            threshold=threshold, shares=sealed).to_json(), self.identity)

    def delta(self, coord: Coordinator, value: float) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(sum(map(ord, self.name)))
        return {k: value * torch.rand(v.shape, generator=gen) for k, v in coord.global_state.items()}

    def payload(self, coord: Coordinator, server_round: int, mask_set: list[str], *, value: float = 0.5,
                claimed_round: int | None = None, masked: bool = True) -> EncryptedUpdate:
        """Its update, weighted by the participants' declared samples, double-masked against the mask set's
        published round keys (each read signed by its silo)."""
        update = LocalUpdate(self.name, claimed_round or server_round, N_TRAIN, self.delta(coord, value))
        mask = None
        if masked:
            peers = {s: read_mask_keys(coord.exchange, coord.roster, server_round, s).public
                     for s in mask_set if s != self.name}
            mask = self.secrets.pair_masks(self.name, peers, secagg.mask_info(coord.run_id, server_round),
                                           masking.n_slots(sum(t.numel() for t in update.delta.values()),
                                                           coord.cfg.crypto.pack), coord.cfg.crypto.mask_bits)
        total = N_TRAIN * len(self.participants or mask_set)
        return encrypt_update(update, PlainCodec(), coord.cfg.crypto, total, mask)

    def send(self, coord: Coordinator, server_round: int, mask_set: list[str], **kwargs) -> None:
        key = update_key(server_round, self.name)
        coord.exchange.post(key, self.payload(coord, server_round, mask_set, **kwargs).to_bytes(), self.identity)
        coord.exchange.post(fit_report_key(server_round, self.name), FitReport(
            silo_id=self.name, round=server_round, n_samples=N_TRAIN, loss=0.5, seconds_train=0.1,
            seconds_encrypt=0.0, bytes_sent=1, plaintext_bytes=1).to_json(), self.identity)

    def held(self, coord: Coordinator, server_round: int, silos: list[str]) -> dict[str, secagg.Share]:
        """The shares of ``silos``' secrets this silo holds: its own, and those the others sealed to it."""
        held = {}
        for silo in silos:
            if silo == self.name:
                held[silo] = self.own_share
                continue
            keys = read_mask_keys(coord.exchange, coord.roster, server_round, silo)
            held[silo] = secagg.Share.parse(self.identity.unseal(
                bytes.fromhex(keys.shares[self.name]), _share_binding(coord, server_round, silo, self.name)),
                mask_keys_key(server_round, silo))
        return held

    def reveal(self, coord: Coordinator, server_round: int) -> Reveal:
        """After the coordinator's Unmask: its shares of the survivors' self-mask seeds and of the dropped silos'
        mask keys (never both for one silo)."""
        key = unmask_key(server_round)
        unmask = Unmask.from_json(coord.exchange.read(key, coord.identity.public), key)
        held = self.held(coord, server_round, [*unmask.survivors, *unmask.dropped])
        reveal = Reveal(silo_id=self.name, round=server_round,
                        self_shares={s: [held[s].x, format(held[s].self_share, "x")] for s in unmask.survivors},
                        key_shares={s: [held[s].x, format(held[s].key_share, "x")] for s in unmask.dropped})
        coord.exchange.post(reveal_key(server_round, self.name), reveal.to_json(), self.identity)
        return reveal


def _opened(coord: Coordinator, names: str) -> dict[str, Silo]:
    """Every silo in ``names`` said a valid hello; admitted, plaintext context open, global(0) published."""
    silos = {n: Silo(n) for n in names}
    for silo in silos.values():
        silo.hello(coord)
    coord.admit(list(names))
    coord.open_context()
    coord.init_global()
    return silos


def _masked_round(coord: Coordinator, silos: dict[str, Silo], server_round: int = 1) -> tuple[list[str], list[str]]:
    """Instructions, every silo's round mask keys, the mask set: returns (participants, mask set)."""
    participants = coord.start_round(server_round, evaluate=False)
    for name in participants:
        silos[name].announce(coord, server_round, participants)
    return participants, coord.fix_mask_set(server_round, participants)


def _unmasked_mean(coord: Coordinator, silos: list[Silo], n_participants: int | None = None) -> np.ndarray:
    """What the round's mean must be: the silos' deltas weighted by the participants' samples on the integer grid,
    summed without masks, the weights scaled back to one over the contributors (as the decryptor does)."""
    bits = coord.cfg.crypto.quantization_bits
    total = N_TRAIN * (n_participants or len(silos))
    q = sum(masking.quantize_share(flatten_state(s.delta(coord, 0.5)), N_TRAIN, total, bits) for s in silos)
    return (q.astype(np.float64) / 2.0 ** bits * (total / (N_TRAIN * len(silos)))).astype(np.float32)  # model dtype


def test_admission_keeps_valid_silos_and_says_why_the_others_are_out(cfg):
    # Prepare: three valid silos, an invalid and a silent one
    coord = Coordinator(cfg, "run-a", n_items=6)
    for name in "acd":
        Silo(name).hello(coord)
    Silo("b").hello(coord, valid=False)

    # Execute
    admission = coord.admit(["a", "b", "c", "d", "e"])

    # Assert: the admission is signed by the coordinator and lists every admitted party's public keys
    assert admission.silos == ["a", "c", "d"] and admission.key_holder == "a"
    assert admission.excluded["b"].startswith("data validation failed: expect_column_values_to_be_between(rating)")
    assert admission.excluded["e"] == "did not join within 0s"
    assert Admission.from_json(coord.exchange.read(ADMISSION_KEY, coord.identity.public)) == admission
    assert set(admission.roster) == {"coordinator", "a", "c", "d"}


def test_too_few_silos_stops_the_run_with_a_named_error(cfg):
    coord = Coordinator(cfg, "run-b", n_items=6)
    for name in "ab":
        Silo(name).hello(coord)

    with pytest.raises(FederationError, match="federation.min_silos=3"):
        coord.admit(["a", "b", "c"])
    stop = Stop.from_json(coord.exchange.read(STOP_KEY, coord.identity.public))
    assert stop.last_round == 0  # the agents are told to leave


def test_a_dropout_after_the_mask_set_is_fixed_is_unmasked_by_the_survivors_reveals_and_the_sum_is_exact(cfg):
    # Prepare: a, b, c, d announced their round mask keys and are the mask set; d drops out before its update
    coord = Coordinator(cfg, "run-c", n_items=6)
    silos = _opened(coord, "abcd")
    participants, mask_set = _masked_round(coord, silos)
    for name in "abc":
        silos[name].send(coord, 1, mask_set)  # masked with d's key too: these do not cancel without d's update

    # Execute: the survivors are named; each reveals once; the coordinator (plaintext run) opens the sum
    collected = coord.collect_updates(1, mask_set, participants)
    reveals = {name: silos[name].reveal(coord, 1) for name in "abc"}
    opened = coord.open_sum(1, coord.aggregate(1, collected.updates), collected.updates)
    moved = coord.step(1, opened.result, collected.failures | opened.failures)

    # Assert: d is named dropped; the survivors revealed their self-mask shares and d's mask key shares, never both
    # secrets of one silo; nobody was asked to send again (one update key per survivor, none for d)
    unmask = Unmask.from_json(coord.exchange.read(unmask_key(1), coord.identity.public))
    assert mask_set == ["a", "b", "c", "d"] and (unmask.survivors, unmask.dropped) == (["a", "b", "c"], ["d"])
    assert all(sorted(r.self_shares) == ["a", "b", "c"] and list(r.key_shares) == ["d"] for r in reveals.values())
    assert coord.exchange.keys("round-0001/updates") == [update_key(1, s) for s in "abc"]
    assert collected.failures == {"d": "no update within 0s"} and opened.failures == {}
    # the mean is exactly the survivors' unmasked one (weights over the four participants, scaled back to one)
    result = opened.result
    assert moved and result.contributors == ("a", "b", "c") and result.total_samples == 3 * N_TRAIN
    mean = flatten_state(result.mean_delta)
    assert np.array_equal(mean, _unmasked_mean(coord, [silos[n] for n in "abc"], n_participants=4))
    weighted = sum(flatten_state(silos[n].delta(coord, 0.5)) for n in "abc") / 3  # equal samples: equal weights
    # three shares, each within half a grid step at weight 1/4, scaled by 4/3
    assert np.max(np.abs(mean - weighted)) <= 2 * 2.0 ** -cfg.crypto.quantization_bits + 1e-7


def test_masks_hide_each_update_from_the_coordinator(cfg):
    # Prepare: a plaintext run (he: false) with masks: the coordinator reads each silo's payload (8,005 values)
    coord = Coordinator(cfg, "run-m", n_items=2000)
    silos = _opened(coord, "abc")
    _, mask_set = _masked_round(coord, silos)

    # Execute
    masked = silos["a"].payload(coord, 1, mask_set)
    unmasked = silos["a"].payload(coord, 1, mask_set, masked=False)

    # Assert: masked, a's values look uniform and are uncorrelated with its update; unmasked, they are the update
    crypto, size = coord.cfg.crypto, layout_size(masked.layout)
    values = PlainCodec().decrypt(list(masked.chunks), masking.n_slots(size, crypto.pack))
    truth = PlainCodec().decrypt(list(unmasked.chunks), masking.n_slots(size, crypto.pack))
    assert abs(np.corrcoef(values, truth)[0, 1]) < 0.09 and np.std(values) > 0.5  # 5 sigma of chance (4,003 slots)
    lanes = masking.unpack_lanes(masking.decode_sum(truth, 1, crypto.mask_bits), crypto.pack, crypto.lane_bits, size)
    assert np.corrcoef(lanes, flatten_state(silos["a"].delta(coord, 0.5)))[0, 1] > 0.999


def _forge(kind: str, coord: Coordinator, silos: dict[str, Silo], mask_set: list[str]) -> None:
    """Silo d's round-1 update, forged or replayed as ``kind``."""
    d, key = silos["d"], update_key(1, "d")
    post = lambda payload: coord.exchange.put(key, seal_envelope(payload.to_bytes(), run_id=coord.run_id, key=key,  # noqa: E731
                                                                 author=d.identity))
    honest = d.payload(coord, 1, mask_set)
    if kind == "unknown silo":  # a newcomer's key, not the one d was admitted with
        coord.exchange.put(key, seal_envelope(honest.to_bytes(), run_id=coord.run_id, key=key,
                                              author=Identity.generate("d")))
    elif kind == "altered after signing":
        signed = bytearray(seal_envelope(honest.to_bytes(), run_id=coord.run_id, key=key, author=d.identity))
        signed[-5] ^= 1
        coord.exchange.put(key, bytes(signed))
    elif kind == "another silo's payload":
        coord.exchange.put(key, coord.exchange.get(update_key(1, "a")))
    elif kind == "replayed from another key":
        coord.exchange.put(key, seal_envelope(honest.to_bytes(), run_id=coord.run_id, key=update_key(2, "d"),
                                              author=d.identity))
    elif kind == "replayed from another run":
        coord.exchange.put(key, seal_envelope(honest.to_bytes(), run_id="run-old", key=key, author=d.identity))
    elif kind == "unsigned":
        coord.exchange.put(key, honest.to_bytes())
    elif kind == "wrong round":
        post(d.payload(coord, 1, mask_set, claimed_round=7))
    elif kind == "foreign context":
        post(dataclasses.replace(honest, context_id="0123456789abcdef", scheme="ckks"))
    elif kind == "layout mismatch":
        post(dataclasses.replace(honest, layout=(TensorSpec("items.weight", (3, 3)),)))
    elif kind == "implausible n_samples":
        post(dataclasses.replace(honest, n_samples=10**9))
    elif kind == "inflated weight":  # weighted by a smaller total than the round's: a larger share of the mean
        post(dataclasses.replace(honest, total_samples=N_TRAIN))
    elif kind == "NaN":
        post(dataclasses.replace(honest, chunks=(np.full(len(honest.chunks[0]) // 8, np.nan).tobytes(),)))
    elif kind == "truncated":
        signed = seal_envelope(honest.to_bytes(), run_id=coord.run_id, key=key, author=d.identity)
        coord.exchange.put(key, signed[:-100])
    elif kind == "oversized":  # over federation.max_payload_bytes (4096 in this test): never read
        post(dataclasses.replace(honest, chunks=(honest.chunks[0] + b"\0" * 8 * 1024,)))
    elif kind == "wrong kind":
        post(dataclasses.replace(honest, kind="global"))
    elif kind == "future round":
        post(d.payload(coord, 1, mask_set, claimed_round=2))
    elif kind == "corrupt bytes":
        coord.exchange.put(key, seal_envelope(b"FEDREC1\n\x00\x00garbage", run_id=coord.run_id, key=key,
                                              author=d.identity))
    coord.exchange.post(fit_report_key(1, "d"), FitReport(silo_id="d", round=1, n_samples=N_TRAIN, loss=0.5,
                                                          seconds_train=0.1, seconds_encrypt=0.0, bytes_sent=1,
                                                          plaintext_bytes=1).to_json(), d.identity)


@pytest.mark.parametrize("kind, reason", [
    ("unknown silo", "bad signature from 'd'"),
    ("altered after signing", "bad signature from 'd'"),
    ("another silo's payload", "signed by 'a', expected 'd'"),
    ("replayed from another key", "bad signature from 'd'"),
    ("replayed from another run", "bad signature from 'd'"),
    ("unsigned", "unsigned"),
    ("wrong round", "round 7 (expected 1)"),
    ("foreign context", "foreign context 0123456789abcdef"),
    ("layout mismatch", "tensor layout differs"),
    ("implausible n_samples", "n_samples 1000000000 (declared 8"),
    ("inflated weight", f"weighted by a total of {N_TRAIN} samples (the round's is {4 * N_TRAIN})"),
    ("NaN", "not finite"),
    ("corrupt bytes", "corrupt header"),
    ("truncated", "bad signature from 'd'"),
    ("oversized", "larger than federation.max_payload_bytes=4096"),
    ("wrong kind", "expected a 'update' payload, got 'global'"),
    ("future round", "round 2 (expected 1)"),
])
def test_a_forged_or_replayed_update_is_that_silos_dropout_and_the_others_sum_is_unchanged(cfg, kind, reason):
    # Prepare: a, b, c, d are the mask set; a, b, c send honest masked updates; d's is forged
    coord = Coordinator(cfg.replace(**{"federation.max_payload_bytes": 4096}), "run-f", n_items=6)
    silos = _opened(coord, "abcd")
    participants, mask_set = _masked_round(coord, silos)
    for name in "abc":
        silos[name].send(coord, 1, mask_set)
    _forge(kind, coord, silos, mask_set)

    # Execute: d is named dropped, the survivors reveal, the coordinator opens their sum
    collected = coord.collect_updates(1, mask_set, participants)
    for name in "abc":
        silos[name].reveal(coord, 1)
    opened = coord.open_sum(1, coord.aggregate(1, collected.updates), collected.updates)

    # Assert: d is the round's failure with the named reason and among the dropped (its key rebuilt from the
    # survivors' shares, its self-mask never revealed); the others' mean is exactly theirs
    assert set(collected.failures) == {"d"} and reason in collected.failures["d"], collected.failures
    unmask = Unmask.from_json(coord.exchange.read(unmask_key(1), coord.identity.public))
    assert (unmask.survivors, unmask.dropped) == (["a", "b", "c"], ["d"])
    assert opened.failures == {} and opened.result.contributors == ("a", "b", "c")
    assert np.array_equal(flatten_state(opened.result.mean_delta),
                          _unmasked_mean(coord, [silos[n] for n in "abc"], n_participants=4))


def test_a_round_below_the_minimum_contributors_is_skipped_and_keeps_the_global_model(cfg):
    # Prepare: a, b, c are the mask set; only a and b send
    coord = Coordinator(cfg, "run-d", n_items=6)
    silos = _opened(coord, "abc")
    participants, mask_set = _masked_round(coord, silos)
    silos["a"].send(coord, 1, mask_set)
    silos["b"].send(coord, 1, mask_set)

    # Execute
    collected = coord.collect_updates(1, mask_set, participants)
    opened = coord.open_sum(1, coord.aggregate(1, collected.updates), collected.updates)
    moved = coord.step(1, opened.result, collected.failures | opened.failures)

    # Assert: two updates would reveal each other through the mean: the round is skipped, no survivors are named
    # (nobody reveals a share), nothing is opened
    assert not moved and collected.updates == [] and not coord.exchange.exists(unmask_key(1))
    assert opened.result is None and opened.attempts == 0
    assert collected.failures["c"] == "no update within 0s"
    assert "fewer than federation.min_silos=3" in collected.failures["a"]
    assert coord.exchange.exists("round-0001/no-aggregate.json")  # the decryptor stops waiting
    assert all(torch.equal(load_global(coord.exchange, 1)[k], load_global(coord.exchange, 0)[k])
               for k in coord.global_state)


def test_exchange_keys_are_write_once(cfg):
    coord = Coordinator(cfg, "run-w", n_items=6)
    _opened(coord, "abc")
    before = coord.exchange.get(global_key(0))

    with pytest.raises(ExchangeConflictError, match="write-once"):
        coord.exchange.put(global_key(0), b"a replaced global model")
    with pytest.raises(ExchangeConflictError):
        coord.exchange.put(ADMISSION_KEY, b"{}")
    assert coord.exchange.get(global_key(0)) == before


def test_a_global_model_or_instruction_not_signed_by_the_coordinator_is_refused(cfg):
    from fedrec.crypto.updates import encode_global

    coord = Coordinator(cfg, "run-k", n_items=6)
    silos = _opened(coord, "abc")
    key = global_key(1)
    coord.exchange.post(key, encode_global(coord.global_state, 1).to_bytes(), silos["a"].identity)  # a silo's forgery

    with pytest.raises(SignatureError, match="signed by 'a', expected 'coordinator'"):
        load_global(coord.exchange, 1, coord.identity.public)


def test_a_hello_under_another_silos_name_or_with_other_keys_than_pinned_is_not_admitted(cfg):
    # Prepare: a first run pins a, b, c, d
    first = Coordinator(cfg, "run-j1", n_items=6)
    first_silos = _opened(first, "abcd")
    coord = Coordinator(cfg, "run-j2", n_items=6)
    c = Silo("c")
    c.identity = first_silos["c"].identity
    # a and b come back with new keys (a stolen name, or a reinstalled silo); c signs a hello in d's place
    for silo in (Silo("a"), Silo("b")):
        silo.hello(coord)
    c.hello(coord, as_silo="d")
    c.hello(coord)
    for name in "efg":
        Silo(name).hello(coord)

    admission = coord.admit(["a", "b", "c", "d", "e", "f", "g"])

    assert admission.silos == ["c", "e", "f", "g"]
    assert "presents other keys than the pinned ones" in admission.excluded["a"]
    assert "presents other keys than the pinned ones" in admission.excluded["b"]
    assert admission.excluded["d"] == f"{hello_key('d')}: signed by 'c', not by silo 'd'"


def test_with_a_pinned_roster_an_unknown_silo_is_not_admitted(cfg, tmp_path):
    silos = {n: Silo(n) for n in "abcx"}
    roster = Roster({n: silos[n].identity.public for n in "abc"})
    path = tmp_path / "roster.json"
    path.write_bytes(roster.to_json())
    coord = Coordinator(cfg.replace(**{"federation.roster": str(path)}), "run-p", n_items=6)
    for silo in silos.values():
        silo.hello(coord)

    admission = coord.admit(list("abcx"))

    assert admission.silos == ["a", "b", "c"]
    assert "not in the pinned roster" in admission.excluded["x"]
    assert not (tmp_path / "state" / "coordinator" / "known_silos.json").exists()  # nothing learnt on first use

@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 65, "a..b"])
def test_path_like_silo_ids_are_refused(bad):
    with pytest.raises(ConfigError, match="not allowed"):
        check_silo_id(bad)


def test_run_ids_must_be_plain_path_segments(cfg):
    with pytest.raises(ConfigError):
        run_exchange(cfg, "../elsewhere")


@pytest.mark.parametrize("data, match", [(b"not json", "not JSON"), (b"[1]", "JSON object"),
                                         (b'{"silo_id": "a"}', "lacks"),
                                         (b'{"round": 0, "local_epochs": 1}', "out of range")])
def test_malformed_messages_are_payload_errors(data, match):
    cls = FitInstructions if b"round" in data else Hello
    with pytest.raises(PayloadError, match=match):
        cls.from_json(data, "test")


def test_messages_round_trip():
    ins = FitInstructions(round=3, local_epochs=2, proximal_mu=0.1, silos=["a", "b"], evaluate=True)
    assert FitInstructions.from_json(ins.to_json()) == ins


def test_hosts_are_balanced_by_silo_size():
    sizes = {"big": 100, "m1": 50, "m2": 45, "s1": 5, "s2": 4}

    groups = balanced_groups(list(sizes), 2, sizes)

    loads = sorted(sum(sizes[s] for s in g) for g in groups)
    assert sorted(s for g in groups for s in g) == sorted(sizes)
    assert loads == [100, 104]
    assert balanced_groups(["a", "b", "c"], 8) == [["a"], ["b"], ["c"]]  # never more hosts than silos


def test_hosts_are_balanced_past_longest_first_and_count_each_silo_s_fixed_cost():
    # ML-100K's region silos (interactions): longest-processing-time first alone left 51,501 against 48,499 rows
    sizes = {"0": 9343, "1": 10331, "2": 10597, "3": 5933, "4": 7986, "5": 11759, "6": 8943, "7": 6728, "8": 7442,
             "9": 18852, "other": 2086}

    by_rows = balanced_groups(list(sizes), 2, sizes)
    with_fixed = balanced_groups(list(sizes), 2, sizes, per_silo=1000)
    few_big = balanced_groups(["a", "b", "c", "d"], 2, {"a": 10, "b": 10, "c": 10, "d": 10}, per_silo=100)

    loads = lambda groups, per: sorted(sum(sizes[s] + per for s in g) for g in groups)  # noqa: E731
    assert sorted(s for g in with_fixed for s in g) == sorted(sizes)
    assert loads(by_rows, 0)[1] - loads(by_rows, 0)[0] <= 500
    assert loads(with_fixed, 1000)[1] - loads(with_fixed, 1000)[0] <= 500
    assert sorted(map(len, few_big)) == [2, 2]


def test_a_silo_that_left_is_not_waited_for_and_a_forged_left_is_ignored(cfg):
    # Prepare: a long deadline; d's agent failed and said so; a forges a "left" in c's name
    coord = Coordinator(cfg.replace(**{"federation.round_timeout_s": 60.0, "federation.masking": False}), "run-f",
                        n_items=6)
    silos = _opened(coord, "abcd")
    participants = coord.start_round(1, evaluate=False)
    for name in "abc":
        silos[name].send(coord, 1, participants, masked=False)
    coord.exchange.post(left_key("d"), Left(silo_id="d", after_round=0, reason="PayloadError: NaN in update").to_json(),
                        silos["d"].identity)
    coord.exchange.post(left_key("c"), Left(silo_id="c", after_round=0, reason="forged").to_json(), silos["a"].identity)

    # Execute
    start = time.monotonic()
    collected = coord.collect_updates(1, participants)

    # Assert: d is a failure with its reason, found long before the 60 s deadline; c's forged, unverifiable
    # "left" removes nobody: c is not gone, its update counts, and it is still asked to train in round 2
    assert time.monotonic() - start < 30
    assert collected.failures == {"d": "its agent left the run (PayloadError: NaN in update)"}
    assert [u.silo_id for u in collected.updates] == ["a", "b", "c"]
    assert coord.gone() == {"d"}
    assert coord.start_round(2, evaluate=False) == ["a", "b", "c"]  # d gets no more instructions, c does


def _reveal_when_named(coord: Coordinator, silos: list[Silo], server_round: int) -> None:
    """What the survivors' agents do after their update: wait for the coordinator's Unmask, then reveal."""
    if coord.exchange.wait_any([unmask_key(server_round)], timeout=30, poll=0.02) is not None:
        for silo in silos:
            silo.reveal(coord, server_round)


def test_a_silo_gone_before_the_round_is_recorded_as_its_failure(cfg):
    from fedrec.coordinator.round import fit_round

    # Prepare: d's agent ended before round 1; a, b, c were instructed, announced their mask keys, sent their masked
    # updates, and reveal their shares once the coordinator names the survivors
    coord = Coordinator(cfg.replace(**{"federation.round_timeout_s": 30.0}), "run-g", n_items=6, gone=lambda: {"d"})
    silos = _opened(coord, "abcd")
    participants = coord.start_round(1, evaluate=False)  # fit_round finds these instructions sent
    for name in participants:
        silos[name].announce(coord, 1, participants)
    for name in participants:
        silos[name].send(coord, 1, participants)
    revealer = threading.Thread(target=_reveal_when_named, args=(coord, [silos[n] for n in participants], 1),
                                daemon=True)
    revealer.start()

    # Execute
    _, record = fit_round(coord.state, coord, 1, evaluate=False)
    revealer.join(timeout=30)

    # Assert: d got no instructions and is the round's failure; the others' sum was opened
    ins = FitInstructions.from_json(coord.exchange.read(instruction_key(1, "a"), coord.identity.public))
    assert participants == ins.silos == ["a", "b", "c"]
    assert not coord.exchange.exists(instruction_key(1, "d"))
    assert record.contributors == ["a", "b", "c"] and record.failures == {"d": "its agent ended"}
    before, after = (flatten_state(load_global(coord.exchange, r)) for r in (0, 1))
    assert not np.array_equal(after, before)


def _he_admitted(cfg, run_id: str, silos: dict[str, Silo], *, publish_secret: bool = False) -> Coordinator:
    """An HE run with a, b, c admitted; key holder a published its context (or, carelessly, its secret one)."""
    from fedrec.crypto.ckks import create_keys
    from fedrec.wire.exchange import PUBLIC_CONTEXT_KEY

    he = cfg.replace(**{"federation.he": True})
    coord = Coordinator(he, run_id, n_items=6)
    for silo in silos.values():
        silo.hello(coord)
    coord.admit(list(silos))
    keys = create_keys(he.crypto)
    coord.exchange.post(PUBLIC_CONTEXT_KEY, keys.secret_context if publish_secret else keys.public_context,
                        silos["a"].identity)
    return coord


def _he_round_one(cfg, run_id: str, silos: dict[str, Silo]) -> Coordinator:
    coord = _he_admitted(cfg, run_id, silos)
    coord.open_context()
    coord.init_global()
    coord.start_round(1, evaluate=False)
    return coord


def test_the_coordinator_refuses_a_published_context_that_can_decrypt(cfg):
    # Prepare: a (careless or malicious) key holder publishes its secret context as the public one
    coord = _he_admitted(cfg, "run-h", {n: Silo(n) for n in "abc"}, publish_secret=True)

    # Execute / Assert
    with pytest.raises(PayloadError, match="contains a secret key"):
        coord.open_context()


def test_a_mean_that_is_not_of_the_rounds_aggregate_or_not_by_the_decryptor_is_refused(cfg):
    # Prepare: an HE run whose decryptor (a) is asked to open a sum of a, b, c; answers come as means over other
    # contributors than the aggregate's, or from a silo that was not asked
    from fedrec.crypto.updates import AggregateResult, encode_mean
    from fedrec.wire.exchange import decrypt_key, mean_key
    from fedrec.wire.messages import DecryptRequest

    silos = {n: Silo(n) for n in "abc"}
    coord = _he_round_one(cfg, "run-i", silos)
    aggregate = EncryptedUpdate(kind="aggregate", round=1, silo_id="aggregate", n_samples=24, scheme="ckks",
                                context_id=coord.codec.context_id, layout=(), chunks=(), contributors=("a", "b", "c"))
    zeros = {k: torch.zeros_like(v) for k, v in coord.global_state.items()}
    forged = AggregateResult(zeros, 16, ("a", "b"))
    honest = AggregateResult(zeros, 24, ("a", "b", "c"))

    # Execute: b, not the round's decryptor, takes attempt 0's mean key; b (asked next) then answers honestly
    coord.exchange.post(mean_key(1, 0), encode_mean(forged, 1).to_bytes(), silos["b"].identity)
    coord.exchange.post(mean_key(1, 1), encode_mean(honest, 1).to_bytes(), silos["b"].identity)
    opened = coord.open_sum(1, aggregate)

    # Assert: the forged answer costs an attempt, not the run; the failure names why
    asked = [DecryptRequest.from_json(coord.exchange.read(decrypt_key(1, a), coord.identity.public)).decryptor
             for a in (0, 1)]
    assert asked == ["a", "b"]
    assert opened.attempts == 2 and opened.result.contributors == ("a", "b", "c")
    assert "signed by 'b', expected 'a'" in opened.failures["a"]

    # Execute: the decryptor itself publishes a mean of another sum; c answers attempt 1
    coord2 = _he_round_one(cfg, "run-i2", silos)
    aggregate2 = dataclasses.replace(aggregate, context_id=coord2.codec.context_id)
    coord2.exchange.post(mean_key(1, 0), encode_mean(forged, 1).to_bytes(), silos["a"].identity)
    coord2.exchange.post(mean_key(1, 1), encode_mean(honest, 1).to_bytes(), silos["b"].identity)
    opened2 = coord2.open_sum(1, aggregate2)

    # Assert
    assert opened2.result.total_samples == 24 and opened2.attempts == 2
    assert "not of this round's aggregate" in opened2.failures["a"]


def test_a_global_model_of_another_round_is_refused(cfg):
    from fedrec.crypto.updates import encode_global

    coord = Coordinator(cfg, "run-k", n_items=6)
    _opened(coord, "abc")
    coord.exchange.post(global_key(3), encode_global(coord.global_state, 2).to_bytes(), coord.identity)

    with pytest.raises(PayloadError, match="holds the model of round 2"):
        load_global(coord.exchange, 3, coord.identity.public)


def test_a_mean_holding_nan_is_refused():
    from fedrec.crypto.updates import AggregateResult, decode_mean, encode_mean

    poisoned = AggregateResult({"w": torch.tensor([1.0, float("nan")])}, 4, ("a", "b"))

    with pytest.raises(PayloadError, match="NaN or Inf"):
        decode_mean(encode_mean(poisoned, 1), 1)


def test_a_hello_with_implausible_sizes_is_malformed():
    hello = Hello(silo_id="a", valid=True, n_rows=10, n_users=2, n_train=11)  # more training rows than rows

    with pytest.raises(PayloadError, match="implausible sizes"):
        Hello.from_json(hello.to_json(), "hello")


def test_metric_sums_of_another_task_or_with_foreign_keys_are_that_silos_failure(cfg):
    # Prepare: an opened ranking run; silo a sends ranking sums, b rating sums, c sums with a foreign key
    coord = Coordinator(cfg, "run-metrics", n_items=6)
    silos = _opened(coord, "abc")
    ranking = {"n": 2, "hr": 1.0, "ndcg": 0.5, "full_hr": 0.0, "full_ndcg": 0.0}
    sent = {"a": ranking, "b": {"n": 2, "sse": 1.0, "sae": 1.0}, "c": ranking | {"extra": 1.0}}
    for name, sums in sent.items():
        coord.exchange.post(metrics_key(1, name), MetricReport(silo_id=name, round=1, val=sums, test=ranking).to_json(),
                            silos[name].identity)

    # Act
    reports, failures = coord.collect_metrics(1, ["a", "b", "c"])

    # Assert: a counts; b and c are refused by name (the run goes on), never a TypeError
    assert [r.silo_id for r in reports] == ["a"]
    assert set(failures) == {"b", "c"}
    assert "metric sums of the ranking task have the keys" in failures["b"] and "sse" in failures["b"]
    assert "extra" in failures["c"] and failures["c"].startswith(metrics_key(1, "c"))
