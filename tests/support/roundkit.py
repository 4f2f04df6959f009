"""Test helpers that drive real silo agents and a real coordinator through whole rounds (no Prefect): each agent
runs its loop in a thread, as a silo host runs its silos; the coordinator runs rounds in the calling thread."""

from __future__ import annotations

import threading

from fedrec.coordinator.coordinator import Coordinator
from fedrec.coordinator.round import run_round
from fedrec.orchestration.attacks import agent_loop
from fedrec.silo import data as pipeline
from fedrec.silo.agent import SiloAgent


def opened(cfg, run_id: str, silos=("0", "1", "2"), agent_cls=None, gone=None):
    """A coordinator and one agent per silo: validated, admitted, keys made and sealed, global(0) published.
    ``agent_cls``: {silo: SiloAgent subclass} for silos that misbehave; ``gone``: the launcher's view of dead agents."""
    coord = Coordinator(cfg, run_id, n_items=len(pipeline.catalogue_ids(cfg)), gone=gone)
    agents = {s: (agent_cls or {}).get(s, SiloAgent)(cfg, s, run_id) for s in silos}
    for agent in agents.values():
        agent.validate()
    admission = coord.admit(list(silos))
    assert all(a.await_admission() == admission for a in agents.values())
    for silo in sorted(agents, key=lambda s: s != admission.key_holder):  # the key holder seals first
        agents[silo].setup()
    coord.open_context()
    coord.init_global()
    return coord, agents


def run_rounds(coord: Coordinator, agents: dict[str, SiloAgent], rounds: int, evaluate: bool = False):
    """``rounds`` rounds with every agent in its own thread; returns (records, agent errors)."""
    errors: dict[str, BaseException] = {}
    threads = [threading.Thread(target=agent_loop, args=(a, errors), daemon=True) for a in agents.values()]
    for t in threads:
        t.start()
    records = []
    try:
        for r in range(1, rounds + 1):
            _, record = run_round(coord.state, coord, r, evaluate)
            records.append(record)
    finally:
        coord.stop("finished", len(records))
        for t in threads:
            t.join(timeout=60)
    return records, errors


def fit_all(coord: Coordinator, agents: dict[str, SiloAgent], server_round: int, silos=None):
    """Step by step in one thread: instructions, every agent's mask keys, the mask set, every agent's update.
    Returns (participants, {silo: instructions}, {silo: fit report})."""
    participants = coord.start_round(server_round, evaluate=False)
    chosen = [s for s in agents if silos is None or s in silos]
    ins = {s: agents[s].next_instructions(server_round - 1) for s in chosen}
    for s in chosen:
        agents[s].announce(ins[s])
    coord.fix_mask_set(server_round, participants)
    reports = {s: agents[s].fit(ins[s]) for s in chosen}
    return participants, ins, reports
