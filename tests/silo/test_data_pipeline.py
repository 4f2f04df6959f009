"""fedrec.silo.data.ensure_data: outputs made with other settings are made anew (a changed partition is never
silently reused), and feedback appended under the old partition is never lost."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fedrec.core.errors import PartitionChangedError
from fedrec.silo import data as pipeline
from fedrec.silo.paths import Paths


def _users(cfg) -> dict[str, set[int]]:
    paths = Paths.of(cfg)
    return {s: set(pd.read_parquet(paths.silo_data(s) / "users.parquet")["user_id"])
            for s in pipeline.list_silos(paths.silos)}


def test_a_changed_partition_is_made_anew_with_its_validation_and_splits(tiny_cfg):
    silos = pipeline.ensure_data(tiny_cfg)
    assert len(silos) == 3
    before = _users(tiny_cfg)
    skewed = tiny_cfg.replace(**{"partition.scheme": "dirichlet", "partition.n_silos": 4, "partition.alpha": 0.3})
    after_silos = pipeline.ensure_data(skewed)
    after = _users(skewed)
    assert len(after) == 4 and after != before  # not the iid partition reused
    paths = Paths.of(skewed)
    assert sorted(p.name for p in paths.silos.iterdir() if p.is_dir()) == sorted(after)  # no stale silo left
    assert set(json.loads((paths.validation / "summary.json").read_text())) == set(after)
    for s in after_silos:  # every split is the new silo's users'
        train = pd.read_parquet(paths.silo_split(s) / "train.parquet")
        assert set(train["user_id"]) <= after[s]
    # the same settings again: nothing is redone (the files are not rewritten)
    stamp = (paths.silos / "manifest.json").stat().st_mtime_ns
    pipeline.ensure_data(skewed)
    assert (paths.silos / "manifest.json").stat().st_mtime_ns == stamp


def test_a_changed_partition_is_refused_while_feedback_of_the_old_one_exists(tiny_cfg):
    silo = pipeline.ensure_data(tiny_cfg)[0]
    paths = Paths.of(tiny_cfg)
    batch = paths.silo_feedback(silo) / "batch-0001.parquet"
    batch.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"user_id": [1], "item_id": [2], "rating": [5], "timestamp": [10**9]}).to_parquet(batch)
    manifest = (paths.silos / "manifest.json").read_text()
    with pytest.raises(PartitionChangedError, match="feedback"):
        pipeline.ensure_data(tiny_cfg.replace(**{"partition.seed": 7}))
    assert batch.exists() and (paths.silos / "manifest.json").read_text() == manifest  # nothing changed
    assert pipeline.ensure_data(tiny_cfg)  # the old settings still run


def test_changed_data_settings_prepare_anew(tiny_cfg):
    pipeline.ensure_data(tiny_cfg)
    n_before = len(pd.read_parquet(Paths.of(tiny_cfg).prepared / "users.parquet"))
    bigger = tiny_cfg.replace(**{"data.synthetic.n_users": 120})
    pipeline.ensure_data(bigger)
    assert len(pd.read_parquet(Paths.of(bigger).prepared / "users.parquet")) == 120 != n_before
