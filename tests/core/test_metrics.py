"""fedrec.core.metrics: HR / NDCG over 0-based ranks, sampled and full ranking, shareable sums."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrec.core.metrics import (
    MetricSums,
    full_rank,
    hit_at_k,
    ndcg_at_k,
    sampled_rank,
    selection_value,
)


def test_hit_at_k():
    assert hit_at_k(np.array([0, 9, 10, 50]), k=10).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert hit_at_k(np.array([0, 1, 2]), k=1).tolist() == [1.0, 0.0, 0.0]


def test_ndcg_at_k_hand_computed():
    got = ndcg_at_k(np.array([0, 1, 2, 6, 9, 10, 99]), k=10)

    expected = [1.0, 1 / math.log2(3), 0.5, 1 / 3, 1 / math.log2(11), 0.0, 0.0]
    assert got == pytest.approx(expected, abs=1e-12)


def test_sampled_rank_counts_strictly_higher_negatives():
    pos = np.array([0.5, 0.9, 0.1, 0.3])
    neg = np.array([[0.1, 0.2, 0.6],    # one above -> 1
                    [0.1, 0.2, 0.3],    # none above -> 0
                    [0.2, 0.3, 0.4],    # all above -> 3
                    [0.3, 0.3, 0.31]])  # ties do not count -> 1

    assert sampled_rank(pos, neg).tolist() == [1, 0, 3, 1]


def test_full_rank_ignores_excluded_items():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],
                       [0.1, 0.9, 0.8, 0.2, 0.3]])
    targets = np.array([3, 0])
    excluded = np.array([[True, False, False, False, False],   # item 0 (score 0.9) seen
                         [False, True, True, False, False]])   # items 1, 2 seen

    ranks = full_rank(scores, targets, excluded)

    # row 0: above 0.6 are items 0, 1, 2; item 0 excluded -> 2
    # row 1: above 0.1 are items 1, 2, 3, 4; 1 and 2 excluded -> 2
    assert ranks.tolist() == [2, 2]
    assert full_rank(scores, targets, np.zeros_like(excluded)).tolist() == [3, 4]


def test_full_rank_target_excluded_itself_is_not_counted():
    scores = np.array([[0.5, 0.4, 0.6]])
    ranks = full_rank(scores, np.array([1]), np.array([[False, True, False]]))

    assert ranks.tolist() == [2]


def test_metric_sums_from_ranks_addition_and_means():
    # Prepare: silo A ranks 0 and 2, silo B ranks 10 (a miss) and 1
    a = MetricSums.from_ranks(np.array([0, 2]), np.array([5, 20]), k=10)
    b = MetricSums.from_ranks(np.array([10, 1]), None, k=10)

    # Execute
    total = a + b
    means = total.means(10)

    # Assert
    assert a == MetricSums(n=2, hr=2.0, ndcg=1.5, full_hr=1.0, full_ndcg=1 / math.log2(7))
    assert b.full_hr == 0.0 and b.full_ndcg == 0.0
    assert total.n == 4
    assert means["hr@10"] == pytest.approx(3 / 4)
    assert means["ndcg@10"] == pytest.approx((1.0 + 0.5 + 1 / math.log2(3)) / 4)
    assert means["full_hr@10"] == pytest.approx(1 / 4)
    assert means["full_ndcg@10"] == pytest.approx(1 / math.log2(7) / 4)
    assert selection_value(means, "ndcg", 10) == means["ndcg@10"]


def test_empty_metric_sums_mean_is_zero():
    assert MetricSums().means(5) == {"hr@5": 0.0, "ndcg@5": 0.0, "full_hr@5": 0.0, "full_ndcg@5": 0.0}
