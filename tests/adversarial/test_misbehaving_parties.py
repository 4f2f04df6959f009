"""Issue #17's audit, replayed against real silo agents (CKKS, SecAgg double masks, signed payloads on a real
exchange directory): a misbehaving coordinator, a misbehaving silo and an outsider with write access to the exchange
try each attack the audit found (and a few more); each test fails on the protocol the audit broke (d13bd96: remask
among survivors, header-trusting decryptor, one decryptor) and passes now.

Ids, file modes, SQL and serve's error shapes (findings 6-9): tests/wire/test_ids.py, tests/silo/test_private_files.py,
tests/silo/test_sources.py, tests/silo/test_recommend.py, tests/cli/test_cli.py."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedrec.core.config import from_dict
from fedrec.core.errors import PolicyError
from fedrec.core.state import flatten_state
from fedrec.crypto import masking, secagg
from fedrec.crypto.updates import aggregate_updates
from fedrec.protocol.reads import gather_masks, load_global
from fedrec.silo import data as pipeline
from fedrec.silo.agent import SiloAgent
from fedrec.wire.exchange import (
    aggregate_key,
    fit_report_key,
    left_key,
    mask_keys_key,
    mean_key,
    reveal_key,
    unmask_key,
    update_key,
    verdict_key,
)
from fedrec.wire.messages import FitReport, Left, MaskKeys, Reveal, Unmask, Verdict
from fedrec.wire.payload import EncryptedUpdate
from fedrec.wire.trust import Identity, peek_envelope

from conftest import make_tiny_params
from support import roundkit

ROOT = Path(__file__).resolve().parents[2]
SILOS = ("0", "1", "2", "3")


def _params(tmp_path: Path, **federation) -> dict:
    raw = make_tiny_params(tmp_path)
    raw["partition"]["n_silos"] = 4
    raw["model"] = {"name": "neumf", "embedding_dim": 48, "mlp_layers": [32, 16]}  # ~7k shared values
    raw["training"]["epochs"] = 1
    raw["federation"] |= {"min_silos": 3, "round_timeout_s": 20, "join_timeout_s": 60} | federation
    return raw


@pytest.fixture()
def cfg(tmp_path):
    cfg = from_dict(_params(tmp_path))
    pipeline.ensure_partitioned(cfg)
    return cfg


def _update(exchange, r: int, silo: str) -> EncryptedUpdate:
    return EncryptedUpdate.from_bytes(peek_envelope(exchange.get(update_key(r, silo)))[1])


def _slots(u: EncryptedUpdate, cfg) -> int:
    return masking.n_slots(sum(int(np.prod(t.shape)) for t in u.layout), cfg.crypto.pack)


class KeepsItsSeed(SiloAgent):
    """An honest silo whose self-mask seed the test keeps (to show what exactly protects a dropped update)."""

    def announce(self, ins):
        super().announce(ins)
        self.kept_seed = self._masks.secrets.seed


@pytest.mark.slow
def test_a_forged_report_turns_a_silo_into_a_dropout_and_differencing_the_sums_recovers_nothing(cfg):
    # Prepare: an outsider with write access to the exchange pre-writes silo 3's round-1 report: 3's update arrives
    # and verifies, but the coordinator cannot verify its report and counts 3 as dropped (the audit's finding 1)
    coord, agents = roundkit.opened(cfg, "forged-report", SILOS, agent_cls={"3": KeepsItsSeed})
    start = flatten_state(load_global(coord.exchange, 0))
    mallory = Identity.generate("3")
    coord.exchange.post(fit_report_key(1, "3"), FitReport(silo_id="3", round=1, n_samples=1, loss=0.0,
                                                          seconds_train=0, seconds_encrypt=0, bytes_sent=0,
                                                          plaintext_bytes=0).to_json(), mallory)

    # Execute: the round; then the key holder (silo 0) differences the sum with 3 and the survivors' sum
    records, errors = roundkit.run_rounds(coord, agents, 1)
    exchange, codec, bits = coord.exchange, agents["0"].codec, cfg.crypto.mask_bits
    updates = {s: _update(exchange, 1, s) for s in SILOS}
    slots = _slots(updates["3"], cfg)

    def residues(silos):
        total = codec.decrypt(codec.add([list(updates[s].chunks) for s in silos]), slots)
        return masking.residues(total, len(silos), bits)

    modulus = np.uint64(2 ** bits - 1)
    difference = (residues(SILOS) - residues(("0", "1", "2"))) & modulus  # = 3's masked encoding
    unmask = Unmask.from_json(peek_envelope(exchange.get(unmask_key(1)))[1])
    masks = gather_masks(exchange, coord.roster, "forged-report", unmask, secagg.share_points(list(SILOS)),
                         time.monotonic() + 5, 0.01)
    private_3, _ = masks.dropped["3"]  # the survivors revealed 3's mask key (it dropped): its pair masks go
    left = (difference - secagg.pairwise_mask(private_3, "3", masks.survivors, masks.info, slots, bits)) & modulus
    three = agents["3"]
    truth = masking.pack_lanes(masking.quantize_share(flatten_state(three.model.shared_state()) - start,
                                                      three.data.n_train, updates["3"].total_samples,
                                                      cfg.crypto.quantization_bits), cfg.crypto.pack,
                               cfg.crypto.lane_bits)

    # Assert: 3 was a dropout; the round went on with the others, and nobody encrypted an update twice
    assert errors == {} and records[0].contributors == ["0", "1", "2"]
    assert "3" in records[0].failures and "signature" in records[0].failures["3"]
    assert unmask.dropped == ["3"] and len(exchange.keys("round-0001/updates")) == 4
    # Assert: what differencing leaves is 3's update under its self-mask: uncorrelated noise (6 sigma)
    seen = masking.center(left, bits)
    assert np.any(truth != 0) and abs(np.corrcoef(seen, truth)[0, 1]) < 6 / np.sqrt(slots)
    assert np.std(seen) > 2 ** (bits - 3)
    # Assert: ... and it is the self-mask alone that stands between the attacker and the update (control)
    exact = masking.center((left - masking.keystream(three.kept_seed, slots, bits)) & modulus, bits)
    assert np.array_equal(exact, truth)


def test_a_forged_left_json_removes_nobody(cfg):
    # Prepare: an outsider drops an unsigned-by-3 left.json for silo 3 before the round
    coord, agents = roundkit.opened(cfg, "forged-left", SILOS)
    coord.exchange.post(left_key("3"), Left("3", 0, "forged").to_json(), Identity.generate("3"))

    # Execute
    records, errors = roundkit.run_rounds(coord, agents, 1)

    # Assert: the coordinator did not count 3 as gone: its update is in the sum
    assert errors == {} and records[0].contributors == ["0", "1", "2", "3"] and records[0].failures == {}
    assert "3" not in coord.gone()


@pytest.mark.parametrize("setting, value, says", [("masking", False, "turns masking off"),
                                                  ("he", False, "turns homomorphic encryption off"),
                                                  ("min_silos", 2, None)])
def test_silos_refuse_an_admission_weaker_than_their_own_params(tmp_path, setting, value, says):
    # Prepare: the coordinator's params switch a protection off (or lower min_silos); the silos' keep theirs
    silo_cfg = from_dict(_params(tmp_path))
    pipeline.ensure_partitioned(silo_cfg)
    coord_cfg = silo_cfg.replace(**{f"federation.{setting}": value})
    coord = roundkit.Coordinator(coord_cfg, "weaker", n_items=len(pipeline.catalogue_ids(silo_cfg)))
    names = ("0", "1") if setting == "min_silos" else ("0", "1", "2")  # min_silos: two, below the silos' three
    agents = {s: SiloAgent(silo_cfg, s, "weaker") for s in names}
    for agent in agents.values():
        agent.validate()

    # Execute / Assert: every silo refuses by name
    admission = coord.admit(list(agents))
    assert setting == "min_silos" or getattr(admission, setting) is value
    for agent in agents.values():
        with pytest.raises(PolicyError, match=says or "fewer than this silo's federation.min_silos=3"):
            agent.await_admission()


def _unmasked_round(cfg, run_id):
    """Round 1 up to the survivors' reveals, step by step: (coordinator, agents, instructions, collected)."""
    coord, agents = roundkit.opened(cfg, run_id, SILOS)
    silos, ins, _ = roundkit.fit_all(coord, agents, 1)
    collected = coord.collect_updates(1, silos, silos)
    for agent in agents.values():
        agent.reveal(1)
    return coord, agents, ins, collected


