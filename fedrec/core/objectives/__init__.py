"""Learning tasks as objects (``task`` in params.yaml): what a model trains on, how a silo scores it, how the
federation adds the silos' scores up, which validation score selects an epoch or a round, and what reports show.

    from fedrec.core.objectives import objective
    obj = objective(cfg.task)          # Ranking() | Rating()
    obj.evaluate(model, data, k)       # {"val": sums, "test": sums}: only sums leave a silo
    obj.headline(k), obj.report_keys(k), obj.selection(cfg.evaluation.selection_metric)

A new task is one new module here with an :class:`~fedrec.core.objectives.base.Objective` subclass, listed in
:data:`OBJECTIVES` (and in the config's ``task`` choices).
"""

from __future__ import annotations

from fedrec.core.objectives.base import Objective
from fedrec.core.objectives.ranking import Ranking
from fedrec.core.objectives.rating import Rating

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (Ranking(), Rating())}


def objective(task: str) -> Objective:
    """The objective of ``task`` (``ranking`` | ``rating``)."""
    try:
        return OBJECTIVES[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(OBJECTIVES)}") from None


def objective_of(model) -> Objective:
    """The objective a model was built for (its ``task``; models without one rank, e.g. popularity)."""
    return objective(getattr(model, "task", "ranking"))


__all__ = ["OBJECTIVES", "Objective", "Ranking", "Rating", "objective", "objective_of"]
