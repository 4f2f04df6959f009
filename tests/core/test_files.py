"""Bring your own data (data.source: files): the example layout loads as written, the column mapping is honoured,
and each way the files can disagree is a named error that says where and how many."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedrec.core.config import from_dict
from fedrec.core.data.files import DataFilesError, load, write_example
from fedrec.core.errors import DataNotFoundError


@pytest.fixture()
def example(tmp_path, monkeypatch):
    rows = write_example(tmp_path, n_silos=3)
    monkeypatch.chdir(tmp_path)  # the params' paths are relative, as the quickstart writes them
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["data"]["work_dir"] = str(tmp_path / "data")
    return tmp_path, raw, rows


def _cfg(raw: dict, **files):
    raw = {**raw, "data": {**raw["data"], "files": {**raw["data"]["files"], **files}}}
    return from_dict(raw)


def test_the_example_loads_with_its_mapping_and_every_user_in_its_own_silo(example):
    path, raw, rows = example
    data = load(_cfg(raw))

    assert set(data.users["silo_id"]) == {"shop-a", "shop-b", "shop-c"}
    assert len(data.interactions) == sum(rows.values())
    shop_a = pd.read_csv(path / "interactions" / "shop-a.csv")
    assert set(data.users.loc[data.users["silo_id"] == "shop-a", "user_id"]) == set(shop_a["customer"])
    # ISO date-times became Unix seconds; the catalogue kept its own (non-dense) ids and its free text
    first = shop_a.iloc[0]
    row = data.interactions[(data.interactions["user_id"] == first["customer"])
                            & (data.interactions["item_id"] == first["product_id"])]
    assert row["timestamp"].iloc[0] == int(pd.Timestamp(first["ts"]).timestamp())
    assert data.items["item_id"].min() == 1001 and "description" in data.items.columns
    assert data.items["genres"].map(len).eq(1).all()
    assert data.interactions.dtypes.astype(str).tolist() == ["int64"] * 4


def test_one_file_with_a_silo_column_implicit_feedback_and_row_order_times(example, tmp_path):
    path, raw, _ = example
    frames = [pd.read_csv(p).assign(branch=p.stem) for p in sorted((path / "interactions").glob("*.csv"))]
    pd.concat(frames).drop(columns=["stars", "ts"]).to_parquet(tmp_path / "all.parquet")
    data = load(_cfg(raw, interactions=str(tmp_path / "all.parquet"), silo_column="branch", rating_column="",
                     timestamp_column=""))

    assert set(data.users["silo_id"]) == {"shop-a", "shop-b", "shop-c"}
    assert (data.interactions["rating"] == 1).all()
    assert data.interactions["timestamp"].is_monotonic_increasing


@pytest.mark.parametrize("break_it, error, words", [
    (lambda p: pd.read_csv(p / "catalogue.csv").rename(columns={"name": "label"}).to_csv(p / "catalogue.csv"),
     DataFilesError, ["missing column", "'name'", "title_column", "label"]),
    (lambda p: pd.concat([pd.read_csv(p / "catalogue.csv")] * 2).to_csv(p / "catalogue.csv", index=False),
     DataFilesError, ["120 item id(s) appear more than once", "1001"]),
    (lambda p: pd.read_csv(p / "catalogue.csv").iloc[1:].to_csv(p / "catalogue.csv", index=False),
     DataFilesError, ["lacks", "1001", "per silo"]),
    (lambda p: pd.read_csv(p / "interactions" / "shop-a.csv").head(40).to_csv(p / "interactions" / "shop-b.csv",
                                                                               index=False),
     DataFilesError, ["more than one silo"]),
    (lambda p: pd.read_csv(p / "interactions" / "shop-a.csv").assign(customer="anna")
     .to_csv(p / "interactions" / "shop-a.csv", index=False),
     DataFilesError, ["'customer' must hold integer ids", "anna"]),
    (lambda p: (p / "catalogue.csv").unlink(), DataNotFoundError, ["catalogue.csv does not exist"]),
])
def test_files_that_disagree_are_named_errors(example, break_it, error, words):
    path, raw, _ = example
    break_it(path)
    with pytest.raises(error) as caught:
        load(_cfg(raw))
    for word in words:
        assert word in str(caught.value)


def test_listed_silos_need_their_files_and_a_pattern_needs_a_match(example):
    _, raw, _ = example
    with pytest.raises(DataNotFoundError, match="shop-z"):
        load(_cfg(raw, silos=["shop-a", "shop-z"]))
    assert set(load(_cfg(raw, silos=["shop-a", "shop-c"])).users["silo_id"]) == {"shop-a", "shop-c"}
    with pytest.raises(DataNotFoundError, match="no file matches"):
        load(_cfg(raw, interactions="elsewhere/{silo}.csv"))


@pytest.mark.slow
def test_the_readme_quickstart_from_an_empty_directory_trains_and_recommends(tmp_path):
    """The README's own-data quickstart, command by command (2 rounds instead of 10 to keep the suite short)."""
    fedrec = str(Path(sys.executable).with_name("fedrec"))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / ".prefect")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("FEDREC_DATA_DIR", None)
    work = tmp_path / "myfed"

    def run(*args: str, cwd: Path = tmp_path) -> str:
        done = subprocess.run([fedrec, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=540)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done.stdout

    run("example-data", str(work))
    run("run", "-S", "federation.rounds=2", cwd=work)
    user = int(pd.read_csv(work / "interactions" / "shop-a.csv")["customer"].iloc[0])
    answer = yaml.safe_load(run("recommend", "--silo", "shop-a", "--user", str(user), "-k", "3", "--json", cwd=work))
    items = set(pd.read_csv(work / "catalogue.csv")["product_id"])
    assert len(answer["items"]) == 3 and all(i["item_id"] in items for i in answer["items"])
