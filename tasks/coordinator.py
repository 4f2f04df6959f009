"""Tasks of the coordinator (public context only) and of the key holder."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import IO_RETRIES

from fedrec.federation import rounds
from fedrec.federation.strategy import Strategy


@task(name="setup_keys", **IO_RETRIES, cache_policy=NO_CACHE)
def setup_keys(fed: rounds.Federation, silos: list[str]) -> str:
    """CKKS context: secret to the silos' key stores, public to the exchange. Returns the context id."""
    return rounds.setup_keys(fed, silos)


@task(name="init_global", **IO_RETRIES, cache_policy=NO_CACHE)
def init_global(fed: rounds.Federation) -> int:
    return rounds.initialize_global(fed)


@task(name="aggregate", task_run_name="aggregate-round-{server_round}",
      **IO_RETRIES, cache_policy=NO_CACHE)
def aggregate(fed: rounds.Federation, server_round: int, silos: list[str]) -> rounds.AggregateSummary:
    """Sum the round's ciphertexts without decrypting anything."""
    return rounds.aggregate_round(fed, server_round, silos)


@task(name="decrypt", task_run_name="decrypt-round-{server_round}-at-{key_holder}",
      **IO_RETRIES, cache_policy=NO_CACHE)
def decrypt_and_step(fed: rounds.Federation, key_holder: str, server_round: int, strategy: Strategy,
                     failures: list[tuple[str, str]]) -> rounds.DecryptSummary:
    """At a key holder: decrypt the aggregate, apply the strategy, publish the new global model."""
    return rounds.decrypt_and_step(fed, key_holder, server_round, strategy, failures)
