"""fedrec.orchestration.centralized: the pooled baseline, tracked in a real MLflow sqlite store."""

from __future__ import annotations

import json

import mlflow
import pytest

from fedrec.orchestration.centralized import METRIC_KEYS, run_baseline
from fedrec.orchestration.tracking import tracking_uri
from fedrec.silo import data as pipeline


@pytest.mark.slow
def test_gmf_baseline_logs_epochs_and_test_metrics(tiny_cfg):
    # Prepare
    epochs_seen: list[tuple[int, int]] = []

    # Execute
    report = run_baseline(tiny_cfg, "gmf", on_epoch=lambda seed, rec: epochs_seen.append((seed, rec.epoch)))

    # Assert: the report
    assert report.model == "gmf"
    assert report.silos == ["0", "1", "2"]
    assert len(report.seeds) == 1  # training.seeds == [0]
    outcome = report.seeds[0]
    assert epochs_seen == [(0, 1), (0, 2)]
    payload = json.loads(json.dumps(report.to_json()))
    for key in METRIC_KEYS:
        assert 0.0 <= payload[key] <= 1.0
        assert payload[key] == round(outcome.test[key], 5)
    assert payload["selection_metric"] == "val_hr@10"

    # Assert: the MLflow run in the sqlite store
    client = mlflow.MlflowClient(tracking_uri(tiny_cfg))
    assert tracking_uri(tiny_cfg) == tiny_cfg.tracking.uri
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model"] == "gmf" and run.data.tags["kind"] == "centralized"
    assert run.data.params["model.name"] == "gmf"
    assert run.data.params["n_users"] == "90"
    val_history = client.get_metric_history(outcome.run_id, "val_hr_at_10")
    assert [m.step for m in val_history] == [1, 2] == list(range(1, tiny_cfg.training.epochs + 1))
    assert len(client.get_metric_history(outcome.run_id, "train_loss")) == tiny_cfg.training.epochs
    assert run.data.metrics["test_hr_at_10"] == outcome.test["hr@10"]
    assert run.data.metrics["best_epoch"] == outcome.best_epoch
    assert val_history[outcome.best_epoch - 1].value == outcome.val["hr@10"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "fedrec-test"


@pytest.mark.slow
def test_pop_baseline_logs_val_and_test(tiny_cfg):
    report = run_baseline(tiny_cfg, "pop")

    outcome = report.seeds[0]
    run = mlflow.MlflowClient(tracking_uri(tiny_cfg)).get_run(outcome.run_id)
    assert run.data.metrics["test_full_hr_at_10"] == outcome.test["full_hr@10"]
    assert run.data.metrics["val_hr_at_10"] == outcome.val["hr@10"]
    # the baseline pooled every passing silo: 90 synthetic users
    data = pipeline.load_union(tiny_cfg, report.silos)
    assert data.n_users == 90
