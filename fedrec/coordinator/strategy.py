"""Federated strategies in the Flower style: configure a round, aggregate its results given failures.

FedAvg: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data". FedProx: Li et al. 2020, "Federated Optimization in Heterogeneous
Networks". Server learning rate / momentum: Hsu et al. 2019 (FedAvgM), Reddi et al. 2021.

Strategies never see individual updates: only the *mean* update, decrypted from the
encrypted sum by a key holder. Server-side state (momentum) is passed in and returned,
never stashed on the strategy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from fedrec.core.config import FederationConfig
from fedrec.crypto.updates import AggregateResult
from fedrec.wire.messages import FitInstructions


@dataclass
class ServerState:
    momentum: dict[str, torch.Tensor] = field(default_factory=dict)


class Strategy(ABC):
    @abstractmethod
    def configure_fit(self, server_round: int, silos: list[str]) -> dict[str, FitInstructions]:
        """Instructions for each participating silo in ``server_round``.

        Parameters
        ----------
        server_round : int
            1-based round number.
        silos : list of str
            Silos taking part (those that passed validation).
        """

    @abstractmethod
    def aggregate_fit(
        self,
        server_round: int,
        global_state: dict[str, torch.Tensor],
        result: AggregateResult | None,
        failures: list[tuple[str, str]],
        server_state: ServerState,
    ) -> tuple[dict[str, torch.Tensor] | None, ServerState]:
        """New global parameters from the round's aggregate.

        Parameters
        ----------
        server_round : int
            1-based round number.
        global_state : dict
            Item-tower parameters the round started from.
        result : AggregateResult or None
            Decrypted mean update; None when no silo delivered.
        failures : list of (silo_id, reason)
            Silos that dropped out of this round.
        server_state : ServerState
            Optimizer state carried between rounds.

        Returns
        -------
        (new_global or None, server_state)
            None keeps the previous global model.
        """


class FedAvg(Strategy):
    """Sample-weighted averaging of updates with an optional server learning rate and momentum."""

    def __init__(self, *, local_epochs: int = 1, server_lr: float = 1.0, server_momentum: float = 0.0,
                 min_silos: int = 1):
        self.local_epochs = local_epochs
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.min_silos = min_silos

    def configure_fit(self, server_round: int, silos: list[str]) -> dict[str, FitInstructions]:
        """Same instructions for every silo."""
        return {s: FitInstructions(server_round, self.local_epochs) for s in silos}

    def aggregate_fit(self, server_round, global_state, result, failures, server_state):
        """global + server_lr * (mean update, with heavy-ball momentum when configured)."""
        if result is None or len(result.contributors) < self.min_silos:
            return None, server_state
        momentum = {}
        new_state = {}
        for name, value in global_state.items():
            step = result.mean_delta[name]
            if self.server_momentum > 0:
                step = self.server_momentum * server_state.momentum.get(name, torch.zeros_like(step)) + step
                momentum[name] = step
            new_state[name] = value + self.server_lr * step
        return new_state, ServerState(momentum=momentum)


class FedProx(FedAvg):
    """FedAvg whose silos add (mu/2)||w - w_global||^2 to their local loss."""

    def __init__(self, *, proximal_mu: float, **kwargs):
        super().__init__(**kwargs)
        self.proximal_mu = proximal_mu

    def configure_fit(self, server_round: int, silos: list[str]) -> dict[str, FitInstructions]:
        """FedAvg's instructions plus the proximal coefficient."""
        return {s: FitInstructions(server_round, self.local_epochs, self.proximal_mu) for s in silos}


def build_strategy(cfg: FederationConfig) -> Strategy:
    common = dict(local_epochs=cfg.local_epochs, server_lr=cfg.server_lr,
                  server_momentum=cfg.server_momentum, min_silos=cfg.min_silos)
    if cfg.strategy == "fedprox":
        return FedProx(proximal_mu=cfg.proximal_mu, **common)
    return FedAvg(**common)
