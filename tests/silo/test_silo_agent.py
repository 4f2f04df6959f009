"""fedrec.silo.agent with fedrec.coordinator, as plain Python (no Prefect): one encrypted round between two silo
agents and a coordinator, driven step by step over a real exchange directory with real CKKS ciphertexts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from fedrec.coordinator.coordinator import Coordinator
from fedrec.core.errors import PayloadError
from fedrec.core.metrics import MetricSums
from fedrec.core.state import flatten_state, layout_size
from fedrec.crypto import masking
from fedrec.protocol.reads import load_global
from fedrec.silo import data as pipeline
from fedrec.silo.agent import SiloAgent
from fedrec.wire.exchange import hello_key, mean_key, reveal_key, update_key, verdict_key
from fedrec.wire.messages import Hello
from fedrec.wire.payload import EncryptedUpdate
from fedrec.wire.trust import peek_envelope

from support import roundkit


@pytest.fixture()
def cfg(tiny_cfg):
    pipeline.ensure_partitioned(tiny_cfg)
    return tiny_cfg


def _opened(cfg, run_id: str, silos=("0", "1", "2")):
    return roundkit.opened(cfg, run_id, silos)


def test_one_encrypted_masked_round_between_three_agents_and_a_coordinator(cfg):
    # Prepare: three silos validate and join; the key holder makes the keys and seals the secret to the others
    coord, agents = _opened(cfg, "run-1")
    start = load_global(coord.exchange, 0)

    # Execute: one round, every agent in its own thread; then each evaluates global(1)
    records, errors = roundkit.run_rounds(coord, agents, 1)
    trained = {s: flatten_state(a.model.shared_state()) for s, a in agents.items()}
    reports = {s: a.data.n_train for s, a in agents.items()}
    metrics = {s: a.evaluate(1) for s, a in agents.items()}
    received, missing = coord.collect_metrics(1, records[0].contributors)

    # Assert: the new global model is start + the sample-weighted mean of the silos' deltas (masks cancelled)
    assert coord.admission.key_holder == "0" and agents["0"].is_key_holder and not agents["1"].is_key_holder
    assert errors == {} and records[0].failures == {} and records[0].contributors == ["0", "1", "2"]
    assert records[0].attempts == 1 and coord.decryptors[1] == "0"
    n = reports
    expected = flatten_state(start) + sum(n[s] * (trained[s] - flatten_state(start)) for s in agents) / sum(n.values())
    np.testing.assert_allclose(flatten_state(load_global(coord.exchange, 1)), expected,
                               atol=3 * 2.0 ** -cfg.crypto.quantization_bits)  # three shares rounded to the grid
    # Assert: the coordinator cannot decrypt; every silo got the run's secret, sealed to it
    assert not coord.codec.can_decrypt and all(a.codec.can_decrypt for a in agents.values())
    assert {a.codec.context_id for a in agents.values()} == {coord.codec.context_id}
    # Assert: metric sums reach the coordinator as they were computed
    assert missing == {} and {m.silo_id: m.val for m in received} == {s: m.val for s, m in metrics.items()}
    assert all(MetricSums(**m.test).n == agents[s].data.n_users for s, m in metrics.items())


def test_a_failing_silo_publishes_its_verdict_without_the_offending_values(cfg):
    # Prepare: silo 2 ships a rating of 9
    bad = pipeline.Paths.of(cfg).silos / "2" / "interactions.parquet"
    frame = pd.read_parquet(bad)
    frame.loc[3, "rating"] = 9
    frame.to_parquet(bad, index=False)
    agent = SiloAgent(cfg, "2", "run-2")

    # Execute
    hello = agent.validate()

    # Assert: the coordinator learns which expectation failed and how often, not the value
    published = Hello.from_json(agent.exchange.read(hello_key("2"), agent.identity.public))
    assert published == hello and not hello.valid and agent.data is None
    assert any("expect_column_values_to_be_between(rating)" in f for f in hello.failures)
    assert not any("e.g." in f or "[9]" in f for f in hello.failures)


def test_the_agent_keeps_its_model_in_memory_between_rounds(cfg):
    coord, agents = _opened(cfg, "run-3")
    agent = agents["1"]
    users_before = agent.model.users.tables["gmf"].weight.detach().clone()

    roundkit.fit_all(coord, agents, 1)

    assert not torch.equal(agent.model.users.tables["gmf"].weight, users_before)  # trained in place
    assert not agent.store.model_path.exists()  # nothing written until the run ends
    agent.save()
    assert agent.store.model_path.exists()
    # its users' embeddings and optimizer state are private to the silo's account
    assert agent.store.model_path.stat().st_mode & 0o777 == 0o600
    assert agent.store.root.stat().st_mode & 0o777 == 0o700 and agent.store.silo_dir.stat().st_mode & 0o777 == 0o700
    assert agent.store.coordinator_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("damage", ["truncated", "empty file"])
def test_unreadable_data_is_a_failed_verdict_and_the_silo_is_left_out(cfg, damage):
    # Prepare: silo 2's Parquet file is truncated, or empty (0 bytes)
    path = pipeline.Paths.of(cfg).silos / "2" / "interactions.parquet"
    path.write_bytes(path.read_bytes()[:100] if damage == "truncated" else b"")
    size = path.stat().st_size
    agents = {s: SiloAgent(cfg, s, "run-4") for s in ("0", "1", "2")}
    coord = Coordinator(cfg.replace(**{"federation.min_silos": 2}), "run-4", n_items=len(pipeline.catalogue_ids(cfg)))

    # Execute
    hellos = {s: a.validate() for s, a in agents.items()}
    admission = coord.admit(["0", "1", "2"])

    # Assert: a verdict, not a crash; the other silo goes on
    assert hellos["1"].valid and not hellos["2"].valid
    assert hellos["2"].failures[0].startswith("data could not be read (")
    assert admission.silos == ["0", "1"]
    assert admission.excluded["2"].startswith("data validation failed: data could not be read")
    assert path.stat().st_size == size  # nothing of the silo's data was touched


def test_a_silo_never_sends_an_update_holding_nan(cfg):
    # Prepare: the silo's own user embeddings went NaN (e.g. a diverged local step)
    from fedrec.wire.exchange import update_key

    coord, agents = _opened(cfg, "run-5")
    agent = agents["0"]
    coord.start_round(1, evaluate=False)
    with torch.no_grad():
        for table in agent.model.users.tables.values():
            table.weight.fill_(float("nan"))

    # Execute / Assert: refused at the silo, before encryption; nothing reaches the exchange
    with pytest.raises(PayloadError, match="NaN/Inf"):
        agent.fit(agent.next_instructions(0))
    assert not agent.exchange.exists(update_key(1, "0"))


def test_a_silo_holding_the_secret_key_cannot_read_another_silos_update(cfg):
    # Prepare: one round; silo 1 holds the run's secret (sealed to it) and the coordinator hands it silo 2's
    # ciphertext from the exchange
    coord, agents = _opened(cfg, "run-6")
    start = flatten_state(load_global(coord.exchange, 0))
    roundkit.run_rounds(coord, agents, 1)
    stolen = EncryptedUpdate.from_bytes(peek_envelope(coord.exchange.get(update_key(1, "2")))[1])
    two = agents["2"]
    truth = masking.pack_lanes(masking.quantize_share(flatten_state(two.model.shared_state()) - start,
                                                      two.data.n_train, stolen.total_samples,
                                                      cfg.crypto.quantization_bits), cfg.crypto.pack, cfg.crypto.lane_bits)

    # Execute: decrypt and decode it as a sum of one
    curious = agents["1"].codec
    seen = masking.decode_sum(curious.decrypt(list(stolen.chunks), masking.n_slots(layout_size(stolen.layout),
                                                                                    cfg.crypto.pack)), 1,
                              cfg.crypto.mask_bits)

    # Assert: what it sees is uncorrelated with silo 2's update (it carries 2's self-mask and its pair masks with
    # 0 and 1)
    assert len(truth) > 500 and np.any(truth != 0)
    assert abs(np.corrcoef(seen, truth)[0, 1]) < 0.2
    assert not np.array_equal(seen, truth)


def test_the_decryptor_refuses_to_decrypt_a_sum_of_too_few_silos(cfg):
    # Prepare: a curious coordinator passes one silo's update off as the round's sum
    from fedrec.crypto.updates import aggregate_updates
    from fedrec.wire.exchange import aggregate_key

    coord, agents = _opened(cfg, "run-7")
    silos, ins, _ = roundkit.fit_all(coord, agents, 1)
    single = EncryptedUpdate.from_bytes(peek_envelope(coord.exchange.get(update_key(1, "2")))[1])
    coord.exchange.post(aggregate_key(1), aggregate_updates([single], coord.codec, 1, cfg.crypto).to_bytes(),
                        coord.identity)

    # Execute / Assert
    with pytest.raises(PayloadError, match="refusing to decrypt a sum of \\['2'\\]"):
        agents["0"].decrypt(1, ins["0"])


def test_the_decryptor_refuses_a_sum_holding_a_silo_that_was_not_a_participant(cfg):
    from fedrec.crypto.updates import aggregate_updates
    from fedrec.wire.exchange import aggregate_key

    coord, agents = _opened(cfg, "run-7b")
    silos, ins, _ = roundkit.fit_all(coord, agents, 1)
    updates = [EncryptedUpdate.from_bytes(peek_envelope(coord.exchange.get(update_key(1, s)))[1]) for s in silos]
    coord.exchange.post(aggregate_key(1), aggregate_updates(updates, coord.codec, 1, cfg.crypto).to_bytes(),
                        coord.identity)

    # Execute / Assert: the decryptor was told the round had 0 and 1 only; a sum that also holds 2 is refused
    with pytest.raises(PayloadError, match="refusing to decrypt a sum of \\['0', '1', '2'\\] \\(participants"):
        agents["0"].decrypt(1, dataclasses.replace(ins["0"], silos=["0", "1"]))


def test_a_silo_sits_out_a_round_whose_participant_set_is_too_small(cfg):
    # Prepare: a coordinator that names only two participants (each would learn the other's update)
    from fedrec.wire.messages import FitInstructions

    coord, agents = _opened(cfg, "run-8")
    ins = FitInstructions(round=1, local_epochs=1, silos=["0", "1"], decryptor="0")

    # Execute
    report = agents["1"].fit(ins)

    # Assert: nothing sent
    assert report is None and not agents["1"].exchange.exists(update_key(1, "1"))


def test_a_silo_that_missed_a_round_rejoins_from_the_current_global_model(cfg):
    # Prepare: no masks (the survivors need no reveals), two contributors suffice; silo 2 is too slow for round 1
    plain = cfg.replace(**{"federation.masking": False, "federation.he": False, "federation.round_timeout_s": 0.5,
                           "federation.min_silos": 2})
    coord, agents = _opened(plain, "run-9")
    silos, _, _ = roundkit.fit_all(coord, agents, 1, silos=("0", "1"))
    collected = coord.collect_updates(1, silos)
    coord.step(1, coord.open_sum(1, coord.aggregate(1, collected.updates), collected.updates).result,
               collected.failures)

    # Execute: round 2; silo 3 takes part again
    silos_2, ins2, reports2 = roundkit.fit_all(coord, agents, 2)
    ins, report = ins2["2"], reports2["2"]
    collected_2 = coord.collect_updates(2, silos_2)

    # Assert: round 1 went on without it (a recorded failure); in round 2 it trained from global(1), not global(0)
    assert collected.failures == {"2": "no update within 0s"} and coord.exchange.exists("global/round-0001.bin")
    assert "2" in silos_2 and ins.round == 2 and report is not None
    assert agents["2"]._global[0] == 1
    assert collected_2.failures == {} and [u.silo_id for u in collected_2.updates] == ["0", "1", "2"]


def test_a_silo_refuses_an_admission_that_swaps_keys_and_a_stop_not_signed_by_the_coordinator(cfg, tmp_path):
    # Prepare: a coordinator that substitutes silo 1's keys in the roster it hands out (to read its masks), and
    # silo 0 whose operator pinned the real roster
    import json

    from fedrec.wire.exchange import ADMISSION_KEY, COORDINATOR_KEY, STOP_KEY
    from fedrec.wire.messages import Admission, Stop
    from fedrec.wire.trust import (
        COORDINATOR,
        Identity,
        Roster,
        RosterError,
        SignatureError,
    )

    coord = Coordinator(cfg, "run-10", n_items=len(pipeline.catalogue_ids(cfg)))
    agents = {s: SiloAgent(cfg, s, "run-10") for s in ("0", "1", "2")}
    pinned = Roster({COORDINATOR: coord.identity.public, **{s: a.identity.public for s, a in agents.items()}})
    (tmp_path / "roster.json").write_bytes(pinned.to_json())
    agents["0"] = SiloAgent(cfg.replace(**{"federation.roster": str(tmp_path / "roster.json")}), "0", "run-10")
    for agent in agents.values():
        agent.validate()
    roster = {n: p.to_dict() for n, p in pinned.parties.items()} | {"1": Identity.generate("1").public.to_dict()}
    coord.exchange.post(COORDINATOR_KEY, json.dumps(coord.identity.public.to_dict()).encode(), coord.identity)
    coord.exchange.post(ADMISSION_KEY, Admission(silos=["0", "1", "2"], excluded={}, key_holder="0", he=True,
                                                 roster=roster).to_json(), coord.identity)

    # Execute / Assert: silo 1 sees its own keys replaced; silo 0 sees a peer's keys differ from its pinned roster
    with pytest.raises(RosterError, match="lists other keys for this silo"):
        agents["1"].await_admission()
    with pytest.raises(RosterError, match="silo 1's keys differ from the pinned roster's"):
        agents["0"].await_admission()
    # Assert: silo 2 (no pin) is admitted, but a stop.json written by a silo does not end its run
    assert agents["2"].await_admission() is not None
    coord.exchange.post(STOP_KEY, Stop(reason="forged", last_round=0).to_json(), agents["1"].identity)
    with pytest.raises(SignatureError, match="expected 'coordinator'"):
        agents["2"].next_instructions(0)


def test_a_decryptor_asked_before_it_saw_the_survivors_named_reveals_its_own_shares_first(cfg):
    # Prepare: one masked round up to the coordinator's sum; the decryptor (silo 0) takes the decrypt request before
    # it has looked at unmask.json (both appear between two of its polls); the other survivors reveal
    cfg = cfg.replace(**{"federation.round_timeout_s": 5.0})
    coord, agents = _opened(cfg, "run-decrypt-first")
    participants, ins, _ = roundkit.fit_all(coord, agents, 1)
    collected = coord.collect_updates(1, coord.fix_mask_set(1, participants), participants)
    coord.aggregate(1, collected.updates)
    for s in ("1", "2"):
        agents[s].reveal(1)

    # Act
    agents["0"].decrypt(1, ins["0"])

    # Assert: its own shares are among the reveals (3 of 3 are needed), so the sum opens: a mean, no verdict
    assert coord.exchange.exists(reveal_key(1, "0"))
    assert coord.exchange.exists(mean_key(1, 0)) and not coord.exchange.exists(verdict_key(1, 0))


@pytest.mark.slow
def test_a_host_validates_its_silos_in_a_child_first_and_their_agents_take_those_verdicts(cfg, params_file):
    """fedrec.cli.silo_host reads and validates its silos before it loads torch and Prefect (peak RSS): each agent
    takes its silo's verdict once; a silo whose data could not be read is left to its agent."""
    from fedrec.silo.prevalidation import prevalidate, take_prevalidated

    # Prepare: silo 2 ships a rating of 9; silo 9 does not exist
    bad = pipeline.Paths.of(cfg).silos / "2" / "interactions.parquet"
    frame = pd.read_parquet(bad)
    frame.loc[3, "rating"] = 9
    frame.to_parquet(bad, index=False)

    # Execute: the host's step, then silo 0's file breaks before its agent validates
    done = prevalidate(str(params_file), None, ["0", "2", "9"])
    (pipeline.Paths.of(cfg).silos / "0" / "interactions.parquet").write_bytes(b"not parquet")
    hellos = {s: SiloAgent(cfg, s, "run-pre").validate() for s in ("0", "2")}

    # Assert: the agents used the verdicts made before (silo 0's from its data as it was then), once each
    assert done == ["0", "2"]
    assert hellos["0"].valid and hellos["0"].n_train > 0
    assert not hellos["2"].valid and any("expect_column_values_to_be_between(rating)" in f
                                         for f in hellos["2"].failures)
    assert take_prevalidated("0") is None and take_prevalidated("2") is None
    assert not SiloAgent(cfg, "0", "run-pre-2").validate().valid  # no verdict left: reads the broken file itself


