"""fedrec.coordinator + fedrec.wire.messages: admission, deadlines and bad updates as data, on a real exchange
directory with real payloads (plaintext codec; the CKKS path is covered end to end in test_federated_flow)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fedrec.config import from_dict
from fedrec.coordinator.coordinator import Coordinator
from fedrec.coordinator.launch import balanced_groups
from fedrec.crypto import PlainCodec
from fedrec.errors import ConfigError, FederationError, PayloadError
from fedrec.federation.filters import LocalUpdate, encrypt_update, load_global
from fedrec.wire.exchange import (ADMISSION_KEY, STOP_KEY, check_silo_id, fit_report_key, hello_key, instruction_key,
                                  left_key, run_exchange, update_key)
from fedrec.wire.messages import Admission, FitInstructions, FitReport, Hello, Left, Stop


@pytest.fixture()
def cfg(tmp_path):
    return from_dict({"federation": {"he": False, "join_timeout_s": 0.3, "round_timeout_s": 0.3,
                                     "exchange_url": str(tmp_path / "exchange"), "state_dir": str(tmp_path / "state")},
                      "model": {"name": "gmf", "embedding_dim": 4}})


def _hello(silo: str, valid: bool = True) -> bytes:
    return Hello(silo_id=silo, valid=valid, n_rows=10, n_users=2, n_train=8,
                 failures=[] if valid else ["expect_column_values_to_be_between(rating): 1 unexpected value(s)"]).to_json()


def _opened(coord: Coordinator, silos: str) -> Coordinator:
    """Every silo in ``silos`` said a valid hello; admitted, plaintext context open, global(0) published."""
    for silo in silos:
        coord.exchange.put(hello_key(silo), _hello(silo))
    coord.admit(list(silos))
    coord.open_context()
    coord.init_global()
    return coord


def _publish_update(coord: Coordinator, silo: str, server_round: int, *, claimed_round: int | None = None,
                    n_samples: int = 8) -> np.ndarray:
    delta = {k: torch.full_like(v, 0.5) for k, v in coord.global_state.items()}
    update = LocalUpdate(silo, claimed_round or server_round, n_samples, delta)
    coord.exchange.put(update_key(server_round, silo), encrypt_update(update, PlainCodec(), 20).to_bytes())
    coord.exchange.put(fit_report_key(server_round, silo), FitReport(
        silo_id=silo, round=server_round, n_samples=n_samples, loss=0.5, seconds_train=0.1, seconds_encrypt=0.0,
        bytes_sent=1, plaintext_bytes=1).to_json())
    return delta


def test_admission_keeps_valid_silos_and_says_why_the_others_are_out(cfg):
    # Prepare: a valid, an invalid and a silent silo
    coord = Coordinator(cfg, "run-a", n_items=6)
    coord.exchange.put(hello_key("a"), _hello("a"))
    coord.exchange.put(hello_key("b"), _hello("b", valid=False))

    # Execute
    admission = coord.admit(["a", "b", "c"])

    # Assert
    assert admission.silos == ["a"] and admission.key_holder == "a"
    assert admission.excluded["b"].startswith("data validation failed: expect_column_values_to_be_between(rating)")
    assert admission.excluded["c"] == "did not join within 0s"
    assert Admission.from_json(coord.exchange.get(ADMISSION_KEY)) == admission


def test_too_few_silos_stops_the_run_with_a_named_error(cfg):
    coord = Coordinator(cfg.replace(**{"federation.min_silos": 2}), "run-b", n_items=6)
    coord.exchange.put(hello_key("a"), _hello("a"))

    with pytest.raises(FederationError, match="federation.min_silos=2"):
        coord.admit(["a", "b"])
    assert Stop.from_json(coord.exchange.get(STOP_KEY)).last_round == 0  # the agents are told to leave


def test_a_stale_update_and_a_missing_one_are_failures_of_the_round_not_of_the_run(cfg):
    # Prepare: three admitted silos; a sends a good update, b one that claims round 7, c nothing
    coord = _opened(Coordinator(cfg, "run-c", n_items=6), "abc")
    before = {k: v.clone() for k, v in coord.global_state.items()}
    silos = coord.start_round(1, evaluate=False)
    delta = _publish_update(coord, "a", 1)
    _publish_update(coord, "b", 1, claimed_round=7)

    # Execute
    collected = coord.collect_updates(1, silos)
    aggregate = coord.aggregate(1, collected.updates)
    moved = coord.step(1, coord.mean(1, aggregate), collected.failures)

    # Assert: a's update is the round's mean; b and c are recorded with their reasons
    assert FitInstructions.from_json(coord.exchange.get(instruction_key(1, "c"))).silos == ["a", "b", "c"]
    assert [u.silo_id for u in collected.updates] == ["a"] and set(collected.reports) == {"a"}
    assert "round 7 (expected 1)" in collected.failures["b"]
    assert collected.failures["c"] == "no update within 0s"
    assert moved
    after = load_global(coord.exchange, 1)
    for name in before:
        assert torch.allclose(after[name], before[name] + delta[name])


def test_a_round_without_updates_keeps_the_global_model(cfg):
    coord = _opened(Coordinator(cfg, "run-d", n_items=6), "a")

    collected = coord.collect_updates(1, coord.start_round(1, evaluate=False))
    moved = coord.step(1, coord.mean(1, coord.aggregate(1, collected.updates)), collected.failures)

    assert not moved and collected.failures == {"a": "no update within 0s"}
    assert coord.exchange.exists("round-0001/no-aggregate.json")  # the key holder stops waiting
    assert all(torch.equal(load_global(coord.exchange, 1)[k], load_global(coord.exchange, 0)[k])
               for k in coord.global_state)


def test_an_update_published_under_another_silos_name_is_refused(cfg):
    coord = _opened(Coordinator(cfg, "run-e", n_items=6), "ab")
    silos = coord.start_round(1, evaluate=False)
    _publish_update(coord, "a", 1)
    coord.exchange.put(update_key(1, "b"), coord.exchange.get(update_key(1, "a")))  # a's payload copied to b

    collected = coord.collect_updates(1, silos)

    assert "claims to be from silo 'a'" in collected.failures["b"]
    assert [u.silo_id for u in collected.updates] == ["a"]


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


def test_a_silo_that_left_is_not_waited_for(cfg):
    # Prepare: a long deadline; b's agent failed and said so
    coord = _opened(Coordinator(cfg.replace(**{"federation.round_timeout_s": 60.0}), "run-f", n_items=6), "ab")
    silos = coord.start_round(1, evaluate=False)
    _publish_update(coord, "a", 1)
    coord.exchange.put(left_key("b"), Left(silo_id="b", after_round=0, reason="PayloadError: NaN in update").to_json())

    # Execute
    start = time.monotonic()
    collected = coord.collect_updates(1, silos)

    # Assert: b is a failure with its reason, found long before the 60 s deadline
    assert time.monotonic() - start < 30
    assert collected.failures == {"b": "its agent left the run (PayloadError: NaN in update)"}
    assert coord.start_round(2, evaluate=False) == ["a"]  # and it gets no more instructions


def test_a_silo_gone_before_the_round_is_recorded_as_its_failure(cfg):
    from fedrec.coordinator.report import round_record

    coord = _opened(Coordinator(cfg, "run-g", n_items=6, gone=lambda: {"b"}), "ab")
    _publish_update(coord, "a", 1)

    record = round_record(coord, 1, evaluate=False)

    assert FitInstructions.from_json(coord.exchange.get(instruction_key(1, "a"))).silos == ["a"]
    assert not coord.exchange.exists(instruction_key(1, "b"))
    assert record.contributors == ["a"] and record.failures == {"b": "its agent ended"}


def test_the_coordinator_refuses_a_published_context_that_can_decrypt(cfg):
    # Prepare: a (careless or malicious) key holder publishes its secret context as the public one
    from fedrec.crypto import create_keys
    from fedrec.wire.exchange import PUBLIC_CONTEXT_KEY

    he = cfg.replace(**{"federation.he": True})
    coord = Coordinator(he, "run-h", n_items=6)
    coord.exchange.put(hello_key("a"), _hello("a"))
    coord.admit(["a"])
    coord.exchange.put(PUBLIC_CONTEXT_KEY, create_keys(he.crypto).secret_context)

    # Execute / Assert
    with pytest.raises(PayloadError, match="contains a secret key"):
        coord.open_context()


def test_a_mean_that_is_not_of_the_rounds_aggregate_is_refused(cfg):
    # Prepare: an HE run whose key holder answers with a mean over other contributors than the aggregate's
    from fedrec.crypto import create_keys
    from fedrec.federation.filters import AggregateResult, encode_mean
    from fedrec.wire.exchange import PUBLIC_CONTEXT_KEY, mean_key
    from fedrec.wire.payload import EncryptedUpdate

    he = cfg.replace(**{"federation.he": True})
    coord = Coordinator(he, "run-i", n_items=6)
    coord.exchange.put(PUBLIC_CONTEXT_KEY, create_keys(he.crypto).public_context)
    _opened(coord, "ab")
    aggregate = EncryptedUpdate(kind="aggregate", round=1, silo_id="aggregate", n_samples=16, scheme="ckks",
                                context_id=coord.codec.context_id, layout=(), chunks=(), contributors=("a", "b"))
    forged = AggregateResult({k: torch.zeros_like(v) for k, v in coord.global_state.items()}, 8, ("a",))
    coord.exchange.put(mean_key(1), encode_mean(forged, 1).to_bytes())

    # Execute / Assert
    with pytest.raises(PayloadError, match="not of this round's aggregate"):
        coord.mean(1, aggregate)


def test_a_hello_under_another_silos_name_is_not_admitted(cfg):
    coord = Coordinator(cfg, "run-j", n_items=6)
    coord.exchange.put(hello_key("a"), _hello("a"))
    coord.exchange.put(hello_key("b"), _hello("a"))  # b's slot holds a's hello

    admission = coord.admit(["a", "b"])

    assert admission.silos == ["a"] and admission.excluded["b"] == "hello claims to be silo 'a'"


def test_a_global_model_of_another_round_is_refused(cfg):
    from fedrec.federation.filters import encode_global
    from fedrec.wire.exchange import global_key

    coord = _opened(Coordinator(cfg, "run-k", n_items=6), "a")
    coord.exchange.put(global_key(3), encode_global(coord.global_state, 2).to_bytes())  # round 2's model at 3

    with pytest.raises(PayloadError, match="holds the model of round 2"):
        load_global(coord.exchange, 3)


def test_a_mean_holding_nan_is_refused():
    from fedrec.federation.filters import AggregateResult, decode_mean, encode_mean

    poisoned = AggregateResult({"w": torch.tensor([1.0, float("nan")])}, 4, ("a", "b"))

    with pytest.raises(PayloadError, match="NaN or Inf"):
        decode_mean(encode_mean(poisoned, 1), 1)
