"""The interface every learning task implements (see :mod:`fedrec.core.objectives`)."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch

from fedrec.core.errors import PayloadError
from fedrec.core.metrics import EVAL_CHUNK_USERS

if TYPE_CHECKING:
    from fedrec.core.training import SiloData


class Objective(ABC):
    """A learning task. Metric sums (``Sums``) are what a silo sends: they add up over silos (``+``) and turn into
    the metrics with ``.means(k)``; the federation's metrics are then exactly those of the pooled users."""

    #: the ``task`` value of params.yaml
    name: str
    #: the validation metrics a run may select on (evaluation.selection_metric); the first is the default
    selectable: tuple[str, ...]

    @abstractmethod
    def training_rows(self, data: "SiloData", n_negatives: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One epoch's (users, items, targets) rows, in training order."""

    @abstractmethod
    def evaluate(self, model, data: "SiloData", k: int, targets: tuple[str, ...] = ("val", "test"),
                 full: bool = True, device: torch.device | None = None, chunk_users: int = EVAL_CHUNK_USERS) -> dict[str, Any]:
        """The metric sums of ``model`` on each target's held-out item (``val``, ``test``)."""

    @abstractmethod
    def empty_sums(self) -> Any:
        """Sums over nobody (adding a silo's sums to them gives that silo's)."""

    #: the class of this task's metric sums (a dataclass of numbers that adds up with ``+``)
    sums_type: type

    def sums(self, sent: Mapping[str, float]) -> Any:
        """A silo's sums as it sent them (a mapping of numbers) back into their class; other keys than the
        class's are refused (:class:`~fedrec.core.errors.PayloadError`), e.g. a ranking silo in a rating run."""
        wanted = {f.name for f in dataclasses.fields(self.sums_type)}
        if set(sent) != wanted:
            raise PayloadError(f"metric sums of the {self.name} task have the keys {sorted(wanted)}, "
                               f"not {sorted(map(str, sent))[:8]}")
        return self.sums_type(**sent)

    @abstractmethod
    def report_keys(self, k: int) -> tuple[str, ...]:
        """The test metrics a run reports (summary, tables, closing lines), headline first."""

    def headline(self, k: int) -> str:
        """The one metric progress lines show."""
        return self.report_keys(k)[0]

    def curve_keys(self, k: int) -> tuple[str, str]:
        """The two metrics the per-round figures plot."""
        keys = self.report_keys(k)
        return keys[0], keys[1]

    #: what the held-out item is scored against, as plot titles say it
    scored_against: str
    #: trains on the observed ratings' values (a split made before they were kept must be made again)
    uses_ratings: bool = False

    def rows_per_interaction(self, n_negatives: int) -> int:
        """Training rows an epoch makes per training interaction."""
        return 1

    def curve_label(self, metric: str) -> str:
        """A per-round figure's axis label for ``metric``."""
        return metric

    def selection(self, configured: str) -> str:
        """The validation metric that picks the epoch or round: ``configured`` when this task has it, else the
        task's default."""
        return configured if configured in self.selectable else self.selectable[0]

    @abstractmethod
    def metric_name(self, metric: str, k: int) -> str:
        """A metric's key in a metrics dict: ``hr`` -> ``hr@10``; ``rmse`` -> ``rmse``."""

    @abstractmethod
    def score(self, metrics: Mapping[str, float], metric: str, k: int) -> float:
        """``metric`` as a higher-is-better number (error metrics negated)."""

    def selection_label(self, configured: str, k: int) -> str:
        """How reports name the selection metric: ``val_hr@10``, ``val_rmse``."""
        return f"val_{self.metric_name(self.selection(configured), k)}"

    def table_columns(self, k: int) -> tuple[tuple[str, str, str], ...]:
        """A round table's metric columns: (column, target, metric key)."""
        keys = self.report_keys(k)
        return (tuple((f"val_{m}", "val", m) for m in keys[:2]) + tuple((f"test_{m}", "test", m) for m in keys[:2]))

    def baselines(self, data: "SiloData") -> dict[str, dict] | None:
        """Reference scores a model of this task must beat, on the same split (None: the popularity model is the
        baseline, trained like any model)."""
        return None