def test_the_decryptor_opens_only_the_sum_it_rebuilt_never_a_headers_word(cfg):
    # Prepare: the coordinator publishes as "the sum of 0, 1, 2, 3" what is silo 3's update alone (finding 3)
    coord, agents, ins, collected = _unmasked_round(cfg, "header")
    lone = _update(coord.exchange, 1, "3")
    forged = dataclasses.replace(aggregate_updates(collected.updates, coord.codec, 1, cfg.crypto), chunks=lone.chunks)
    coord.exchange.post(aggregate_key(1), forged.to_bytes(), coord.identity)

    # Execute
    agents["1"].decrypt(1, ins["1"])

    # Assert: a signed verdict instead of a mean
    assert not coord.exchange.exists(mean_key(1))
    verdict = Verdict.from_json(coord.exchange.read(verdict_key(1, 0), coord.roster.get("1")))
    assert "not the sum of the named survivors' signed updates" in verdict.reason and verdict.culprits == {}


def test_an_earlier_rounds_sum_replayed_as_a_later_ones_is_not_decrypted(cfg):
    # Prepare: round 1 completes; in round 2 the coordinator re-publishes round 1's aggregate as round 2's
    coord, agents = roundkit.opened(cfg, "replay", SILOS)
    records, _ = roundkit.run_rounds(coord, agents, 1)
    old = EncryptedUpdate.from_bytes(peek_envelope(coord.exchange.get(aggregate_key(1)))[1])
    silos, ins, _ = roundkit.fit_all(coord, agents, 2)
    coord.collect_updates(2, silos, silos)
    for agent in agents.values():
        agent.reveal(2)
    coord.exchange.post(aggregate_key(2), dataclasses.replace(old, round=2).to_bytes(), coord.identity)

    # Execute
    agents["0"].decrypt(2, ins["0"])

    # Assert
    assert records[0].contributors == list(SILOS) and not coord.exchange.exists(mean_key(2))
    assert "not the sum" in Verdict.from_json(coord.exchange.read(verdict_key(2, 0), coord.roster.get("0"))).reason


