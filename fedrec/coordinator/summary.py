"""The coordinator's run bookkeeping: evaluation schedule, best-round selection, the run summary, the model
registration. Plain Python over :class:`~fedrec.coordinator.report.RoundRecord`s."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from fedrec.coordinator.report import RoundRecord
from fedrec.core.config import Config
from fedrec.core.item_text import model_features  # hybrid: the tower scores with the public item text
from fedrec.core.objectives import objective
from fedrec.core.training import model_config
from fedrec.models import build_model

PHASES = ("train", "train_cpu", "encrypt", "wait_updates", "aggregate", "decrypt", "evaluate")


def evaluation_due(cfg: Config, server_round: int, last_round: int, refit: bool = False) -> bool:
    """Every ``eval_every`` rounds and after the last one (a refit phase only evaluates its last round)."""
    return server_round == last_round or (not refit and server_round % cfg.federation.eval_every == 0)


def better(cfg: Config, record: RoundRecord, best: RoundRecord | None) -> bool:
    """Is ``record`` better than ``best`` on the validation item (never the test item)?"""
    ev = cfg.evaluation
    task = objective(cfg.task)
    metric = task.selection(ev.selection_metric)  # task: rating -> rmse, lower is better
    return bool(record.val) and (best is None or task.score(record.val, metric, ev.k)
                                 > task.score(best.val, metric, ev.k))


def summarize(cfg: Config, run_id: str, admission, history: list[RoundRecord], best: RoundRecord) -> dict[str, Any]:
    k = cfg.evaluation.k
    silos = admission.silos
    bytes_mean = {s: statistics.fmean(h.bytes_per_silo.get(s, 0) for h in history) for s in silos}
    round_seconds = [h.seconds["round"] for h in history]
    return {
        "run_id": run_id, "model": cfg.model.name, "he": cfg.federation.he,
        "strategy": cfg.federation.strategy, "rounds": cfg.federation.rounds,
        "local_epochs": cfg.federation.local_epochs, "silos": silos, "excluded": admission.excluded,
        "key_holder": admission.key_holder,
        "selection_metric": objective(cfg.task).selection_label(cfg.evaluation.selection_metric, k),
        "selected_round": best.round,
        **({"task": cfg.task} if cfg.task != "ranking" else {}),  # (summaries of ranking runs never said it)
        **best.test, "val": best.val, "per_silo_test": best.per_silo_test,
        **{f"cold_{m}": v for m, v in best.cold.items()},  # cold-start items, at the round selected on warm val
        "seconds_per_round": statistics.fmean(round_seconds),
        "seconds_per_round_median": statistics.median(round_seconds),
        "seconds_per_phase": {p: statistics.fmean(h.seconds.get(p, 0.0) for h in history) for p in PHASES},
        "seconds_per_phase_median": {p: statistics.median(h.seconds.get(p, 0.0) for h in history) for p in PHASES},
        "bytes_per_round": bytes_mean,
        "bytes_per_round_mean": statistics.fmean(bytes_mean.values()),
        "plaintext_fp32_bytes": history[-1].plaintext_bytes,
        "failures": {h.round: h.failures for h in history if h.failures},
        "history": [{"round": h.round, "loss": h.loss, "contributors": h.contributors, "decrypt_attempts": h.attempts,
                     **{f"val_{m}": v for m, v in h.val.items()},
                     **{f"test_{m}": v for m, v in h.test.items()},
                     **{f"cold_{m}": v for m, v in h.cold.items()}} for h in history],
    }


def register_model(cfg: Config, n_items: int, state: dict[str, torch.Tensor], run) -> str:
    """Log and register a global item tower (no user embeddings: those stay in the silos)."""
    model = build_model(model_config(cfg.model, 1, n_items, task=cfg.task, item_features=model_features(cfg)))
    model.load_shared_state(state)
    return run.log_torch_model(model.items, "global_item_tower", registered_model_name=cfg.tracking.registered_model)


def closing_lines(summary: dict[str, Any], k: int, *, prefect_port: int, mlflow_port: int) -> list[str]:
    """What `fedrec run` / `fedrec coordinate` print at the end, as plain lines of at most 80 columns: the selected
    round's test metrics one per line, the cost, then where to look next (the reports folder, the MLflow run, the
    Prefect run) with links that work once `fedrec ui` serves them (the run's own server has stopped by then)."""
    aggregation = "CKKS" if summary["he"] else "plaintext"
    lines = [f"federated {summary['model']} ({aggregation} aggregation): round {summary['selected_round']} of "
             f"{summary['rounds']}, selected on {summary['selection_metric']}"]
    keys = objective(summary.get("task", "ranking")).report_keys(k)
    lines += [f"  test {key:<16} {summary[key]:.4f}" for key in keys]
    lines += [f"  {'seconds per round':<21} {summary['seconds_per_round_median']:,.2f} (median)",
              f"  {'bytes per silo/round':<21} {summary['bytes_per_round_mean']:,.0f} (mean)"]
    if summary.get("excluded"):
        lines.append(f"  silos left out: {', '.join(summary['excluded'])}")
    federation = summary.get("federation", summary["run_id"])
    lines += ["next:",
              f"  plots     {summary['reports']}/",
              f"  MLflow    run {summary['mlflow_run_id']}",
              f"  Prefect   flow run {federation}",
              "  `fedrec ui` serves both (this run's Prefect server has stopped); then open:",
              f"http://127.0.0.1:{mlflow_port}/#/experiments/{summary.get('mlflow_experiment_id', '0')}/runs/"
              f"{summary['mlflow_run_id']}",
              f"http://127.0.0.1:{prefect_port}/runs/flow-run/{summary.get('prefect_flow_run_id', summary['run_id'])}"]
    return lines  # links are never cut (a cut link is a dead one); the rest stays within 80 columns
