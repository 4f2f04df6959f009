"""Tasks that run at a silo: local training, the encrypt filter, local evaluation."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import IO_RETRIES

from fedrec.federation import rounds
from fedrec.federation.silo import EvalOutcome
from fedrec.federation.strategy import FitInstructions


@task(name="train_local", task_run_name="train-silo-{silo_id}-round-{server_round}", cache_policy=NO_CACHE)
def train_local(fed: rounds.Federation, silo_id: str, server_round: int,
                instructions: FitInstructions) -> rounds.TrainSummary:
    """E local epochs from the global item tower; the plaintext update stays in the silo's store."""
    return rounds.train_local(fed, silo_id, instructions)


@task(name="encrypt", task_run_name="encrypt-silo-{silo_id}-round-{server_round}",
      **IO_RETRIES, cache_policy=NO_CACHE)
def encrypt_update(fed: rounds.Federation, silo_id: str, server_round: int) -> rounds.EncryptSummary:
    """Weight, encrypt (CKKS) and publish the silo's update to the exchange."""
    return rounds.encrypt_and_publish(fed, silo_id, server_round)


@task(name="evaluate_local", task_run_name="evaluate-silo-{silo_id}-round-{server_round}", cache_policy=NO_CACHE)
def evaluate_local(fed: rounds.Federation, silo_id: str, server_round: int) -> EvalOutcome:
    """HR/NDCG sums over the silo's own users (only sums leave the silo)."""
    return rounds.evaluate_local(fed, silo_id, server_round)
