"""fedrec.core.data.split: leave-one-out by time and the fixed, per-user deterministic negatives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrec.core.data.split import (
    Split,
    leave_one_out,
    sample_user_negatives,
    split_interactions,
    tiebreak_key,
)
from fedrec.core.errors import ConfigError


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).astype("int64")


# user 1: items 10 (t=100), 11 (t=300), 12 (t=200), 13 (t=400) -> test 13, val 11
# user 2: items 20 (t=50), 21 (t=40), 22 (t=60)                 -> test 22, val 20
# user 3: one interaction only                                   -> no holdout
ROWS = [(1, 10, 4, 100), (1, 11, 3, 300), (2, 20, 5, 50), (1, 12, 2, 200), (1, 13, 5, 400),
        (2, 21, 1, 40), (2, 22, 4, 60), (3, 30, 3, 10)]


def test_leave_one_out_latest_is_test_second_latest_is_val():
    train, holdout = leave_one_out(frame(ROWS))

    assert holdout.to_dict("records") == [{"user_id": 1, "val_item": 11, "test_item": 13},
                                          {"user_id": 2, "val_item": 20, "test_item": 22}]
    assert sorted(zip(train["user_id"], train["item_id"])) == [(1, 10), (1, 12), (2, 21)]


def test_leave_one_out_ties_follow_the_seeded_key_not_item_id():
    rows = [(1, 7, 3, 100), (1, 5, 3, 100), (1, 6, 3, 100), (1, 9, 3, 50)]
    tied = np.array([7, 5, 6])
    expected = tied[np.argsort(tiebreak_key(np.ones(3, dtype=np.int64), tied, seed=0), kind="stable")]

    train, holdout = leave_one_out(frame(rows), seed=0)

    # same timestamp: the order is the hash order of (seed, user, item), the earlier-second item stays in train
    assert holdout.iloc[0].tolist() == [1, int(expected[1]), int(expected[2])]
    assert sorted(train["item_id"]) == sorted([9, int(expected[0])])
    # deterministic, and the input row order does not matter
    again, holdout2 = leave_one_out(frame(rows[::-1]), seed=0)
    assert holdout2.iloc[0].tolist() == holdout.iloc[0].tolist()


def test_tiebreak_key_is_not_item_order():
    items = np.arange(1, 1001)
    keys = tiebreak_key(np.full(1000, 3), items, seed=0)

    # over many tied items the hash order is unrelated to item id (no bias towards high ids)
    rank_corr = np.corrcoef(np.argsort(np.argsort(keys)), items)[0, 1]
    assert abs(rank_corr) < 0.1
    assert len(np.unique(keys)) == 1000


def test_negatives_never_seen_and_distinct():
    catalogue = np.arange(1, 41)
    seen = np.array([1, 2, 3, 5, 8, 13, 21, 34])

    neg = sample_user_negatives(seen, catalogue, n_neg=25, seed=7, user_id=42)

    assert len(neg) == 25
    assert len(set(neg.tolist())) == 25
    assert not set(neg.tolist()) & set(seen.tolist())
    assert set(neg.tolist()) <= set(catalogue.tolist())


def test_negatives_deterministic_per_seed_and_user():
    catalogue, seen = np.arange(1, 101), np.array([4, 9])

    a = sample_user_negatives(seen, catalogue, 10, seed=1, user_id=5)
    b = sample_user_negatives(seen, catalogue, 10, seed=1, user_id=5)
    other_user = sample_user_negatives(seen, catalogue, 10, seed=1, user_id=6)
    other_seed = sample_user_negatives(seen, catalogue, 10, seed=2, user_id=5)

    assert np.array_equal(a, b)
    assert not np.array_equal(a, other_user)
    assert not np.array_equal(a, other_seed)


def test_negatives_identical_whichever_silo_holds_the_user():
    # Prepare: user 1 alone in one silo, and together with users 2, 3 in another
    catalogue = np.arange(1, 51)
    alone = frame([r for r in ROWS if r[0] == 1])
    together = frame(ROWS + [(3, 31, 2, 20), (3, 32, 2, 30)])

    # Execute
    s1 = split_interactions(alone, catalogue, n_neg=20, seed=2024)
    s2 = split_interactions(together, catalogue, n_neg=20, seed=2024)

    # Assert
    neg_alone = s1.holdout.set_index("user_id").loc[1, "negatives"]
    neg_together = s2.holdout.set_index("user_id").loc[1, "negatives"]
    assert list(neg_alone) == list(neg_together)
    assert not {10, 11, 12, 13} & set(neg_alone)  # val and test items are seen too


def test_too_few_unseen_items_raises_config_error():
    with pytest.raises(ConfigError, match="only 3 unseen items"):
        sample_user_negatives(np.array([1, 2]), np.arange(1, 6), n_neg=4, seed=0, user_id=1)


def test_split_interactions_through_too_small_catalogue_raises():
    with pytest.raises(ConfigError, match="n_negatives"):
        split_interactions(frame(ROWS), np.arange(1, 30), n_neg=30, seed=0)


def test_split_drops_users_without_holdout_and_round_trips(tmp_path):
    catalogue = np.arange(1, 51)
    split = split_interactions(frame(ROWS), catalogue, n_neg=5, seed=0)

    split.save(tmp_path / "split")
    loaded = Split.load(tmp_path / "split")

    assert set(split.train["user_id"]) == {1, 2}  # user 3 has no val/test item
    assert loaded.holdout["user_id"].tolist() == [1, 2]
    assert [list(n) for n in loaded.holdout["negatives"]] == [list(n) for n in split.holdout["negatives"]]
    pd.testing.assert_frame_equal(loaded.train, split.train)