class SendsGarbage(SiloAgent):
    """A misbehaving silo: signs random bytes in place of its ciphertexts (the digests match what it signs)."""

    def _post_once(self, key, body):
        if key.startswith("round-") and "/updates/" in key:
            update = EncryptedUpdate.from_bytes(body)
            body = dataclasses.replace(update, chunks=tuple(os.urandom(len(c)) for c in update.chunks)).to_bytes()
        return super()._post_once(key, body)


class ShiftsHalfAStep(SiloAgent):
    """A misbehaving silo: its encoding sits half an integer step off the grid (every sum it is in is undecodable)."""

    def setup(self):
        context = super().setup()
        honest, half = self.codec.encrypt, 2.0 ** (self.cfg.crypto.mask_bits - 1)
        self.codec.encrypt = lambda flat: honest(np.asarray(flat) + 0.5 / half)
        return context


def test_one_silos_garbage_ciphertext_is_its_own_dropout_and_the_run_goes_on(cfg):
    coord, agents = roundkit.opened(cfg, "garbage", SILOS, agent_cls={"3": SendsGarbage})
    start = flatten_state(load_global(coord.exchange, 0))

    records, errors = roundkit.run_rounds(coord, agents, 2)

    # Assert: each round: 3 refused by name before the sum (a ciphertext that does not parse), the others' mean
    # applied; no agent failed
    assert errors == {}
    for record in records:
        assert record.contributors == ["0", "1", "2"] and "does not parse" in record.failures["3"]
    assert not np.array_equal(flatten_state(load_global(coord.exchange, 2)), start)


def test_a_silo_whose_encoding_is_off_the_grid_is_named_by_the_decryptor_and_left_out(cfg):
    coord, agents = roundkit.opened(cfg, "half-step", SILOS, agent_cls={"3": ShiftsHalfAStep})
    start = load_global(coord.exchange, 0)

    records, errors = roundkit.run_rounds(coord, agents, 2)

    # Assert: round 1 skipped (global unchanged) with 3 named by the decryptor's signed verdict; round 2 without 3
    one, two = records
    assert errors == {}
    assert one.contributors == [] and "not a valid encoding" in one.failures["3"]
    assert "left out from now on" in one.failures["3"] and "round skipped" in one.failures["0"]
    assert all(np.array_equal(a, b) for a, b in zip(flatten_state(load_global(coord.exchange, 1)),
                                                      flatten_state(start)))
    assert two.contributors == ["0", "1", "2"] and "left out: round 1" in two.failures["3"]
    assert not np.array_equal(flatten_state(load_global(coord.exchange, 2)), flatten_state(start))


class DiesWhenDecrypting(SiloAgent):
    """The key holder's host is killed (kill -9) as it starts to decrypt: no left.json, its thread just ends."""

    dead: set = set()

    def decrypt(self, server_round, ins, attempt=0):
        DiesWhenDecrypting.dead.add(self.silo_id)
        raise SystemExit("killed")

    def leave(self, after_round, exc):  # a killed process writes nothing
        return None


