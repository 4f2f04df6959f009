"""The attack suite's malicious silos (fedrec.orchestration.attacks) against the real protocol (CKKS, SecAgg masks,
signed payloads): each attack reaches the decrypted global model exactly as intended, while every check on the way
accepts it. These are the attacks issue #20's defences are measured against (bench/attacks.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.core.config import from_dict
from fedrec.core.state import flatten_state
from fedrec.orchestration.attacks import Attack, item_rows, run_in_process
from fedrec.protocol.reads import load_global
from fedrec.silo import data as pipeline
from fedrec.wire.exchange import run_exchange

from conftest import make_tiny_params

pytestmark = pytest.mark.slow  # whole (tiny) federations in one process


@pytest.fixture()
def cfg(tmp_path):
    raw = make_tiny_params(tmp_path)
    raw["partition"]["n_silos"] = 4
    raw["federation"] |= {"min_silos": 3, "round_timeout_s": 30, "join_timeout_s": 60}
    return from_dict(raw)


def _global(cfg, run_id: str, r: int) -> np.ndarray:
    return flatten_state(load_global(run_exchange(cfg, run_id), r)).astype(np.float64)


def test_a_sign_flipping_silo_moves_the_mean_by_exactly_twice_its_weighted_update(cfg):
    clean = run_in_process(cfg, rounds=1)
    agents: dict = {}
    flipped = run_in_process(cfg, {"0": Attack("signflip")}, rounds=1, agents_out=agents)

    assert not clean["errors"] and not flipped["errors"]  # every check accepted the poisoned update
    assert np.array_equal(_global(cfg, clean["run_id"], 0), _global(cfg, flipped["run_id"], 0))
    n = {s: a.data.n_train for s, a in agents.items()}
    honest = flatten_state(agents["0"].honest_delta).astype(np.float64)
    moved = _global(cfg, flipped["run_id"], 1) - _global(cfg, clean["run_id"], 1)
    expected = -2 * honest * n["0"] / sum(n.values())
    assert np.abs(honest).max() > 1e-3
    assert np.allclose(moved, expected, atol=4 * 2.0 ** -cfg.crypto.quantization_bits)


def test_item_promotion_pushes_a_cold_item_into_the_honest_users_top_k(cfg):
    data = pipeline.load_union(cfg, pipeline.ensure_data(cfg))
    target = int(np.argsort(np.bincount(data.train_items, minlength=data.n_items), kind="stable")[0])

    clean = run_in_process(cfg, rounds=2, target=target)
    promoted = run_in_process(cfg, {"0": Attack("promote", factor=30.0, target=target)}, rounds=2, target=target)

    assert not promoted["errors"]
    assert promoted["exposure"] > clean["exposure"] + 0.3, (clean["exposure"], promoted["exposure"])


def test_a_sneaking_silo_sends_target_rows_as_long_as_it_chose_and_no_longer(cfg):
    data = pipeline.load_union(cfg, pipeline.ensure_data(cfg))
    target = int(np.argsort(np.bincount(data.train_items, minlength=data.n_items), kind="stable")[0])
    agents: dict = {}
    result = run_in_process(cfg, {"0": Attack("sneak", factor=1.8, target=target)}, rounds=1, agents_out=agents)

    assert not result["errors"]
    honest, sent = agents["0"].honest_delta, agents["0"].sent_delta
    tables = item_rows(sent, data.n_items)
    assert tables
    for name in tables:
        typical = float(honest[name].norm(dim=1).median())
        assert typical > 0
        assert float(sent[name][target].norm()) == pytest.approx(1.8 * typical, rel=1e-4)
        assert not np.allclose(sent[name][target].numpy(), honest[name][target].numpy())


def test_an_absent_silo_never_joins_and_the_others_federate(cfg):
    agents: dict = {}
    result = run_in_process(cfg, {"0": Attack("absent")}, rounds=1, agents_out=agents)

    assert not result["errors"] and sorted(agents) == ["1", "2", "3"]
    assert sorted(result["per_silo_selected"]) == ["1", "2", "3"]  # the others' users, evaluated as always


def test_attacks_are_checked():
    with pytest.raises(ValueError, match="attack must be one of"):
        Attack("krum-breaker")
    with pytest.raises(ValueError, match="needs a target item"):
        Attack("promote")
