"""federation.robust_rule vetted: which candidate models a round offers, as the coordinator makes them and as a silo
counts them to bound how many it scores (:mod:`fedrec.coordinator.robust`, :meth:`fedrec.silo.agent.SiloAgent.vote`)."""

from __future__ import annotations

import itertools


def candidates(n_groups: int, drop: int = 1) -> list[list[int]]:
    """The groups in each candidate model: 0 = every group, then every choice of up to ``drop`` groups left out
    (one group at least kept), fewest left out first: with ``drop`` 1, candidate g + 1 = every group but g."""
    every = list(range(n_groups))
    return [list(kept) for size in range(n_groups, max(1, n_groups - drop) - 1, -1)
            for kept in itertools.combinations(every, size)]
