"""Tasks the coordinator runs: thin wrappers over :mod:`fedrec.coordinator.round` and the
:class:`~fedrec.coordinator.coordinator.Coordinator`.

They take ids and small values (the run id, a round number) and return small records; the run's coordinator (its
exchange, identity and public HE context: no secret key) stays in this process, found by its run id
(:func:`open_run`), and its state after each round is the run's checkpoint."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from fedrec.coordinator.coordinator import Coordinator
from fedrec.coordinator.report import RoundRecord
from fedrec.coordinator.round import evaluate_round, fit_round
from fedrec.core.errors import FederationError
from fedrec.wire.messages import Admission

_OPEN: dict[str, Coordinator] = {}  # this process's coordinators, by run id


def open_run(coord: Coordinator) -> str:
    """Make ``coord`` the one the tasks of its run use; returns the run id they take."""
    _OPEN[coord.run_id] = coord
    return coord.run_id


def close_run(run_id: str) -> None:
    _OPEN.pop(run_id, None)


def _coordinator(run_id: str) -> Coordinator:
    try:
        return _OPEN[run_id]
    except KeyError:
        raise FederationError(f"run {run_id!r} has no coordinator open in this process") from None


@task(name="admit", cache_policy=NO_CACHE)
def admit(run_id: str, roster: list[str]) -> Admission:
    """Wait for the silos' hellos; admit those whose data passed validation."""
    return _coordinator(run_id).admit(roster)


@task(name="open-federation", cache_policy=NO_CACHE)
def open_federation(run_id: str) -> tuple[str, int]:
    """The key holder's public context, and the round-0 global model. Returns (context id, parameters)."""
    coord = _coordinator(run_id)
    return coord.open_context(), coord.init_global()


@task(name="round", task_run_name="round-{server_round}", cache_policy=NO_CACHE)
def federated_round(run_id: str, server_round: int, evaluate: bool) -> RoundRecord:
    """Instructions ─► mask set ─► updates (deadline) ─► unmask ─► ciphertext sum ─► decryptor's mean ─► strategy
    ─► global(r)."""
    coord = _coordinator(run_id)
    _, record = fit_round(coord.state, coord, server_round, evaluate)
    return record


@task(name="evaluate", task_run_name="evaluate-round-{server_round}", cache_policy=NO_CACHE)
def collect_evaluation(run_id: str, server_round: int) -> RoundRecord:
    """The silos' metric sums for the round's global model (its wait counts towards the round's time)."""
    coord = _coordinator(run_id)
    _, record = evaluate_round(coord.state, coord, coord.state.history[-1])
    if record.round != server_round:
        raise FederationError(f"evaluated round {record.round}, asked for round {server_round}")
    return record