@pytest.mark.slow
def test_a_host_whose_silos_passed_on_the_same_data_starts_no_validation_child(cfg, params_file, monkeypatch):
    """Unchanged data that passed takes its saved verdict: no Great Expectations (its child and 5 s of imports)
    at a host's start, but a silo whose data changed, or failed before, goes through the suite again."""
    from fedrec.silo import prevalidation
    from fedrec.silo.prevalidation import prevalidate, take_prevalidated

    # Prepare: silo 2 fails (a rating of 9); every silo validated once
    bad = pipeline.Paths.of(cfg).silos / "2" / "interactions.parquet"
    frame = pd.read_parquet(bad)
    frame.loc[3, "rating"] = 9
    frame.to_parquet(bad, index=False)
    assert prevalidate(str(params_file), None, ["0", "1", "2"]) == ["0", "1", "2"]
    for silo in ("0", "1", "2"):
        take_prevalidated(silo)
    sent: list[list[str]] = []
    real_run = prevalidation.GE_CHILD.run
    monkeypatch.setattr(prevalidation.GE_CHILD, "run",
                        lambda fn, params, overrides, frames: sent.append(sorted(frames)) or real_run(
                            fn, params, overrides, frames))

    # Execute: the same data again; then silo 1 gets one more (valid) interaction
    again = prevalidate(str(params_file), None, ["0", "1", "2"])
    verdicts = {s: take_prevalidated(s)[1] for s in again}
    one = pipeline.Paths.of(cfg).silos / "1" / "interactions.parquet"
    rows = pd.read_parquet(one)
    rows = pd.concat([rows, rows.iloc[[0]].assign(timestamp=rows["timestamp"].max() + 1)], ignore_index=True)
    rows.to_parquet(one, index=False)
    changed = prevalidate(str(params_file), None, ["0", "1"])

    # Assert: only the failing silo went to the child the second time; only the changed one the third
    assert again == ["0", "1", "2"] and sent == [["2"], ["1"]] and changed == ["0", "1"]
    assert verdicts["0"].success and verdicts["1"].success and not verdicts["2"].success
    assert take_prevalidated("1")[1].n_rows == len(rows)
