"""Hyper-parameter search for the centralized models, chosen on the validation item only.

Optuna's TPE sampler proposes a configuration, :func:`fedrec.core.training.train_centralized` trains it with early
stopping on the validation item, and the trial's value is the validation metric of its selected epoch
(evaluation.selection_metric). A median pruner stops a trial whose validation curve trails the others' by epoch.
Every trial gets :meth:`SiloData.without_test` (the test items are None) and ``evaluate_test=False``: nothing the
search runs can read a test item. The classical baseline (implicit's ALS) is searched the same way.

The best configuration is what bench/quality.py writes into params.yaml (``--apply``): the defaults ``make run``
then gets.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from fedrec.core.config import Config
from fedrec.core.objectives import objective
from fedrec.core.training import SiloData, evaluate_targets, train_centralized
from fedrec.models.als import ALSModel

log = logging.getLogger(__name__)

#: the MLP tower for each embedding size a trial may pick (NeuMF: the first layer reads [p_u^M ; q_i^M])
MLP_FOR_DIM = {16: [32, 16, 8], 32: [64, 32, 16], 64: [128, 64, 32], 128: [256, 128, 64]}


def neural_space(trial) -> dict[str, Any]:
    """The centralized models' search space: model, embedding size (and its MLP), negatives per positive, learning
    rate, per-batch embedding L2, weight decay, batch size."""
    dim = trial.suggest_categorical("model.embedding_dim", [16, 32, 64, 128])
    return {
        "model.name": trial.suggest_categorical("model.name", ["gmf", "neumf"]),
        "model.embedding_dim": dim,
        "model.mlp_layers": MLP_FOR_DIM[dim],
        "training.n_negatives": trial.suggest_int("training.n_negatives", 2, 10),
        "training.lr": trial.suggest_float("training.lr", 3e-4, 1e-2, log=True),
        "training.embedding_l2": trial.suggest_float("training.embedding_l2", 1e-5, 3e-2, log=True),
        "training.weight_decay": trial.suggest_categorical("training.weight_decay", [0.0, 1e-6, 1e-5]),
        "training.batch_size": trial.suggest_categorical("training.batch_size", [256, 512, 1024]),
    }


def als_space(trial) -> dict[str, Any]:
    return {"factors": trial.suggest_categorical("factors", [16, 32, 64, 128]),
            "regularization": trial.suggest_float("regularization", 1e-3, 10.0, log=True),
            "alpha": trial.suggest_float("alpha", 0.5, 50.0, log=True),
            "iterations": trial.suggest_int("iterations", 5, 30)}


@dataclass
class SearchResult:
    """The best trial (its parameters, validation value, selected epoch) and every trial's record."""

    best_params: dict[str, Any]
    best_value: float
    best_epoch: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _study(seed: int, pruner=None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                               pruner=pruner or optuna.pruners.NopPruner())


def _records(study) -> list[dict[str, Any]]:
    return [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "best_epoch": t.user_attrs.get("best_epoch"), "seconds": t.user_attrs.get("seconds")}
            for t in study.trials]


def tune_neural(cfg: Config, data: SiloData, n_trials: int, seed: int = 0, timeout_s: float | None = None,
                max_epochs: int = 30, on_trial: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """TPE over :func:`neural_space`; each trial trains with training seed ``seed`` for at most ``max_epochs``
    epochs (early stopping on validation). Never reads the test items."""
    import optuna

    task = objective(cfg.task)
    if task.uses_ratings:
        raise ValueError("tune_neural searches the ranking models (task: ranking)")
    ev = cfg.evaluation
    metric = task.selection(ev.selection_metric)
    blind = data.without_test()
    study = _study(seed, optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3))

    def run(trial) -> float:
        overrides = neural_space(trial) | {"training.epochs": max_epochs}
        trial_cfg = cfg.replace(**overrides)

        def report(rec) -> None:
            trial.report(task.score(rec.val, metric, ev.k), rec.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        start = time.perf_counter()
        result = train_centralized(blind, trial_cfg, seed, on_epoch=report, evaluate_test=False)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        return task.score(result.val, metric, ev.k)

    started = time.perf_counter()
    study.optimize(run, n_trials=n_trials, timeout=timeout_s,
                   callbacks=[lambda s, t: on_trial and on_trial(_records(s)[-1])])
    best = study.best_trial
    params = dict(best.params) | {"model.mlp_layers": MLP_FOR_DIM[best.params["model.embedding_dim"]]}
    return SearchResult(params, float(best.value), int(best.user_attrs["best_epoch"]), _records(study),
                        time.perf_counter() - started)


def als_val(data: SiloData, k: int, metric: str, seed: int, **params) -> tuple[float, ALSModel]:
    """ALS with ``params`` on ``data``'s training rows: its validation ``metric`` at ``k`` and the model."""
    model = ALSModel.fit(data.train_users, data.train_items, data.n_users, data.n_items, seed=seed, **params)
    val = evaluate_targets(model, data, k, ("val",), metric.startswith("full"))["val"].means(k)
    return float(val[f"{metric}@{k}"]), model


def tune_als(cfg: Config, data: SiloData, n_trials: int, seed: int = 0,
             on_trial: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """TPE over :func:`als_space` on the validation item; never reads the test items."""
    ev = cfg.evaluation
    blind = data.without_test()
    study = _study(seed)

    def run(trial) -> float:
        start = time.perf_counter()
        value, _ = als_val(blind, ev.k, ev.selection_metric, seed, **als_space(trial))
        trial.set_user_attr("seconds", time.perf_counter() - start)
        return value

    started = time.perf_counter()
    study.optimize(run, n_trials=n_trials, callbacks=[lambda s, t: on_trial and on_trial(_records(s)[-1])])
    return SearchResult(dict(study.best_trial.params), float(study.best_value), 0, _records(study),
                        time.perf_counter() - started)


def als_test(data: SiloData, k: int, full: bool, seed: int, **params) -> dict[str, float]:
    """The chosen ALS, fitted once per seed, on the test item (after the search)."""
    model = ALSModel.fit(data.train_users, data.train_items, data.n_users, data.n_items, seed=seed, **params)
    return evaluate_targets(model, data, k, ("test",), full)["test"].means(k)


def seeds_stats(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def apply_to_params(text: str, overrides: dict[str, Any]) -> str:
    """params.yaml ``text`` with each ``section.key`` of ``overrides`` set in place: its comment and every other
    line kept (a YAML round trip would drop the comments that document each key). KeyError: a key not in the file."""
    import re

    import yaml

    lines = text.splitlines(keepends=True)
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        start = next((i for i, line in enumerate(lines) if re.match(rf"^{re.escape(section)}:", line)), None)
        if start is None:
            raise KeyError(f"params has no section {section!r}")
        for i in range(start + 1, len(lines)):
            if re.match(r"^\S", lines[i]):
                raise KeyError(f"params has no key {dotted!r}")
            m = re.match(rf"^(\s+{re.escape(key)}:\s*)([^#\n]*?)(\s*#.*)?(\n?)$", lines[i])
            if m:
                rendered = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
                comment = m.group(3) or ""
                pad = max(1, len(m.group(1)) + len(m.group(2)) + len(comment) - len(comment.lstrip())
                          - len(m.group(1)) - len(rendered)) if comment else 0
                lines[i] = f"{m.group(1)}{rendered}{' ' * pad if comment else ''}{comment.lstrip()}{m.group(4)}"
                break
        else:
            raise KeyError(f"params has no key {dotted!r}")
    return "".join(lines)
