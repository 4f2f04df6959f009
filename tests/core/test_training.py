"""fedrec.core.training: SiloData, the training epoch, evaluation, early-stopped centralized training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrec.core.config import SyntheticConfig, TrainingConfig
from fedrec.core.data import synthetic
from fedrec.core.data.split import split_interactions
from fedrec.core.training import (
    SiloData,
    evaluate,
    make_optimizer,
    model_config,
    resolve_device,
    sampled_auc_sum,
    train_centralized,
    train_epoch,
)
from fedrec.models import build_model
from fedrec.models.popularity import PopularityModel


@pytest.fixture(scope="module")
def silo_data() -> SiloData:
    ds = synthetic.generate(SyntheticConfig(n_users=60, n_items=50, interactions_per_user=14, seed=1))
    split = split_interactions(ds.interactions, ds.items["item_id"].to_numpy(), n_neg=20, seed=0)
    return SiloData.from_split(split, ds.items["item_id"].to_numpy())


def hand_data() -> SiloData:
    """2 users, 8 items: item popularity (train counts) is [2, 1, 1, 0, 0, 1, 0, 0]."""
    return SiloData(
        user_ids=np.array([10, 20]),
        train_users=np.array([0, 0, 1, 1, 1]), train_items=np.array([0, 1, 0, 2, 5]),
        val_items=np.array([2, 1]), test_items=np.array([3, 4]),
        negatives=np.array([[4, 5], [3, 6]]), n_items=8,
    )


def test_silo_data_from_split_indexes_locally(silo_data):
    assert silo_data.n_users == 60
    assert np.all(np.diff(silo_data.user_ids) > 0)  # sorted global ids, row = local index
    assert silo_data.train_users.max() == silo_data.n_users - 1
    assert silo_data.negatives.shape == (60, 20)
    assert 0 <= silo_data.train_items.min() and silo_data.train_items.max() < 50
    # validation / test items and negatives are never training positives of that user
    seen = silo_data.seen_mask(np.arange(silo_data.n_users))
    rows = np.arange(silo_data.n_users)
    assert not seen[rows, silo_data.val_items].any()
    assert not seen[rows, silo_data.test_items].any()
    assert not seen[rows[:, None], silo_data.negatives].any()


def test_seen_mask_hand():
    mask = hand_data().seen_mask(np.array([1]))

    assert mask.tolist() == [[True, False, True, False, False, True, False, False]]


def test_epoch_samples_negatives_avoid_positives(silo_data):
    users, items, labels = silo_data.epoch_samples(4, np.random.default_rng(0))

    assert len(users) == 5 * silo_data.n_train
    assert labels.sum() == silo_data.n_train
    codes = set((silo_data.train_users * silo_data.n_items + silo_data.train_items).tolist())
    neg_codes = users[labels == 0] * silo_data.n_items + items[labels == 0]
    assert not codes & set(neg_codes.tolist())


def test_train_epoch_loss_decreases(silo_data):
    # Prepare
    torch.manual_seed(0)
    cfg = TrainingConfig(batch_size=128, lr=0.01, n_negatives=4)
    model = build_model(model_config(_model_cfg(), silo_data.n_users, silo_data.n_items), torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model, cfg)
    rng = np.random.default_rng(0)
    calls: list[tuple[int, int]] = []
    held = [torch.from_numpy(a) for a in silo_data.epoch_samples(4, np.random.default_rng(99))]
    with torch.no_grad():
        before = model.calculate_loss(*held).item()

    # Execute
    losses = [train_epoch(model, optimizer, silo_data, cfg, rng, torch.device("cpu"),
                          on_batch=lambda b, n: calls.append((b, n))) for _ in range(5)]

    with torch.no_grad():
        after = model.calculate_loss(*held).item()

    # Assert
    assert before == pytest.approx(math.log(2), abs=0.01)  # near-zero logits at init
    assert after < before - 0.1
    assert losses[-1] < losses[0] - 0.05
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
    n_batches = -(-5 * silo_data.n_train // 128)
    assert calls[-1] == (n_batches, n_batches) and len(calls) == 5 * n_batches


def _model_cfg():
    from fedrec.core.config import ModelConfig

    return ModelConfig(name="neumf", embedding_dim=8, mlp_layers=(16, 8))


def test_proximal_term_pulls_towards_reference(silo_data):
    from fedrec.core.training import proximal_term

    model = build_model(model_config(_model_cfg(), silo_data.n_users, silo_data.n_items))
    ref = model.shared_state()
    assert proximal_term(model, ref, 0.5).item() == 0.0

    shifted = {k: v + 1.0 for k, v in ref.items()}
    n_params = sum(v.numel() for v in ref.values())
    assert proximal_term(model, shifted, 0.5).item() == pytest.approx(0.25 * n_params)


def test_evaluate_returns_sane_metrics(silo_data):
    model = build_model(model_config(_model_cfg(), silo_data.n_users, silo_data.n_items))

    for target in ("val", "test"):
        sums = evaluate(model, silo_data, k=10, target=target, chunk_users=25)
        means = sums.means(10)
        assert sums.n == silo_data.n_users
        assert all(0.0 <= v <= 1.0 for v in means.values())
        assert means["ndcg@10"] <= means["hr@10"]


def test_sampled_auc_sums_each_users_share_of_negatives_below_its_val_item(silo_data):
    class ByItem:  # scores an item by its index: the expected AUC follows from the arrays alone
        def predict(self, users, items):
            return items.double()

    val, neg = silo_data.val_items[:, None], silo_data.negatives
    expected = ((neg < val).mean(axis=1) + 0.5 * (neg == val).mean(axis=1)).sum()
    assert sampled_auc_sum(ByItem(), silo_data, chunk_users=7) == pytest.approx(expected)

    class Reversed(ByItem):
        def predict(self, users, items):
            return -items.double()

    total = sampled_auc_sum(ByItem(), silo_data) + sampled_auc_sum(Reversed(), silo_data)
    assert total == pytest.approx(silo_data.n_users)  # each user's share below plus above (ties half each) is 1


def test_evaluate_rejects_unknown_target(silo_data):
    with pytest.raises(ValueError, match="target"):
        evaluate(PopularityModel(silo_data.train_items, silo_data.n_items), silo_data, 10, target="train")


def test_popularity_evaluates_hand_computed():
    data = hand_data()
    pop = PopularityModel(data.train_items, data.n_items)

    val = evaluate(pop, data, k=1, target="val").means(1)
    test1 = evaluate(pop, data, k=1, target="test").means(1)
    test2 = evaluate(pop, data, k=2, target="test").means(2)

    # val items 2 and 1 have count 1: only seen (excluded) item 0 scores higher -> rank 0 for both
    assert val == {"hr@1": 1.0, "ndcg@1": 1.0, "full_hr@1": 1.0, "full_ndcg@1": 1.0}
    # user 10: test 3 (count 0) below negative 5 (count 1) -> rank 1; user 20: rank 0
    assert test1 == {"hr@1": 0.5, "ndcg@1": 0.5, "full_hr@1": 0.5, "full_ndcg@1": 0.5}
    assert test2["hr@2"] == 1.0
    assert test2["ndcg@2"] == pytest.approx((1.0 + 1 / math.log2(3)) / 2)


def test_popularity_on_synthetic(silo_data):
    sums = evaluate(PopularityModel(silo_data.train_items, silo_data.n_items), silo_data, 10, "test")

    assert sums.n == 60
    assert 0.0 < sums.means(10)["hr@10"] <= 1.0


def test_train_centralized_selects_on_validation(tiny_cfg, silo_data):
    cfg = tiny_cfg.replace(**{"training.epochs": 3, "training.lr": 0.01, "training.patience": 1})
    seen_epochs = []

    result = train_centralized(silo_data, cfg, seed=0, on_epoch=seen_epochs.append)

    assert [r.epoch for r in result.history] == [r.epoch for r in seen_epochs]
    assert 1 <= len(result.history) <= 3
    best = max(result.history, key=lambda r: r.val["hr@10"])
    assert result.val["hr@10"] == best.val["hr@10"]
    assert result.val == result.history[result.best_epoch - 1].val
    assert set(result.test) == {"hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10"}
    assert result.selection_metric == "val_hr@10"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_with_validation_in_train_adds_each_val_item_once():
    data = hand_data()

    refit = data.with_validation_in_train()

    assert refit.n_train == data.n_train + data.n_users
    assert sorted(zip(refit.train_users.tolist(), refit.train_items.tolist())) == \
        sorted([(0, 0), (0, 1), (1, 0), (1, 2), (1, 5), (0, 2), (1, 1)])
    # the validation item is now seen: it is excluded from the full ranking of the test item
    assert refit.seen_mask(np.array([0]))[0, 2] and not data.seen_mask(np.array([0]))[0, 2]
    np.testing.assert_array_equal(refit.test_items, data.test_items)


def test_refit_reuses_the_selected_epoch_count(tiny_cfg, silo_data):
    cfg = tiny_cfg.replace(**{"training.epochs": 3, "training.lr": 0.01, "training.patience": 3})
    plain = train_centralized(silo_data, cfg, seed=0)

    refit = train_centralized(silo_data, cfg.replace(**{"training.refit": True}), seed=0)

    # selection is identical (same seed, same validation item); only the model behind the test metrics differs
    assert refit.best_epoch == plain.best_epoch and refit.val == plain.val
    assert refit.test != plain.test
    assert all(0.0 <= v <= 1.0 for v in refit.test.values())


def test_evaluate_targets_in_one_pass_equals_one_target_at_a_time(silo_data):
    from fedrec.core.config import ModelConfig
    from fedrec.core.training import evaluate_targets

    spec = model_config(ModelConfig(name="neumf", embedding_dim=8, mlp_layers=(16, 8)),
                        silo_data.n_users, silo_data.n_items)
    model = build_model(spec, torch.Generator().manual_seed(0))

    both = evaluate_targets(model, silo_data, 10, ("val", "test"), full=True, chunk_users=7)

    assert both["val"] == evaluate(model, silo_data, 10, "val", full=True, chunk_users=7)
    assert both["test"] == evaluate(model, silo_data, 10, "test", full=True, chunk_users=7)
    assert both["val"] != both["test"]
    with pytest.raises(ValueError):
        evaluate_targets(model, silo_data, 10, ("train",))
