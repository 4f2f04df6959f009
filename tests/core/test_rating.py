"""task: rating: the MSE rating loss, exact RMSE/MAE sums across silos, the held-out ratings of the split, the
centralized run with its baselines (CLI --json), and a federated run with CKKS aggregation on a real Prefect
server and MLflow store."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.nn import functional as F
from typer.testing import CliRunner

from fedrec.cli.app import app
from fedrec.coordinator.report import RoundRecord
from fedrec.core.config import from_dict, load_config
from fedrec.core.data.split import Split, leave_one_out, split_interactions
from fedrec.core.errors import ConfigError
from fedrec.core.metrics import RatingSums
from fedrec.core.objectives import objective, rating
from fedrec.core.training import (
    SiloData,
    evaluate_targets,
    make_optimizer,
    model_config,
    train_epoch,
)
from fedrec.models import build_model
from fedrec.models.rating import GLOBAL_BIAS_INIT, RatingModel
from fedrec.silo import data as pipeline
from fedrec.wire.messages import MetricReport

from conftest import make_tiny_params


def _rating_model(name: str, n_users: int = 7, n_items: int = 11, seed: int = 0) -> RatingModel:
    cfg = from_dict({"task": "rating", "model": {"name": name, "embedding_dim": 4, "mlp_layers": [8, 4]}})
    model = build_model(model_config(cfg.model, n_users, n_items, task=cfg.task), torch.Generator().manual_seed(seed))
    assert isinstance(model, RatingModel)
    return model


def _silo_data(n_users: int = 6, n_items: int = 9, per_user: int = 5, seed: int = 0) -> SiloData:
    rng = np.random.default_rng(seed)
    train_users = np.repeat(np.arange(n_users), per_user)
    train_items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    return SiloData(user_ids=np.arange(100, 100 + n_users), train_users=train_users, train_items=train_items,
                    val_items=rng.integers(0, n_items, n_users), test_items=rng.integers(0, n_items, n_users),
                    negatives=rng.integers(0, n_items, (n_users, 3)), n_items=n_items,
                    train_ratings=rng.integers(1, 6, len(train_users)).astype(np.float32),
                    val_ratings=rng.integers(1, 6, n_users).astype(np.float32),
                    test_ratings=rng.integers(1, 6, n_users).astype(np.float32))


@pytest.mark.parametrize("name", ["gmf", "neumf"])
def test_rating_loss_is_mse_of_the_predicted_rating(name):
    # Prepare
    model = _rating_model(name)
    users, items = torch.tensor([0, 1, 2, 3, 6]), torch.tensor([0, 4, 10, 3, 3])
    ratings = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])

    # Execute
    loss = model.calculate_loss(users, items, ratings)
    fused, l2 = model.loss_and_l2(users, items, ratings)

    # Assert: the article's formula, mean((r_hat - r)^2), on the rating itself (not a logit, no sigmoid)
    predicted = model(users, items)
    assert torch.allclose(loss, F.mse_loss(predicted, ratings))
    assert torch.allclose(loss, ((predicted - ratings) ** 2).mean())
    assert torch.allclose(fused, loss) and l2 > 0
    # a fresh model predicts the global bias (middle of the scale): biases start at zero, embeddings near it
    assert torch.allclose(predicted, torch.full_like(predicted, GLOBAL_BIAS_INIT), atol=1e-2)
    # the user bias is private (user tower), item and global biases are shared (aggregated)
    assert "bias" in model.users.tables
    assert {"item_bias.weight", "global_bias"} <= set(model.shared_state())
    assert not any("users" in k for k in model.shared_state())


def test_rating_epoch_uses_observed_ratings_only(monkeypatch):
    # Prepare: negatives would come from epoch_samples; a rating epoch must never ask for them
    data = _silo_data()
    cfg = from_dict({"task": "rating", "training": {"batch_size": 4}})
    model = _rating_model("gmf", data.n_users, data.n_items)
    monkeypatch.setattr(SiloData, "epoch_samples", lambda *a, **k: pytest.fail("a rating epoch drew negatives"))
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    original = RatingModel.loss_and_l2

    def spy(self, users, items, ratings):
        seen.append((users, items, ratings))
        return original(self, users, items, ratings)

    monkeypatch.setattr(RatingModel, "loss_and_l2", spy)

    # Execute
    loss = train_epoch(model, make_optimizer(model, cfg.training), data, cfg.training, np.random.default_rng(0),
                       torch.device("cpu"))

    # Assert: every training rating exactly once, with its own rating as the target
    users, items, ratings = (torch.cat(t).numpy() for t in zip(*seen))
    assert len(users) == data.n_train
    rows = sorted(zip(users.tolist(), items.tolist(), ratings.tolist()))
    assert rows == sorted(zip(data.train_users.tolist(), data.train_items.tolist(), data.train_ratings.tolist()))
    assert loss > 0


def test_rating_sums_of_silos_add_up_to_the_pooled_metrics():
    # Prepare: errors of 3 silos' users
    rng = np.random.default_rng(1)
    predicted, actual = rng.uniform(1, 5, 300), rng.integers(1, 6, 300).astype(float)
    cuts = [0, 40, 170, 300]

    # Execute
    silos = [RatingSums.from_errors(predicted[a:b], actual[a:b]) for a, b in zip(cuts, cuts[1:])]
    pooled = RatingSums.from_errors(predicted, actual)
    reports = [MetricReport(silo_id=str(i), round=1, val=s.__dict__, test=s.__dict__) for i, s in enumerate(silos)]
    record = RoundRecord(round=1, loss=0.0, contributors=["0", "1", "2"], failures={}, bytes_per_silo={},
                         plaintext_bytes=0, seconds={}, task="rating")
    record = record.with_evaluation([MetricReport.from_json(r.to_json(), "metrics") for r in reports], 10)

    # Assert: the coordinator's RMSE/MAE from the silos' sums are the pooled ones
    total = sum(silos[1:], silos[0])
    assert total.n == pooled.n == 300
    assert total.means() == pytest.approx(pooled.means(), rel=1e-12)
    assert pooled.means()["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - actual) ** 2)))
    assert pooled.means()["mae"] == pytest.approx(np.mean(np.abs(predicted - actual)))
    assert record.val == pytest.approx(pooled.means(), rel=1e-12) and set(record.val) == {"rmse", "mae"}
    assert record.per_silo_test["1"] == pytest.approx(silos[1].means())
    assert {"val_rmse", "test_mae", "silo/2/test_rmse"} <= set(record.mlflow_metrics())
    assert record.table(10)[-1]["test_rmse"] == round(pooled.means()["rmse"], 4)


def test_evaluate_targets_clips_predictions_to_the_scale():
    data = _silo_data()
    model = _rating_model("gmf", data.n_users, data.n_items)
    with torch.no_grad():
        model.items.global_bias.fill_(9.0)  # predicts 9 everywhere: evaluated as 5

    sums = evaluate_targets(model, data, 10)

    assert set(sums) == {"val", "test"}
    assert sums["test"].means()["mae"] == pytest.approx(np.mean(5.0 - data.test_ratings))


def test_split_keeps_the_held_out_ratings_and_old_splits_still_load(tmp_path):
    # Prepare
    rows = [(1, 10, 4, 100), (1, 11, 2, 200), (1, 12, 5, 300), (1, 13, 1, 400),
            (2, 10, 3, 100), (2, 14, 5, 200), (2, 15, 4, 300)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).astype("int64")

    # Execute
    split = split_interactions(frame, np.arange(10, 40), n_neg=3, seed=0)

    # Assert: the latest rating is the test rating, the second latest the validation rating
    holdout = split.holdout.set_index("user_id")
    assert holdout.loc[1, ["val_item", "test_item", "val_rating", "test_rating"]].tolist() == [12, 13, 5.0, 1.0]
    assert holdout.loc[2, ["val_item", "test_item", "val_rating", "test_rating"]].tolist() == [14, 15, 5.0, 4.0]
    assert leave_one_out(frame)[1].columns.tolist() == ["user_id", "val_item", "test_item"]  # unchanged
    data = SiloData.from_split(split, np.arange(10, 40))
    assert data.val_ratings.tolist() == [5.0, 5.0] and sorted(data.train_ratings.tolist()) == [2.0, 3.0, 4.0]
    refit = data.with_validation_in_train()
    assert refit.train_ratings.tolist()[-2:] == [5.0, 5.0]
    # a split saved before the ratings existed loads (no ratings) for the ranking task
    Split(split.train, split.holdout.drop(columns=["val_rating", "test_rating"])).save(tmp_path / "old")
    old = SiloData.from_split(Split.load(tmp_path / "old"), np.arange(10, 40))
    assert old.val_ratings is None and np.array_equal(old.val_items, data.val_items)


def test_config_task_and_selection():
    assert from_dict({}).task == "ranking"
    assert objective("rating").selection("hr") == "rmse"
    assert objective("rating").selection("mae") == "mae"
    assert objective("ranking").selection("ndcg") == "ndcg"
    with pytest.raises(ConfigError, match="task"):
        from_dict({"task": "regression"})
    with pytest.raises(ConfigError, match="needs task: rating"):
        from_dict({"evaluation": {"selection_metric": "rmse"}})
    with pytest.raises(ConfigError, match="privacy.enabled"):
        from_dict({"task": "rating", "privacy": {"enabled": True}})
    assert load_config("missing.yaml", {"task": "rating"}).task == "rating"


@pytest.mark.slow
def test_centralized_rating_json_beats_the_global_mean(params_file, tiny_cfg, tmp_path):
    # Prepare: an old split without ratings is on disk (made again by the rating run)
    runner = CliRunner()
    # the synthetic ratings do not drift in time (fedrec.core.drift's head only adds noise to them): the model alone
    sets = ["-S", "task=rating", "-S", "training.lr=0.01", "-S", "training.epochs=25", "-S", "training.patience=25",
            "-S", "model.personalisation=none"]
    pipeline.ensure_data(tiny_cfg)
    for holdout in (tmp_path / "data" / "split").glob("*/holdout.parquet"):
        pd.read_parquet(holdout).drop(columns=["val_rating", "test_rating"]).to_parquet(holdout, index=False)

    # Execute
    result = runner.invoke(app, ["centralized", "--model", "gmf", "--json", "--params", str(params_file), *sets])

    # Assert: one JSON object with rmse, mae and both baselines on the same split
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip())
    assert payload["task"] == "rating" and payload["selection_metric"] == "val_rmse"
    assert {"rmse", "mae"} <= set(payload) and "hr@10" not in payload
    base = payload["baselines"]
    assert set(base) == {"global_mean", "bias", "bias_drift", "run_id"}
    for name in ("global_mean", "bias", "bias_drift"):
        assert {"rmse", "mae", "val_rmse", "val_mae"} <= set(base[name])
    assert base["bias"]["val_rmse"] <= base["global_mean"]["val_rmse"]  # its lambdas are chosen on validation
    # the synthetic ratings carry a latent-factor signal the model learns: it beats predicting the mean
    assert payload["rmse"] < base["global_mean"]["rmse"]
    outcome = payload["per_seed"][0]
    assert set(outcome["test"]) == {"rmse", "mae"}
    client = mlflow.MlflowClient(load_config(params_file).tracking.uri)
    assert client.get_run(outcome["run_id"]).data.metrics["test_rmse"] == pytest.approx(outcome["test"]["rmse"])
    assert client.get_run(base["run_id"]).data.metrics["bias_test_rmse"] == pytest.approx(base["bias"]["rmse"])
    assert client.get_run(base["run_id"]).data.metrics["bias_drift_test_rmse"] == \
        pytest.approx(base["bias_drift"]["rmse"])
    # pop cannot predict ratings
    assert runner.invoke(app, ["centralized", "--model", "pop", "--params", str(params_file), *sets]).exit_code == 2


def test_fit_biases_recovers_additive_ratings():
    data = _silo_data(n_users=30, n_items=20, per_user=12)
    b_u, b_i = np.linspace(-0.5, 0.5, 30), np.linspace(-1, 1, 20)
    data.train_ratings = (3.5 + b_u[data.train_users] + b_i[data.train_items]).astype(np.float32)

    fit = rating.fit_biases(data, 0.0, 0.0, iterations=200)

    predicted = fit.mu + fit.user[data.train_users] + fit.item[data.train_items]
    assert np.abs(predicted - data.train_ratings).max() < 1e-3


@pytest.mark.slow
def test_federated_rating_run_reports_rmse_and_mae(prefect_harness, tmp_path):
    # Prepare
    from fedrec.flows.federated import run_demo

    params = make_tiny_params(tmp_path)
    params["task"] = "rating"
    params["training"]["lr"] = 0.01
    params["rating"] = {"model": params["model"]["name"], "rounds": 3}  # task: rating's own defaults, kept tiny
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))

    # Execute
    summary = run_demo(params_path=str(path))

    # Assert: the summary (what `fedrec run --json` prints)
    assert summary["task"] == "rating" and summary["he"] is True
    assert summary["selection_metric"] == "val_rmse"
    assert summary["silos"] == ["0", "1", "2"] and summary["failures"] == {}
    assert 0 < summary["mae"] <= summary["rmse"] < 4
    rmse_by_round = [h["val_rmse"] for h in summary["history"]]
    assert summary["history"][summary["selected_round"] - 1]["val_rmse"] == min(rmse_by_round)
    assert summary["rmse"] == summary["history"][summary["selected_round"] - 1]["test_rmse"]
    assert set(summary["per_silo_test"]) == {"0", "1", "2"}
    losses = [h["loss"] for h in summary["history"]]
    assert losses == sorted(losses, reverse=True) and losses[0] < 4  # MSE of the rating itself, falling
    # Assert: MLflow
    client = mlflow.MlflowClient(params["tracking"]["uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_rmse")] == pytest.approx(rmse_by_round)
    assert run.data.metrics["selected_test_rmse"] == summary["rmse"]
    assert run.data.metrics["selected_test_mae"] == summary["mae"]
    assert run.data.params["task"] == "rating"
    # the user bias stayed in the silo: the saved user tower has it, the global model has only the item side
    cfg = load_config(path)
    from fedrec.protocol.reads import load_global
    from fedrec.wire.exchange import run_exchange

    shared = load_global(run_exchange(cfg, summary["run_id"]), summary["selected_round"])
    assert "global_bias" in shared and "item_bias.weight" in shared
    assert not any(k.startswith("users") for k in shared)
    data = pipeline.load_silo_data(cfg, "0")
    assert data.val_ratings is not None
