"""The centralized baseline: every passing silo's data pooled, one run per seed, logged to MLflow."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from fedrec.core.coldstart import cold_metrics
from fedrec.core.config import Config
from fedrec.core.errors import ConfigError
from fedrec.core.objectives import objective
from fedrec.core.training import (
    EpochRecord,
    SiloData,
    evaluate_targets,
    resolve_device,
    train_centralized,
)
from fedrec.models.popularity import PopularityModel
from fedrec.orchestration.tracking import mlflow_run
from fedrec.silo import data as pipeline


def metric_keys(k: int, task: str = "ranking") -> tuple[str, ...]:
    """The reported test metrics at cut-off ``k`` (evaluation.k); task rating: RMSE and MAE."""
    return objective(task).report_keys(k)


METRIC_KEYS = metric_keys(10)  # the default cut-off


@dataclass
class SeedOutcome:
    seed: int
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    seconds_per_epoch: float
    run_id: str


@dataclass
class BaselineReport:
    model: str
    selection_metric: str
    silos: list[str]
    seeds: list[SeedOutcome] = field(default_factory=list)
    #: task rating: {global_mean: {...}, bias: {...}} on the same split (fedrec.core.objectives.rating)
    baselines: dict | None = None

    def mean(self) -> dict[str, float]:
        keys = self.seeds[0].test.keys()
        return {k: statistics.fmean(s.test[k] for s in self.seeds) for k in keys}

    def to_json(self) -> dict:
        out = {"model": self.model, "selection_metric": self.selection_metric, "silos": self.silos,
               **{k: round(v, 5) for k, v in self.mean().items()},
               "seconds_per_epoch": round(statistics.fmean(s.seconds_per_epoch for s in self.seeds), 3),
               "per_seed": [vars(s) for s in self.seeds]}
        if self.baselines is not None:  # task: rating
            out = {"task": "rating", **out, "baselines": self.baselines}
        return out


def run_popularity(cfg: Config, data: SiloData) -> SeedOutcome:
    device = resolve_device(cfg.training.device)
    model = PopularityModel(data.train_items, data.n_items).to(device)
    k = cfg.evaluation.k
    with mlflow_run(cfg, "centralized-pop", {"kind": "centralized", "model": "pop"}) as run:
        sums = evaluate_targets(model, data, k, ("val", "test"), True, device)
        val, test = sums["val"].means(k), sums["test"].means(k)
        test |= cold_metrics(model, data, k, True, device)  # cold-start items ({} when none are held out)
        run.log_metrics({f"val_{m}": v for m, v in val.items()} | {f"test_{m}": v for m, v in test.items()})
    return SeedOutcome(seed=0, best_epoch=0, val=val, test=test, seconds_per_epoch=0.0, run_id=run.run_id)


def run_baseline(
    cfg: Config,
    model: str,
    on_epoch: Callable[[int, EpochRecord], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> BaselineReport:
    """Train ``model`` (pop | gmf | neumf | hybrid) once per configured seed; test metrics of the val-selected
    epoch (and, with evaluation.cold_item_fraction > 0, cold_* metrics of the held-out cold items)."""
    silos = pipeline.ensure_data(cfg)
    pipeline.ensure_cold_split(cfg, silos)  # cold start: the configured held-out items (split again if changed)
    data = pipeline.load_union(cfg, silos)
    ev, task = cfg.evaluation, objective(cfg.task)
    report = BaselineReport(model=model, selection_metric=task.selection_label(ev.selection_metric, ev.k),
                            silos=silos)
    if task.uses_ratings:  # the held-out ratings, and the global-mean and bias (+ drift) baselines on that split
        if model == "pop":
            raise ConfigError("--model pop ranks by popularity; task: rating reports its global-mean and bias "
                              "baselines with every gmf/neumf run")
        data = ensure_ratings(cfg, silos, data)
    report.baselines = task.baselines(data)  # rating: global mean and bias; ranking: none (pop is a model)
    if report.baselines is not None:
        report.baselines["run_id"] = log_baselines(cfg, report.baselines)
    if model == "pop":
        report.seeds.append(run_popularity(cfg, data))
        return report
    cfg = cfg.replace(**{"model.name": model})
    for seed in cfg.training.seeds:
        with mlflow_run(cfg, f"centralized-{model}-seed{seed}", {"kind": "centralized", "model": model}) as run:
            run.log_config(cfg)
            run.log_params({"seed": seed, "n_users": data.n_users, "n_items": data.n_items, "n_train": data.n_train})

            def log_epoch(rec: EpochRecord, seed=seed, run=run) -> None:
                run.log_metrics({"train_loss": rec.loss, "epoch_seconds": rec.seconds}
                                | {f"val_{m}": v for m, v in rec.val.items()}, step=rec.epoch)
                if on_epoch is not None:
                    on_epoch(seed, rec)

            start = time.perf_counter()
            result = train_centralized(data, cfg, seed, on_epoch=log_epoch, on_batch=on_batch)
            run.log_metrics({"best_epoch": result.best_epoch, "wall_seconds": time.perf_counter() - start}
                            | {f"test_{m}": v for m, v in result.test.items()})
            run.log_torch_model(result.model, "model")
        report.seeds.append(SeedOutcome(seed, result.best_epoch, result.val, result.test,
                                        result.seconds_per_epoch, run.run_id))
    return report


def log_baselines(cfg: Config, baselines: dict[str, dict]) -> str:
    """One MLflow run (``centralized-rating-baselines``) with the baselines' validation and test RMSE/MAE."""
    with mlflow_run(cfg, "centralized-rating-baselines", {"kind": "centralized", "model": "baselines",
                                                          "task": "rating"}) as run:
        run.log_params({"bias_reg_user": baselines["bias"]["reg_user"], "bias_reg_item": baselines["bias"]["reg_item"],
                        **{f"bias_drift_{k}": baselines["bias_drift"][k] for k in ("weight", "decay", "length")}})
        metrics = {}
        for name, values in baselines.items():
            for key, value in values.items():
                if key.endswith(("rmse", "mae")):
                    metrics[f"{name}_{key if key.startswith('val_') else 'test_' + key}"] = value
        run.log_metrics(metrics)
    return run.run_id


