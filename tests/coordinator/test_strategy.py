"""fedrec.coordinator.strategy: FedAvg / FedProx on decrypted mean updates."""

from __future__ import annotations

import pytest
import torch

from fedrec.coordinator.strategy import (
    AggregateResult,
    FedAvg,
    FedProx,
    FitInstructions,
    ServerState,
    build_strategy,
)
from fedrec.core.config import FederationConfig

GLOBAL = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}


def result(dw, db, contributors=("a", "b")) -> AggregateResult:
    return AggregateResult(mean_delta={"w": torch.tensor(dw), "b": torch.tensor(db)}, total_samples=10,
                           contributors=tuple(contributors))


def test_no_result_keeps_previous_model():
    state = ServerState(momentum={"w": torch.ones(2)})

    new, returned = FedAvg().aggregate_fit(1, GLOBAL, None, [("a", "crashed")], state)

    assert new is None
    assert returned is state


def test_too_few_contributors_keeps_previous_model():
    new, _ = FedAvg(min_silos=3).aggregate_fit(1, GLOBAL, result([1.0, 1.0], [1.0]), [], ServerState())

    assert new is None


def test_fedavg_adds_mean_delta():
    new, state = FedAvg().aggregate_fit(1, GLOBAL, result([0.1, -0.2], [1.0]), [], ServerState())

    assert torch.allclose(new["w"], torch.tensor([1.1, 1.8]))
    assert torch.allclose(new["b"], torch.tensor([1.5]))
    assert state.momentum == {}


def test_server_lr_scales_the_step():
    new, _ = FedAvg(server_lr=0.5).aggregate_fit(1, GLOBAL, result([0.2, -0.4], [1.0]), [], ServerState())

    assert torch.allclose(new["w"], torch.tensor([1.1, 1.8]))
    assert torch.allclose(new["b"], torch.tensor([1.0]))


def test_server_momentum_accumulates_across_rounds():
    # Prepare
    strategy = FedAvg(server_momentum=0.9, server_lr=1.0)

    # Execute: two rounds with the same mean update d = [1, 0], [0]
    g1, s1 = strategy.aggregate_fit(1, GLOBAL, result([1.0, 0.0], [0.0]), [], ServerState())
    g2, s2 = strategy.aggregate_fit(2, g1, result([1.0, 0.0], [0.0]), [], s1)

    # Assert: m1 = d, m2 = 0.9 m1 + d = 1.9 d
    assert torch.allclose(s1.momentum["w"], torch.tensor([1.0, 0.0]))
    assert torch.allclose(s2.momentum["w"], torch.tensor([1.9, 0.0]))
    assert torch.allclose(g1["w"], torch.tensor([2.0, 2.0]))
    assert torch.allclose(g2["w"], torch.tensor([3.9, 2.0]))


def test_fedavg_configure_fit():
    ins = FedAvg(local_epochs=3).configure_fit(4, ["x", "y"])

    assert ins == {"x": FitInstructions(4, 3, 0.0), "y": FitInstructions(4, 3, 0.0)}


def test_fedprox_carries_mu():
    ins = FedProx(proximal_mu=0.05, local_epochs=2).configure_fit(1, ["x"])

    assert ins == {"x": FitInstructions(round=1, local_epochs=2, proximal_mu=0.05)}


@pytest.mark.parametrize("name, cls", [("fedavg", FedAvg), ("fedprox", FedProx)])
def test_build_strategy(name, cls):
    cfg = FederationConfig(strategy=name, proximal_mu=0.2, local_epochs=2, server_lr=0.7, server_momentum=0.3,
                           min_silos=2)

    strategy = build_strategy(cfg)

    assert type(strategy) is cls
    assert (strategy.local_epochs, strategy.server_lr, strategy.server_momentum, strategy.min_silos) == (2, 0.7, 0.3, 2)
    expected_mu = 0.2 if name == "fedprox" else 0.0
    assert strategy.configure_fit(1, ["s"])["s"].proximal_mu == expected_mu
