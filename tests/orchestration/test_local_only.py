"""Each silo against training alone: a silo's local-only baseline sees exactly the held-out items and candidates
the federation scores it on, and the pooled model scored silo by silo adds up to its pooled evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.core.metrics import MetricSums
from fedrec.core.training import evaluate_targets, train_centralized
from fedrec.orchestration.centralized import per_silo_sums
from fedrec.silo import data as pipeline
from fedrec.silo.agent import SiloAgent
from fedrec.silo.local_only import train_alone


def test_a_silo_alone_is_scored_on_the_federations_candidates_and_per_silo_sums_add_up(tiny_cfg):
    # Prepare: the tiny synthetic silos, split; the pooled (centralized) model
    silos = pipeline.ensure_data(tiny_cfg)
    union = pipeline.load_union(tiny_cfg, silos)
    pooled = train_centralized(union, tiny_cfg, seed=0)

    # Act
    alone = {s: train_alone(tiny_cfg, s, seed=0) for s in silos}
    per_silo = per_silo_sums(pooled.model, union, {s: pipeline.load_silo_data(tiny_cfg, s) for s in silos},
                             tiny_cfg.evaluation.k)

    # Assert: the silo's local-only data is what its federated agent loads, row for row
    for s in silos:
        agent = SiloAgent(tiny_cfg, s, "run-local-only")
        agent.validate()  # loads the silo's split as the federation does
        mine = pipeline.load_silo_data(tiny_cfg, s)
        for name in ("user_ids", "train_users", "train_items", "val_items", "test_items", "negatives"):
            assert np.array_equal(getattr(mine, name), getattr(agent.data, name)), name
        # and the pooled data holds the same candidates for these users
        rows = np.searchsorted(union.user_ids, mine.user_ids)
        assert np.array_equal(union.negatives[rows], mine.negatives)
        assert np.array_equal(union.test_items[rows], mine.test_items)
        assert alone[s].n_users == mine.n_users and set(alone[s].test) >= {"hr@10", "ndcg@10", "full_hr@10"}
    # the pooled model's per-silo sums add up to its pooled evaluation (every user in exactly one silo)
    total = sum(per_silo.values(), MetricSums())
    pooled_sums = evaluate_targets(pooled.model, union, tiny_cfg.evaluation.k, ("test",))["test"]
    assert total.n == pooled_sums.n == union.n_users
    for field in ("hr", "ndcg", "full_hr", "full_ndcg"):
        assert getattr(total, field) == pytest.approx(getattr(pooled_sums, field), abs=1e-9), field
