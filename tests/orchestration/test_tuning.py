"""fedrec.orchestration.tuning: the hyper-parameter search chooses on the validation item and never reads a test item;
its choice is written into params.yaml with the comments kept."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from fedrec.core.training import SiloData
from fedrec.orchestration import tuning
from fedrec.silo import data as pipeline


class Untouchable(np.ndarray):
    """An array whose every read fails: what the test items are while the search runs."""

    def __getitem__(self, item):
        raise AssertionError("the search read a test item")

    def __array__(self, *args, **kwargs):
        raise AssertionError("the search read a test item")


@pytest.fixture()
def union(tiny_cfg) -> SiloData:
    data = pipeline.load_union(tiny_cfg, pipeline.ensure_data(tiny_cfg))
    data.test_items = np.asarray(data.test_items).view(Untouchable)
    return data


def test_the_search_never_reads_the_test_item(tiny_cfg, union):
    # Act: a few trials of each search on data whose test items cannot be read
    neural = tuning.tune_neural(tiny_cfg, union, n_trials=3, seed=0, max_epochs=2)
    als = tuning.tune_als(tiny_cfg, union, n_trials=3, seed=0)

    # Assert: the searches ran, chose on validation (their value is the best trial's validation HR)
    assert len(neural.trials) == 3 and len(als.trials) == 3
    assert neural.best_value == max(t["value"] for t in neural.trials if t["value"] is not None)
    assert 0.0 < neural.best_value <= 1.0 and 0.0 < als.best_value <= 1.0
    assert neural.best_params["model.mlp_layers"] == tuning.MLP_FOR_DIM[neural.best_params["model.embedding_dim"]]
    with pytest.raises(AssertionError, match="read a test item"):  # control: a read would have failed
        union.test_items[0]
    assert union.without_test().test_items is None


def test_the_choice_is_written_into_params_with_comments_kept(tmp_path):
    text = ("model:\n  name: neumf                # gmf | neumf\n  embedding_dim: 32\n  mlp_layers: [64, 32, 16]\n"
            "training:\n  lr: 0.001\n  n_negatives: 4              # per positive\n")

    out = tuning.apply_to_params(text, {"model.name": "gmf", "model.mlp_layers": [128, 64, 32],
                                        "training.n_negatives": 10, "training.lr": 0.0023})

    assert yaml.safe_load(out) == {"model": {"name": "gmf", "embedding_dim": 32, "mlp_layers": [128, 64, 32]},
                                   "training": {"lr": 0.0023, "n_negatives": 10}}
    assert "# gmf | neumf" in out and "# per positive" in out
    with pytest.raises(KeyError, match="training.missing"):
        tuning.apply_to_params(text, {"training.missing": 1})