def ensure_ratings(cfg: Config, silos: list[str], data: SiloData) -> SiloData:
    """A split made before the held-out ratings were kept is made again (same items: the split is deterministic)."""
    if data.val_ratings is not None and data.train_ratings is not None:
        return data
    for silo in silos:
        pipeline.split_silo(cfg, silo)
    return pipeline.load_union(cfg, silos)


class UsersOf:
    """A pooled model seen from one silo: the silo's user index ``i`` is the pooled model's user ``index[i]``, so
    the silo's own :class:`SiloData` (its held-out items and candidates) scores the pooled model on its users."""

    def __init__(self, model, index: np.ndarray):
        self.model, self.task = model, getattr(model, "task", "ranking")
        self.index = torch.as_tensor(np.asarray(index, dtype=np.int64))

    def eval(self) -> "UsersOf":
        if hasattr(self.model, "eval"):
            self.model.eval()
        return self

    def _users(self, users: torch.Tensor) -> torch.Tensor:
        return self.index.to(users.device)[users]

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model.predict(self._users(users), items)

    def full_sort_predict(self, users: torch.Tensor) -> torch.Tensor:
        return self.model.full_sort_predict(self._users(users))

    def predict_rating(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model.predict_rating(self._users(users), items)


def per_silo_sums(model, union: SiloData, silos: dict[str, SiloData], k: int, full: bool = True,
                  device: torch.device | None = None) -> dict[str, dict]:
    """The pooled ``model``'s test metric sums on each silo's users, each scored with that silo's own held-out
    items and candidates (they add up to the pooled evaluation: every user is in exactly one silo)."""
    out = {}
    for silo, data in silos.items():
        index = np.searchsorted(union.user_ids, data.user_ids)
        if not np.array_equal(union.user_ids[np.minimum(index, len(union.user_ids) - 1)], data.user_ids):
            raise ValueError(f"silo {silo}'s users are not all in the pooled data")
        out[silo] = evaluate_targets(UsersOf(model, index), data, k, ("test",), full, device)["test"]
    return out
