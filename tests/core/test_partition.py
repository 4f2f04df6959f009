"""fedrec.core.data.partition: every user in exactly one silo; region / iid / dirichlet schemes; silo files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedrec.core.config import PartitionConfig, SyntheticConfig
from fedrec.core.data import synthetic
from fedrec.core.data.partition import (
    OTHER_REGION,
    assign_silos,
    list_silos,
    partition_iid,
    partition_region,
    read_catalogue,
    write_catalogue,
    write_silos,
)
from fedrec.core.data.types import Dataset


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return synthetic.generate(SyntheticConfig(n_users=50, n_items=40, interactions_per_user=8, seed=3))


@pytest.mark.parametrize("scheme", ["region", "iid", "dirichlet"])
def test_every_user_in_exactly_one_silo(dataset, scheme):
    # Execute
    assignment = assign_silos(dataset, PartitionConfig(scheme=scheme, n_silos=4, alpha=0.3, seed=1))

    # Assert: index = the active users, each exactly once, every value a string silo id
    active = np.sort(dataset.interactions["user_id"].unique())
    assert assignment.index.is_unique
    assert np.array_equal(assignment.index.to_numpy(), active)
    assert all(isinstance(s, str) for s in assignment)
    if scheme != "region":
        assert set(assignment) <= {"0", "1", "2", "3"}


def test_region_is_first_zip_digit_and_other():
    users = pd.DataFrame({"user_id": [1, 2, 3, 4, 5, 6],
                          "zip_code": ["85711", "94043", "T8H1N", "01002", " 55105", "E2A4H"]})

    silo = partition_region(users)

    assert silo.to_dict() == {1: "8", 2: "9", 3: OTHER_REGION, 4: "0", 5: "5", 6: OTHER_REGION}


def test_region_drops_users_without_interactions():
    users = pd.DataFrame({"user_id": [1, 2, 3], "zip_code": ["10001", "20002", "30003"]})
    interactions = pd.DataFrame({"user_id": [1, 3], "item_id": [1, 1], "rating": [3, 4], "timestamp": [1, 2]},
                                dtype="int64")
    ds = Dataset(interactions, pd.DataFrame({"item_id": [1], "genres": [["Drama"]]}), users)

    assignment = assign_silos(ds, PartitionConfig(scheme="region"))

    assert assignment.to_dict() == {1: "1", 3: "3"}


@pytest.mark.parametrize("n_users, n_silos", [(10, 3), (11, 4), (7, 7), (100, 6)])
def test_iid_sizes_differ_by_at_most_one(n_users, n_silos):
    sizes = partition_iid(np.arange(1, n_users + 1), n_silos, seed=5).value_counts()

    assert len(sizes) == n_silos
    assert sizes.sum() == n_users
    assert sizes.max() - sizes.min() <= 1


def test_iid_is_deterministic_in_seed():
    ids = np.arange(1, 31)
    a, b, c = partition_iid(ids, 3, 0), partition_iid(ids, 3, 0), partition_iid(ids, 3, 1)

    assert a.equals(b)
    assert not a.equals(c)


def test_dirichlet_is_non_iid_with_small_alpha(dataset):
    counts = assign_silos(dataset, PartitionConfig(scheme="dirichlet", n_silos=4, alpha=0.05, seed=0)).value_counts()

    # with alpha -> 0 each genre's users concentrate in one silo, far from equal quarters
    assert counts.max() - counts.min() > 3


def test_write_silos_manifest_counts_add_up(dataset, tmp_path):
    # Prepare
    assignment = assign_silos(dataset, PartitionConfig(scheme="iid", n_silos=3, seed=0))

    # Execute
    manifest = write_silos(dataset, assignment, tmp_path / "silos")

    # Assert
    assert list_silos(tmp_path / "silos") == ["0", "1", "2"]
    assert json.loads((tmp_path / "silos" / "manifest.json").read_text()) == manifest
    assert sum(m["interactions"] for m in manifest.values()) == len(dataset.interactions)
    assert sum(m["users"] for m in manifest.values()) == dataset.interactions["user_id"].nunique()
    seen_users: set[int] = set()
    for silo_id, counts in manifest.items():
        part = pd.read_parquet(tmp_path / "silos" / silo_id / "interactions.parquet")
        assert len(part) == counts["interactions"]
        assert part["user_id"].nunique() == counts["users"]
        assert set(part["user_id"]).isdisjoint(seen_users)
        seen_users |= set(part["user_id"])
        assert (assignment.loc[part["user_id"]] == silo_id).all()
        assert list(part.columns) == ["user_id", "item_id", "rating", "timestamp"]


def test_catalogue_round_trip(dataset, tmp_path):
    write_catalogue(dataset, tmp_path / "catalogue")

    items = read_catalogue(tmp_path / "catalogue")

    assert items["item_id"].tolist() == list(range(1, 41))
    assert [list(g) for g in items["genres"]] == [list(g) for g in dataset.items["genres"]]
