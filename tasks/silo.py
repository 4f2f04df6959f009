"""Tasks a silo runs (thin wrappers over :class:`fedrec.silo.agent.SiloAgent`); their results are small
reports, never tensors, ciphertexts or keys."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from fedrec.silo.agent import SiloAgent
from fedrec.wire.messages import (
    Admission,
    FitInstructions,
    FitReport,
    Hello,
    MetricReport,
)


@task(name="validate", task_run_name="validate-silo-{agent.silo_id}", cache_policy=NO_CACHE)
def validate_data(agent: SiloAgent) -> Hello:
    """Great Expectations on the silo's own interactions; publishes the verdict (no example rows)."""
    return agent.validate()


@task(name="join", task_run_name="join-silo-{agent.silo_id}", cache_policy=NO_CACHE)
def join_federation(agent: SiloAgent) -> Admission | None:
    return agent.await_admission()


@task(name="setup", task_run_name="keys-and-model-silo-{agent.silo_id}", cache_policy=NO_CACHE)
def setup_silo(agent: SiloAgent) -> str:
    """The key holder makes the run's CKKS keys; every silo builds its model. Returns the context id."""
    return agent.setup()


@task(name="fit", task_run_name="fit-silo-{agent.silo_id}-round-{ins.round}", cache_policy=NO_CACHE)
def fit_round(agent: SiloAgent, ins: FitInstructions) -> FitReport | None:
    """Publish the round's mask keys and sealed shares, train E local epochs, mask and encrypt the weighted update
    in memory, publish it (None: the silo refused the round's participant or mask set)."""
    return agent.fit(ins)


@task(name="settle", task_run_name="settle-silo-{agent.silo_id}-round-{ins.round}", cache_policy=NO_CACHE)
def settle_round(agent: SiloAgent, ins: FitInstructions) -> dict:
    """Until the round's global model: reveal shares for the survivors' unmasking (once); decrypt when asked."""
    return agent.settle(ins)


@task(name="evaluate", task_run_name="evaluate-silo-{agent.silo_id}-round-{server_round}", cache_policy=NO_CACHE)
def evaluate_round(agent: SiloAgent, server_round: int) -> MetricReport:
    """HR/NDCG sums over the silo's own users (only sums leave the silo)."""
    return agent.evaluate(server_round)
