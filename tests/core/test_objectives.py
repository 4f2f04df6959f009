"""The learning tasks as objects (fedrec.core.objectives): each says what it trains on, how its sums add up over
silos, which validation score selects, and what reports show; ranking and rating are the two."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.core.metrics import MetricSums, RatingSums
from fedrec.core.objectives import OBJECTIVES, Objective, Ranking, Rating, objective, objective_of


def test_each_task_of_the_config_has_its_objective():
    # Act / Assert: the names the config accepts are the registry's
    assert set(OBJECTIVES) == {"ranking", "rating"}
    assert isinstance(objective("ranking"), Ranking) and isinstance(objective("rating"), Rating)
    with pytest.raises(ValueError, match="unknown task 'regression'"):
        objective("regression")


def test_a_model_without_a_task_ranks():
    class Popularity:  # the popularity model has no task attribute
        pass

    class RatingModel:
        task = "rating"

    assert objective_of(Popularity()).name == "ranking"
    assert objective_of(RatingModel()).name == "rating"


@pytest.mark.parametrize("task, sent, means", [
    ("ranking", [dict(n=2, hr=1.0, ndcg=0.5, full_hr=1.0, full_ndcg=0.25), dict(n=2, hr=1.0, ndcg=1.0, full_hr=0.0,
                                                                              full_ndcg=0.0)],
     {"hr@10": 0.5, "ndcg@10": 0.375, "full_hr@10": 0.25, "full_ndcg@10": 0.0625}),
    ("rating", [dict(n=1, sse=4.0, sae=2.0), dict(n=3, sse=0.0, sae=2.0)], {"rmse": 1.0, "mae": 1.0}),
])
def test_silos_sums_add_up_to_the_pooled_metrics(task, sent, means):
    # Prepare
    obj = objective(task)

    # Act
    total = obj.empty_sums()
    for s in sent:
        total = total + obj.sums(s)

    # Assert
    assert total.means(10) == pytest.approx(means)
    assert set(means) == set(obj.report_keys(10))
    assert type(total) is (MetricSums if task == "ranking" else RatingSums)


def test_selection_is_higher_is_better_for_both_tasks():
    # Prepare
    ranking, rating = objective("ranking"), objective("rating")

    # Assert: a higher HR wins; a lower RMSE wins; labels as reports print them
    assert ranking.score({"hr@10": 0.6}, "hr", 10) > ranking.score({"hr@10": 0.5}, "hr", 10)
    assert rating.score({"rmse": 0.9}, "rmse", 10) > rating.score({"rmse": 1.0}, "rmse", 10)
    assert ranking.selection_label("ndcg", 10) == "val_ndcg@10"
    assert rating.selection_label("hr", 10) == "val_rmse"  # a ranking metric asked of the rating task: its default
    assert ranking.headline(5) == "hr@5" and rating.headline(5) == "rmse"


def test_training_rows_per_interaction():
    # Assert: a ranking epoch adds its sampled negatives; a rating epoch only the observed ratings
    assert objective("ranking").rows_per_interaction(4) == 5
    assert objective("rating").rows_per_interaction(4) == 1


def test_a_round_table_shows_the_tasks_columns():
    # Assert
    assert [c for c, _, _ in objective("ranking").table_columns(10)] == [
        "val_hr@10", "val_ndcg@10", "test_hr@10", "test_ndcg@10", "test_full_hr@10"]
    assert [c for c, _, _ in objective("rating").table_columns(10)] == ["val_rmse", "val_mae", "test_rmse", "test_mae"]


def test_a_new_task_is_one_subclass():
    # Prepare: a toy task (every method the interface asks for, nothing else)
    class Constant(Objective):
        name = "constant"
        selectable = ("rmse",)
        scored_against = "nothing"
        sums_type = RatingSums

        def training_rows(self, data, n_negatives, rng):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)

        def evaluate(self, model, data, k, targets=("val", "test"), full=True, device=None, chunk_users=256):
            return {t: RatingSums() for t in targets}

        def empty_sums(self):
            return RatingSums()

        def report_keys(self, k):
            return ("rmse", "mae")

        def metric_name(self, metric, k):
            return metric

        def score(self, metrics, metric, k):
            return -metrics[metric]

    # Act
    toy = Constant()

    # Assert: the shared parts come from the interface
    assert toy.selection("hr") == "rmse" and toy.selection_label("hr", 10) == "val_rmse"
    assert toy.curve_keys(10) == ("rmse", "mae") and toy.baselines(None) is None