def test_when_the_decryptor_dies_another_survivor_decrypts_and_the_run_goes_on(cfg):
    DiesWhenDecrypting.dead = set()
    coord, agents = roundkit.opened(cfg, "failover", SILOS, agent_cls={"0": DiesWhenDecrypting},
                                    gone=lambda: set(DiesWhenDecrypting.dead))

    records, errors = roundkit.run_rounds(coord, agents, 2)

    # Assert: round 1's mean came from the second decryptor asked; the dead key holder is a recorded failure
    one, two = records
    assert set(errors) == {"0"}
    assert one.attempts == 2 and one.contributors == ["0", "1", "2", "3"]
    assert "as round 1's decryptor: its agent ended" in one.failures["0"]
    assert coord.exchange.exists(mean_key(1, 1)) and not coord.exchange.exists(mean_key(1, 0))
    assert two.contributors == ["1", "2", "3"] and two.attempts == 1


def test_a_silo_reveals_once_per_round_and_never_both_secrets_of_one_silo(cfg):
    # Prepare: round 1 up to the reveals; 3 is then named dropped in a second, overwritten unmask.json (a coordinator
    # bypassing the exchange's write-once rule to show survivors another set: a "remask storm")
    coord, agents, ins, collected = _unmasked_round(cfg, "storm")
    first = Reveal.from_json(coord.exchange.read(reveal_key(1, "1"), coord.roster.get("1")))
    path = Path(cfg.federation.exchange_url) / "storm" / unmask_key(1)
    path.unlink()
    coord.exchange.post(unmask_key(1), Unmask(round=1, survivors=["0", "1", "2"], dropped=["3"]).to_json(),
                        coord.identity)

    # Execute
    again = agents["1"].reveal(1)

    # Assert: the first reveal named self-mask shares of the four survivors only; there is no second one
    assert sorted(first.self_shares) == list(SILOS) and first.key_shares == {}
    assert again is None
    assert Reveal.from_json(coord.exchange.read(reveal_key(1, "1"), coord.roster.get("1"))) == first


def test_survivors_too_few_for_a_silo_get_no_reveal(cfg):
    # Prepare: the coordinator names two survivors (each could then read the other's update from the mean)
    coord, agents = roundkit.opened(cfg, "too-few", SILOS)
    silos, ins, _ = roundkit.fit_all(coord, agents, 1)
    coord.exchange.post(unmask_key(1), Unmask(round=1, survivors=["0", "1"], dropped=["2", "3"]).to_json(),
                        coord.identity)

    # Execute / Assert: nobody reveals
    assert all(agent.reveal(1) is None for agent in agents.values())
    assert coord.exchange.keys("round-0001/reveals") == []


def test_a_silo_impersonated_mid_run_sits_out_the_round_and_nobody_is_misled(cfg):
    # Prepare: an outsider posts round-1 mask keys under silo 1's name before silo 1 does (its own key pair)
    coord, agents = roundkit.opened(cfg, "sybil", SILOS)
    mallory = Identity.generate("1")
    secrets = secagg.RoundSecrets()
    coord.exchange.post(mask_keys_key(1, "1"), MaskKeys(silo_id="1", round=1, public=secrets.public,
                                                        commitment=secrets.commitment, threshold=3,
                                                        shares={s: "00" for s in ("0", "2", "3")}).to_json(), mallory)

    # Execute
    records, errors = roundkit.run_rounds(coord, agents, 2)

    # Assert: round 1 without 1 (its keys refused by signature), nobody crashed; round 2 with everyone
    assert errors == {}
    assert records[0].contributors == ["0", "2", "3"] and "signature" in records[0].failures["1"]
    assert records[1].contributors == list(SILOS)


@pytest.mark.slow
def test_a_run_whose_decryptor_host_is_killed_finishes_with_the_other_silos(prefect_harness, tmp_path):
    # Prepare: 4 silos, one per host process; silo 0 (the key holder) dies with its host as round 2's decryption
    # starts (os._exit: no cleanup, no left.json)
    from prefect.settings import get_current_settings

    raw = _params(tmp_path, rounds=3, max_parallel_silos=4)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    env = os.environ | {"PREFECT_API_URL": get_current_settings().api.url, "FEDREC_FAULT": "silo-0-decrypt:2"}
    fedrec = str(Path(sys.executable).with_name("fedrec"))

    # Execute
    run = subprocess.run([fedrec, "run", "--json", "--params", str(params), "--run-id", "killed-decryptor"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)

    # Assert: the run finished; round 2's failure names the dead decryptor, its mean came from another silo
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.splitlines()[-1])
    history = summary["history"]
    assert [h["round"] for h in history] == [1, 2, 3]
    assert "as round 2's decryptor" in summary["failures"]["2"]["0"] and history[1]["decrypt_attempts"] == 2
    assert history[1]["contributors"] == ["0", "1", "2", "3"]
    assert "0" not in history[2]["contributors"] and len(history[2]["contributors"]) == 3
