"""fedrec.silo.validation: the Great Expectations suite on one silo's interactions."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest

from fedrec.core.errors import SiloValidationError
from fedrec.silo.validation import validate_interactions

CATALOGUE = list(range(1, 21))
NOW = 1_000_000_000  # 2001-09-09
T0 = 880_000_000  # 1997-11


def clean_frame() -> pd.DataFrame:
    """Users 1 and 2, 5 interactions each, all items in the catalogue, plausible times."""
    rows = [(u, i + (u - 1) * 5, 1 + (i % 5), T0 + 60 * i + u) for u in (1, 2) for i in range(1, 6)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).astype("int64")


def run(df: pd.DataFrame, silo: str = "7"):
    return validate_interactions(df, silo, CATALOGUE, min_user_interactions=5, now=NOW)


def test_clean_frame_passes(tmp_path):
    # Execute
    report = run(clean_frame())

    # Assert
    assert report.success
    assert report.failures == []
    assert (report.n_rows, report.n_users) == (10, 2)
    assert report.evaluated == 16  # every expectation of the suite was evaluated
    report.raise_if_failed()  # no exception
    report.save(tmp_path / "v" / "7.json")
    saved = json.loads((tmp_path / "v" / "7.json").read_text())
    assert saved["success"] is True and saved["silo_id"] == "7"


def _corrupt(kind: str) -> pd.DataFrame:
    df = clean_frame()
    if kind == "null_rating":
        df["rating"] = df["rating"].astype("float64")
        df.loc[3, "rating"] = np.nan
    elif kind == "null_item":
        df["item_id"] = df["item_id"].astype("float64")
        df.loc[0, "item_id"] = np.nan
    elif kind == "unknown_item":
        df.loc[2, "item_id"] = 999
    elif kind == "rating_9":
        df.loc[4, "rating"] = 9
    elif kind == "ts_1970":
        df.loc[0, "timestamp"] = 0
    elif kind == "ts_negative":
        df.loc[0, "timestamp"] = -86_400
    elif kind == "null_user":
        df["user_id"] = df["user_id"].astype("float64")
        df.loc[5, "user_id"] = np.nan
    elif kind == "string_rating":
        df["rating"] = df["rating"].astype(str)
    elif kind == "ts_future":
        df.loc[0, "timestamp"] = NOW + 86_400
    elif kind == "duplicate":
        df = pd.concat([df, df.iloc[[1]]], ignore_index=True)
    elif kind == "empty":
        df = df.iloc[:0]
    elif kind == "too_few":
        df = df[~((df["user_id"] == 2) & (df["item_id"] > 7))].reset_index(drop=True)  # user 2 keeps 2 rows
    elif kind == "float_user":
        df["user_id"] = df["user_id"].astype("float64")
    elif kind == "missing_column":
        df = df.drop(columns=["timestamp"])
    return df


# kind -> (expectation type, column) that must be among the failures
CASES = {
    "null_rating": ("expect_column_values_to_not_be_null", "rating"),
    "null_item": ("expect_column_values_to_not_be_null", "item_id"),
    "unknown_item": ("expect_column_values_to_be_in_set", "item_id"),
    "rating_9": ("expect_column_values_to_be_between", "rating"),
    "ts_1970": ("expect_column_values_to_be_between", "timestamp"),
    "ts_future": ("expect_column_values_to_be_between", "timestamp"),
    "ts_negative": ("expect_column_values_to_be_between", "timestamp"),
    "null_user": ("expect_column_values_to_not_be_null", "user_id"),
    "string_rating": ("expect_column_values_to_be_in_type_list", "rating"),
    "duplicate": ("expect_compound_columns_to_be_unique", None),
    "empty": ("expect_table_row_count_to_be_between", None),
    "too_few": ("expect_column_min_to_be_between", "user_interaction_count"),
    "float_user": ("expect_column_values_to_be_in_type_list", "user_id"),
    "missing_column": ("expect_table_columns_to_match_set", None),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_data_fails_naming_silo_and_expectation(kind):
    # Prepare
    expectation, column = CASES[kind]

    # Execute
    report = run(_corrupt(kind), silo="east")

    # Assert
    assert not report.success
    assert (expectation, column) in {(f["expectation"], f["column"]) for f in report.failures}
    with pytest.raises(SiloValidationError) as info:
        report.raise_if_failed()
    assert info.value.silo_id == "east"
    message = str(info.value)
    assert "silo 'east' failed data validation" in message
    assert f"{expectation}({column or ''})" in message


@pytest.mark.parametrize("kind, value", [("rating_9", "9"), ("unknown_item", "999"), ("ts_future", str(NOW + 86_400))])
def test_single_fault_is_the_only_failure_and_its_value_stays_out_of_the_report(kind, value):
    report = run(_corrupt(kind))

    assert len(report.failures) == 1
    assert report.failures[0]["detail"].startswith("1 unexpected value(s) (")
    # the offending row's value is raw data: counts and names only may leave the silo
    assert value not in json.dumps(dataclasses.asdict(report))
    assert value not in " ".join(report.summary())


def test_too_few_interactions_reports_the_observed_minimum():
    report = run(_corrupt("too_few"))

    assert len(report.failures) == 1
    # GE hands back a numpy scalar; its repr is np.int64(2) under numpy 2
    assert re.fullmatch(r"observed (np\.int64\()?2\)?", report.failures[0]["detail"])


def test_empty_frame_reports_zero_rows():
    report = run(_corrupt("empty"))

    assert (report.n_rows, report.n_users) == (0, 0)
    assert "observed 0" in " ".join(report.summary())


def test_now_defaults_to_wall_clock():
    df = clean_frame()
    df.loc[0, "timestamp"] = 4_000_000_000  # year 2096

    report = validate_interactions(df, "s", CATALOGUE, 5)

    assert [f["column"] for f in report.failures] == ["timestamp"]


@pytest.mark.slow
def test_a_child_process_gives_the_same_verdicts_and_is_gone_after_the_last(monkeypatch):
    """Silo hosts validate in a child process (GE never loaded in the long-lived host): the same reports, one child
    for validations that follow each other, and no child once none has come for LINGER_S."""
    import time

    from fedrec.silo import validation

    monkeypatch.setattr(validation._Child, "LINGER_S", 0.5)
    frames = [clean_frame(), _corrupt("rating_9")]

    reports = [validate_interactions(f, "7", CATALOGUE, 5, now=NOW, in_child=True) for f in frames]
    pool = validation.GE_CHILD._pool
    again = validate_interactions(clean_frame(), "7", CATALOGUE, 5, now=NOW, in_child=True)
    same_child = validation.GE_CHILD._pool is pool and pool is not None
    time.sleep(1.5)

    assert [dataclasses.asdict(r) for r in reports] == [dataclasses.asdict(run(f)) for f in frames]
    assert reports[0].success and not reports[1].success and again == reports[0]
    assert same_child
    assert validation.GE_CHILD._pool is None


def test_the_input_digest_changes_with_rows_order_dtypes_catalogue_settings_and_suite(tmp_path):
    from fedrec.silo.validation import SUITE_PATH, input_digest

    df = clean_frame()
    suite = tmp_path / "suite.json"
    suite.write_text(SUITE_PATH.read_text() + "\n")
    one_value = df.copy()
    one_value.loc[4, "rating"] = 4 if df.loc[4, "rating"] != 4 else 3

    base = input_digest(df, CATALOGUE, 5)
    variants = [input_digest(one_value, CATALOGUE, 5), input_digest(df.iloc[::-1], CATALOGUE, 5),
                input_digest(df.astype({"rating": "float64"}), CATALOGUE, 5),
                input_digest(df.rename(columns={"rating": "stars"}), CATALOGUE, 5),
                input_digest(df, CATALOGUE[:-1], 5), input_digest(df, CATALOGUE, 6), input_digest(df, CATALOGUE, 5, suite)]

    assert base == input_digest(clean_frame(), list(CATALOGUE), 5)
    assert None not in variants and len({base, *variants}) == 1 + len(variants)


def test_a_saved_verdict_is_taken_only_when_it_passed_on_the_same_input(tmp_path):
    from fedrec.silo.validation import input_digest, saved_verdict

    passed, failed = run(clean_frame()), run(_corrupt("rating_9"))
    digest = input_digest(clean_frame(), CATALOGUE, 5)
    passed.save(tmp_path / "ok.json", digest)
    failed.save(tmp_path / "bad.json", digest)
    (tmp_path / "junk.json").write_text("{not json")

    assert saved_verdict(tmp_path / "ok.json", digest) == passed
    assert saved_verdict(tmp_path / "ok.json", input_digest(clean_frame(), CATALOGUE, 6)) is None
    assert saved_verdict(tmp_path / "bad.json", digest) is None  # a failed verdict is never taken again
    assert saved_verdict(tmp_path / "junk.json", digest) is None and saved_verdict(tmp_path / "none.json", digest) is None
