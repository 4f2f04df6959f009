"""Tasks a silo runs: thin wrappers over the steps of :class:`fedrec.silo.agent.SiloAgent` (validate ─► join ─►
setup ─► per round: fit ─► settle ─► [evaluate]).

They take ids and small messages (the run and silo ids, the round's instructions) and return small reports, never
tensors, ciphertexts or keys. The agent, which holds the silo's data, user tower, optimizer and keys in memory for
the whole run, stays in the silo's own process, found by its ids (:func:`open_agent`)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from fedrec.core import env
from fedrec.core.errors import FederationError
from fedrec.silo.agent import SiloAgent
from fedrec.wire.messages import (
    Admission,
    FitInstructions,
    Hello,
)

_OPEN: dict[tuple[str, str], SiloAgent] = {}  # this process's agents, by (run id, silo id)


def open_agent(agent: SiloAgent) -> tuple[str, str]:
    """Make ``agent`` the one the tasks of its silo and run use; returns the ids they take."""
    _OPEN[(agent.run_id, agent.silo_id)] = agent
    return agent.run_id, agent.silo_id


def close_agent(run_id: str, silo_id: str) -> None:
    _OPEN.pop((run_id, silo_id), None)


def _agent(run_id: str, silo_id: str) -> SiloAgent:
    try:
        return _OPEN[(run_id, silo_id)]
    except KeyError:
        raise FederationError(f"silo {silo_id!r} has no agent open for run {run_id!r} in this process") from None


@task(name="validate", task_run_name="validate-silo-{silo_id}", cache_policy=NO_CACHE)
def validate_data(run_id: str, silo_id: str) -> Hello:
    """Great Expectations on the silo's own interactions; publishes the verdict (no example rows)."""
    return _agent(run_id, silo_id).validate()


@task(name="join", task_run_name="join-silo-{silo_id}", cache_policy=NO_CACHE)
def join_federation(run_id: str, silo_id: str) -> Admission | None:
    return _agent(run_id, silo_id).await_admission()


@task(name="setup", task_run_name="keys-and-model-silo-{silo_id}", cache_policy=NO_CACHE)
def setup_silo(run_id: str, silo_id: str) -> str:
    """The key holder makes the run's CKKS keys; every silo builds its model. Returns the context id."""
    return _agent(run_id, silo_id).setup()


def play_round(agent: SiloAgent, ins: FitInstructions) -> dict | None:
    """This silo's round: fit (publish the round's mask keys and sealed shares, train E local epochs, mask and
    encrypt the weighted update in memory, publish it), settle (until the round's global model, reveal shares for
    the survivors' unmasking, once, and decrypt when asked), evaluate when the instructions ask (HR/NDCG sums over
    the silo's own users: only sums leave the silo). Then the round's transient buffers go back to the system (a
    silo host serves many rounds). Returns what it did (counts and its own figures); None: the silo refused the
    round's participant or mask set (it still evaluates when asked)."""
    try:
        fitted = agent.fit(ins)
        settled = agent.settle(ins) if fitted is not None else None
        if ins.evaluate:
            env.trim_heap()
            agent.evaluate(ins.round)
        if settled is None:
            return None
        return settled | {"loss": fitted.loss, "seconds_train": fitted.seconds_train,
                          "seconds_encrypt": fitted.seconds_encrypt, "bytes_sent": fitted.bytes_sent}
    finally:
        env.trim_heap()


@task(name="round", task_run_name="silo-{silo_id}-round-{ins.round}", cache_policy=NO_CACHE)
def take_part(run_id: str, silo_id: str, ins: FitInstructions) -> dict | None:
    """:func:`play_round` as one task run per silo per round (operations.silo_round_tasks): three events the Prefect
    server records, one task run per round rather than one per step."""
    return play_round(_agent(run_id, silo_id), ins)
