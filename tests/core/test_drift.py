"""task: rating's recency head (fedrec.core.drift): each user's recent residual drift, in the silo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.core import drift
from fedrec.core.config import ConfigError, load_config
from fedrec.core.objectives.rating import evaluate_ratings
from fedrec.core.training import SiloData, model_config
from fedrec.models import build_model


def test_recent_mean_takes_each_users_latest_rows_decayed_in_time_order():
    users = np.array([0, 1, 0, 0, 1, 0])  # user 0's rows in time order: 1, 2, 3, 4; user 1's: 10, 20; user 2: none
    values = np.array([1.0, 10.0, 2.0, 3.0, 20.0, 4.0])

    out = drift.recent_mean(users, values, n_users=3, length=3, decay=0.5)

    assert out[0] == pytest.approx((4 + 0.5 * 3 + 0.25 * 2) / 1.75)  # the oldest row (1) is past the length
    assert out[1] == pytest.approx((20 + 0.5 * 10) / 1.5)
    assert out[2] == 0.0  # no rows: no drift
    assert drift.recent_mean(users, values, 3, 1, 0.5).tolist() == [4.0, 20.0, 0.0]


def _drifting(n_users: int = 30, n_items: int = 20, per_user: int = 12, seed: int = 0) -> SiloData:
    """Each user rates in time order; half the users' ratings jump from 1 to 5 after their first four, the others'
    fall from 5 to 1: a per-user level fitted on all rows misses where each user is now."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    late = np.tile(np.arange(per_user + 2) >= 4, (n_users, 1))
    ratings = np.where((np.arange(n_users) % 2 == 0)[:, None] == late, 5.0, 1.0).astype(np.float32)
    return SiloData(user_ids=np.arange(n_users), train_users=users, train_items=items,
                    val_items=rng.integers(0, n_items, n_users), test_items=rng.integers(0, n_items, n_users),
                    negatives=rng.integers(0, n_items, (n_users, 3)), n_items=n_items,
                    train_ratings=ratings[:, :per_user].reshape(-1), val_ratings=ratings[:, per_user],
                    test_ratings=ratings[:, per_user + 1])


def test_the_head_follows_each_users_drift_and_the_test_target_counts_the_validation_rating(tmp_path):
    cfg = load_config(tmp_path / "params.yaml", {"task": "rating", "model.embedding_dim": 4})
    assert cfg.model.personalisation == "recency"  # the rating default (params.yaml's rating block)
    data = _drifting()
    model = build_model(model_config(cfg.model, data.n_users, data.n_items, task=cfg.task),
                        torch.Generator().manual_seed(0))  # untrained: every prediction near the global bias 3

    head = drift.for_evaluation(model, data, cfg)
    plain, personal = evaluate_ratings(model, data), evaluate_ratings(head, data)

    for target in ("val", "test"):  # the drift moves each prediction towards where its user is now
        assert personal[target].means()["rmse"] < plain[target].means()["rmse"] - 0.3
    # the test rating's drift has the validation rating as its newest residual; the validation's has not
    residual = data.val_ratings - drift.predictions(model, np.arange(data.n_users), data.val_items).clip(1, 5)
    val_view, test_view = head.for_target("val"), head.for_target("test")
    assert not np.allclose(val_view.offsets, test_view.offsets)
    assert np.corrcoef(test_view.offsets - val_view.offsets, residual)[0, 1] > 0.9
    # weight 0: the model alone, bit for bit
    off = drift.DriftScorer(model, head.offsets, 0.0)
    users, items = torch.arange(data.n_users), torch.as_tensor(data.test_items)
    assert torch.equal(off.predict_rating(users, items), model.predict_rating(users, items))


def test_the_rating_task_takes_only_none_or_the_drift_head(tmp_path):
    path = tmp_path / "params.yaml"
    assert load_config(path, {"task": "rating"}).model.personalisation == "recency"
    assert load_config(path, {"task": "rating", "model.personalisation": "none"}).model.personalisation == "none"
    assert load_config(path, {"task": "rating", "rating.personalisation": "none"}).model.personalisation == "none"
    with pytest.raises(ConfigError, match="task: rating supports model.personalisation none or recency"):
        load_config(path, {"task": "rating", "model.personalisation": "finetune"})
    with pytest.raises(ConfigError, match="model.transition_dim > 0 supports task: ranking only"):
        load_config(path, {"task": "rating", "model.transition_dim": 8})


def test_the_bias_baseline_gets_the_same_head_chosen_on_validation():
    from fedrec.core.objectives.rating import rating_baselines

    data = _drifting()
    base = rating_baselines(data)

    head = base["bias_drift"]
    assert head["rmse"] < base["bias"]["rmse"] - 0.3 and head["val_rmse"] < base["bias"]["val_rmse"] - 0.3
    assert head["weight"] > 0 and head["length"] == 10
