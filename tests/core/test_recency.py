"""fedrec.core.recency: the recency head (model.personalisation: recency) and its histories."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.core import recency
from fedrec.core.config import ConfigError, from_dict
from fedrec.core.training import evaluate_targets, model_config
from fedrec.models import build_model
from fedrec.silo import data as pipeline
from fedrec.silo import personal


def test_recent_items_keeps_each_users_last_items_newest_first_from_interleaved_rows():
    users = np.array([1, 0, 1, 0, 1, 1, 2])
    items = np.array([10, 20, 11, 21, 12, 13, 30])

    history = recency.recent_items(users, items, n_users=4, length=3)

    assert history.tolist() == [[21, 20, -1], [13, 12, 11], [30, -1, -1], [-1, -1, -1]]
    assert recency.with_latest(history, np.array([5, 6, 7, 8])).tolist() == \
        [[5, 21, 20], [6, 13, 12], [7, 30, -1], [8, -1, -1]]


@pytest.fixture()
def silo(tiny_params):
    cfg = from_dict(tiny_params | {"model": tiny_params["model"] | {"personalisation": "recency"}})
    data = pipeline.load_silo_data(cfg, pipeline.ensure_data(cfg)[0])
    model = build_model(model_config(cfg.model, data.n_users, data.n_items), torch.Generator().manual_seed(0)).eval()
    return cfg, data, model


def _ranks(scores: torch.Tensor) -> np.ndarray:
    return np.argsort(-scores.numpy(), axis=1, kind="stable")


def test_without_weight_the_head_keeps_the_models_ranking_and_predict_agrees_with_the_full_scores(silo):
    cfg, data, model = silo
    users = torch.arange(data.n_users)
    history = recency.recent_items(data.train_users, data.train_items, data.n_users, 5)

    off = recency.RecencyScorer(model, history, decay=0.5, weight=0.0)
    on = recency.RecencyScorer(model, history, decay=0.5, weight=2.0)

    assert (_ranks(off.full_sort_predict(users)) == _ranks(model.full_sort_predict(users))).all()
    assert (_ranks(on.full_sort_predict(users)) != _ranks(model.full_sort_predict(users))).any()
    pairs_u, pairs_i = users.repeat_interleave(3), torch.tensor([0, 5, 9]).repeat(data.n_users)
    full = on.full_sort_predict(users)
    assert torch.allclose(on.predict(pairs_u, pairs_i), full[pairs_u, pairs_i], atol=1e-5)


def test_the_head_pulls_up_the_items_closest_to_the_users_latest_item_and_reads_only_that_users_history(silo):
    cfg, data, model = silo
    space = recency.item_space(model)
    history = np.full((data.n_users, 3), -1, dtype=np.int64)
    history[0, 0] = 4  # user 0 just touched item 4
    scorer = recency.RecencyScorer(model, history, decay=0.5, weight=100.0)  # the head dominates

    top = _ranks(scorer.full_sort_predict(torch.tensor([0])))[0][:5]
    nearest = np.argsort(-(space @ space[4]).numpy(), kind="stable")[:5]

    assert set(top) == set(nearest)
    other = history.copy()
    other[1:, :] = 7  # every other user's history changes
    assert torch.equal(recency.RecencyScorer(model, other, 0.5, 100.0).full_sort_predict(torch.tensor([0])),
                       scorer.full_sort_predict(torch.tensor([0])))


def test_evaluation_histories_hold_no_target_of_their_own_and_the_test_history_starts_with_the_val_item(silo):
    cfg, data, model = silo
    scorer = personal.evaluation_scorer(model, data, cfg)
    val_history, test_history = scorer.for_target("val").history, scorer.for_target("test").history

    assert (test_history[:, 0] == data.val_items).all()
    assert (test_history[:, 1:] == val_history[:, :-1]).all()
    assert not (val_history == data.val_items[:, None]).any()
    assert not (test_history == data.test_items[:, None]).any()
    sums = evaluate_targets(scorer, data, 10, ("val", "test"), True)
    assert sums["test"].n == data.n_users and 0 <= sums["test"].hr <= data.n_users


def test_in_the_refit_view_the_val_item_is_the_test_historys_newest_once(silo):
    cfg, data, model = silo
    refit = data.with_validation_in_train()
    test_history = personal.evaluation_scorer(model, refit, cfg).for_target("test").history
    plain = personal.evaluation_scorer(model, data, cfg).for_target("test").history

    assert (test_history[:, 0] == data.val_items).all()
    assert (test_history == plain).all()  # the same history as without the refit: the val item not pushed twice


def test_recency_under_the_rating_task_is_the_drift_head_only_and_settings_are_checked(tiny_params):
    model = tiny_params["model"]
    assert from_dict(tiny_params | {"task": "rating", "model": model | {"personalisation": "recency"}})
    with pytest.raises(ConfigError, match="task: rating supports model.personalisation none or recency"):
        from_dict(tiny_params | {"task": "rating", "model": model | {"personalisation": "finetune+recency"}})
    with pytest.raises(ConfigError, match="model.recency_decay"):
        from_dict(tiny_params | {"model": model | {"recency_decay": 0.0}})
    with pytest.raises(ConfigError, match="model.recency_length"):
        from_dict(tiny_params | {"model": model | {"recency_length": 0}})


def test_an_explanation_names_the_users_own_items_by_their_share_of_the_heads_score(silo):
    cfg, data, model = silo
    space = recency.item_space(model)
    history = np.array([3, 8, 3, 11, -1])  # newest first; item 3 twice

    named = recency.explain(space, history, item=20, decay=0.5, n=3)

    contribution = {h: max(0.5 ** a * float(space[h] @ space[20]) for a, x in enumerate(history) if x == h)
                    for h in (3, 8, 11)}
    expected = sorted(((h, w) for h, w in contribution.items() if w > 0), key=lambda kv: -kv[1])
    assert [h for h, _ in named] == [h for h, _ in expected]
    assert np.allclose([w for _, w in named], [w for _, w in expected])
    assert recency.explain(space, np.array([-1, -1]), 20, 0.5) == []


def test_explanations_of_a_whole_answer_at_once_equal_each_items_own(silo):
    _, _, model = silo
    space = recency.item_space(model)
    rng = np.random.default_rng(1)
    history = np.r_[rng.integers(0, space.shape[0], 30), -1, -1]  # repeats likely, padding at the end
    items = rng.choice(space.shape[0], 8, replace=False)

    many = recency.explain_many(space, history, items, decay=0.9, n=3)

    for item, named in zip(items, many):
        contribution = {int(h): max(0.9 ** a * float(space[h] @ space[item]) for a, x in enumerate(history) if x == h)
                        for h in set(history[history >= 0].tolist())}
        expected = sorted(((h, w) for h, w in contribution.items() if w > 0), key=lambda kv: (-kv[1], kv[0]))[:3]
        assert [h for h, _ in named] == [h for h, _ in expected]
        assert np.allclose([w for _, w in named], [w for _, w in expected])


def test_a_blend_adds_the_other_models_standardised_score_and_keeps_the_first_ones_item_space(silo):
    cfg, data, model = silo
    other = build_model(model_config(cfg.model, data.n_users, data.n_items), torch.Generator().manual_seed(1)).eval()
    users = torch.arange(data.n_users)

    alone = recency.BlendScorer(model, other, 0.0)
    blend = recency.BlendScorer(model, other, 1.0)
    head = recency.RecencyScorer(blend, recency.recent_items(data.train_users, data.train_items, data.n_users, 3),
                                 decay=0.5, weight=0.5)

    assert (_ranks(alone.full_sort_predict(users)) == _ranks(model.full_sort_predict(users))).all()
    expected = recency.standardise(model.full_sort_predict(users)) + recency.standardise(other.full_sort_predict(users))
    assert torch.allclose(blend.full_sort_predict(users), expected, atol=1e-5)
    assert (_ranks(blend.full_sort_predict(users)) != _ranks(model.full_sort_predict(users))).any()
    assert torch.equal(recency.item_space(blend), recency.item_space(model))  # the head compares personal vectors
    assert head.full_sort_predict(users).shape == (data.n_users, data.n_items)
