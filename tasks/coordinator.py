"""Tasks the coordinator runs (thin wrappers over :class:`fedrec.coordinator.coordinator.Coordinator`).

It holds the public HE context only; results are summaries (counts, seconds, bytes), never keys."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from fedrec.coordinator.coordinator import Coordinator
from fedrec.coordinator.report import RoundRecord, round_record
from fedrec.wire.messages import Admission


@task(name="admit", cache_policy=NO_CACHE)
def admit(coord: Coordinator, roster: list[str]) -> Admission:
    """Wait for the silos' hellos; admit those whose data passed validation."""
    return coord.admit(roster)


@task(name="open-federation", cache_policy=NO_CACHE)
def open_federation(coord: Coordinator) -> tuple[str, int]:
    """The key holder's public context, and the round-0 global model. Returns (context id, parameters)."""
    return coord.open_context(), coord.init_global()


@task(name="round", task_run_name="round-{server_round}", cache_policy=NO_CACHE)
def federated_round(coord: Coordinator, server_round: int, evaluate: bool) -> RoundRecord:
    """Instructions ─► mask set ─► updates (deadline) ─► unmask ─► ciphertext sum ─► decryptor's mean ─► strategy
    ─► global(r)."""
    return round_record(coord, server_round, evaluate)


@task(name="evaluate", task_run_name="evaluate-round-{server_round}", cache_policy=NO_CACHE)
def collect_evaluation(coord: Coordinator, record: RoundRecord, server_round: int) -> RoundRecord:
    """The silos' metric sums for the round's global model (its wait counts towards the round's time)."""
    start = time.perf_counter()
    reports, _ = coord.collect_metrics(server_round, record.contributors)
    record.add_evaluation(reports, coord.cfg.evaluation.k)
    record.seconds["evaluate"] = time.perf_counter() - start
    record.seconds["round"] += record.seconds["evaluate"]
    return record
