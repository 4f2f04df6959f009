"""fedrec.silo.source: a silo's interactions from its own SQL database (real SQLite files, a real PostgreSQL 15 server
started by the test, a real federated run on the Prefect harness), snapshotted into its Parquet data."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from fedrec.core.config import from_dict
from fedrec.silo import data as pipeline
from fedrec.silo.data import demo_source, write_demo_databases
from fedrec.silo.source import (
    SourceColumnError,
    SourceError,
    SourceQueryError,
    SourceTableError,
    SourceUnavailableError,
    read_only_engine,
    snapshot,
)
from fedrec.wire.exchange import run_exchange, update_key

from conftest import make_tiny_params

ORDER = ["user_id", "timestamp", "item_id", "rating"]
INT64 = {c: np.dtype("int64") for c in ("user_id", "item_id", "rating", "timestamp")}


def _cfg(params: dict, **silo):
    return from_dict(params | {"silo": silo})


def _parquet(cfg, silo_id: str) -> Path:
    """The silo's base data: its snapshot (silo.source set) or its partition file."""
    return pipeline.silo_base_file(cfg, silo_id)


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["user_id", "item_id", "rating", "timestamp"]].sort_values(ORDER, kind="stable").reset_index(drop=True)


@pytest.fixture()
def demo(tmp_path, tiny_params):
    """The tiny demo silos partitioned, each also written into <tmp>/db/<silo>.sqlite; the originals in memory."""
    cfg = from_dict(tiny_params)
    write_demo_databases(cfg, tmp_path / "db")
    originals = {s: pd.read_parquet(_parquet(cfg, s)) for s in pipeline.ensure_partitioned(cfg)}
    return tiny_params, tmp_path / "db", originals


# --- SQLite ------------------------------------------------------------------------------------------------


def test_snapshot_roundtrip_equals_the_partition(demo):
    # Prepare: the silos' Parquet data removed; only the databases hold the rows
    params, db, originals = demo
    cfg = _cfg(params, source=demo_source(db))
    shutil.rmtree(pipeline.Paths.of(cfg).silos / "0")

    # Execute
    written = {s: snapshot(cfg, s) for s in originals}

    # Assert: same rows, same dtypes, same data version as the partition wrote; canonical order; no temp files
    for silo_id, original in originals.items():
        assert written[silo_id] == _parquet(cfg, silo_id)
        snap = pd.read_parquet(written[silo_id])
        assert snap.dtypes.to_dict() == original.dtypes.to_dict() == INT64
        pd.testing.assert_frame_equal(snap, _canonical(original))
        assert pipeline.data_version(snap) == pipeline.data_version(original)
        assert not [p for p in written[silo_id].parent.iterdir() if p.name.endswith(".tmp")]
    # an unchanged table gives a byte-identical snapshot (DVC sees no change)
    before = _parquet(cfg, "1").read_bytes()
    snapshot(cfg, "1")
    assert _parquet(cfg, "1").read_bytes() == before


def test_snapshot_follows_the_database(demo):
    # Prepare: the database changes after the partition (rows deleted, one rating edited)
    params, db, originals = demo
    cfg = _cfg(params, source=demo_source(db))
    engine = sa.create_engine(f"sqlite:///{db / '2.sqlite'}")
    gone = int(originals["2"]["user_id"].iloc[0])
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM interactions WHERE user_id = :u"), {"u": gone})
        conn.execute(sa.text("UPDATE interactions SET rating = 1"))
    engine.dispose()

    # Execute: the way a training run reads a silo
    frame = pipeline.silo_interactions(cfg, "2", refresh=True)

    # Assert
    expected = originals["2"][originals["2"]["user_id"] != gone].assign(rating=1)
    pd.testing.assert_frame_equal(frame, _canonical(expected))
    pd.testing.assert_frame_equal(pd.read_parquet(_parquet(cfg, "2")), frame)


def test_column_mapping_table_and_query(tmp_path, tiny_params):
    # Prepare: one shared database with the operator's own names: customer, film, stars (REAL, a half star),
    # watched_at (ISO text that SQLite hands back as a string), plus columns the silo does not map
    rows = pd.DataFrame({"site": ["a", "a", "b", "a", "b"], "customer": [3, 3, 4, 1, 9],
                         "film": [10, 11, 10, 12, 13], "stars": [4.5, 3.0, 5.0, 2.0, 1.0],
                         "watched_at": [888_000_100, 888_000_000, 888_000_050, 888_000_200, 888_000_300],
                         "note": ["x", "y", "z", "w", "v"]})
    path = tmp_path / "shop.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    rows.to_sql("Watch Log", engine, index=False)  # a name that needs quoting
    rows.to_sql("events_a", engine, index=False)
    engine.dispose()
    mapping = dict(user_column="customer", item_column="film", rating_column="stars", timestamp_column="watched_at")

    # Execute
    by_table = pd.read_parquet(snapshot(_cfg(tiny_params, source=f"sqlite:///{path}", table="Watch Log", **mapping),
                                        "a"))
    by_silo_table = pd.read_parquet(snapshot(_cfg(tiny_params, source=f"sqlite:///{path}", table="events_{silo}",
                                                  **mapping), "a"))
    by_query = pd.read_parquet(snapshot(_cfg(
        tiny_params, source=f"sqlite:///{path}", **mapping,
        query="SELECT customer, film, stars, watched_at FROM \"Watch Log\" WHERE site = '{silo}' AND stars > 1"),
        "a"))

    # Assert: mapped names, int64 ids and times, the half star kept (float64), the query's filter applied
    assert list(by_table.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert by_table.dtypes.to_dict() == INT64 | {"rating": np.dtype("float64")}
    assert by_table[["user_id", "item_id"]].values.tolist() == [[1, 12], [3, 11], [3, 10], [4, 10], [9, 13]]
    assert by_table["rating"].tolist() == [2.0, 3.0, 4.5, 5.0, 1.0]
    pd.testing.assert_frame_equal(by_silo_table, by_table)
    assert by_query[["user_id", "item_id", "timestamp"]].values.tolist() == [[1, 12, 888_000_200],
                                                                            [3, 11, 888_000_000],
                                                                            [3, 10, 888_000_100]]


def test_nulls_and_integral_reals_keep_the_validation_suite_in_charge(tmp_path, tiny_params):
    # Prepare: ratings stored as REAL but whole; one NULL timestamp
    path = tmp_path / "0.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE interactions (user_id INTEGER, item_id INTEGER, rating REAL, timestamp "
                             "INTEGER)"))
        conn.execute(sa.text("INSERT INTO interactions VALUES (1, 2, 4.0, 888000000), (1, 3, 5.0, NULL)"))
    engine.dispose()

    # Execute
    frame = pd.read_parquet(snapshot(_cfg(tiny_params, source=f"sqlite:///{tmp_path}/{{silo}}.sqlite"), "0"))

    # Assert: whole REALs become int64 like the partition's; the NULL stays visible (NaN) for the suite to count
    assert frame["rating"].dtype == np.int64 and frame["rating"].tolist() == [4, 5]
    assert frame["timestamp"].dtype == np.float64 and frame["timestamp"].isna().sum() == 1


def _bad_sources(db: Path) -> dict[str, tuple[dict, type, list[str]]]:
    good = demo_source(db)
    return {
        "missing file": (dict(source=f"sqlite:///{db}/nowhere-{{silo}}.sqlite"), SourceUnavailableError,
                         [f"{db}/nowhere-0.sqlite does not exist"]),
        "missing table": (dict(source=good, table="ratings"), SourceTableError,
                          ["table 'ratings' (silo.table) does not exist", "tables present: interactions"]),
        "wrong column": (dict(source=good, rating_column="stars"), SourceColumnError,
                         ["no column 'stars' (silo.rating_column)",
                          "columns present: user_id, item_id, rating, timestamp"]),
        "query on a missing table": (dict(source=good, query="SELECT * FROM ratings_{silo}"), SourceTableError,
                                     ["silo.query failed: no such table: ratings_0"]),
        "query without a mapped column": (dict(source=good, query="SELECT user_id, item_id, rating FROM interactions"),
                                          SourceColumnError, ["silo.query has no column 'timestamp'"]),
        "query on a missing column": (dict(source=good, query="SELECT stars FROM interactions"), SourceColumnError,
                                      ["no such column: stars"]),
        "not a number": (dict(source=good, query="SELECT user_id, item_id, 'five' || rating AS rating, timestamp "
                                                 "FROM interactions"), SourceColumnError,
                         ["column rating (silo.rating_column) holds values that are not numbers"]),
        "a query that writes": (dict(source=good, query="DELETE FROM interactions"), SourceQueryError,
                                ["silo.query must be a SELECT (or WITH ... SELECT), not 'DELETE': refused before it "
                                 "ran"]),
    }


@pytest.mark.parametrize("case", list(_bad_sources(Path("x"))))
def test_a_bad_source_is_a_named_error_and_keeps_the_previous_snapshot(demo, case):
    # Prepare: a good snapshot first
    params, db, _ = demo
    good = _cfg(params, source=demo_source(db))
    snapshot(good, "0")
    before = _parquet(good, "0").read_bytes()
    silo, error, phrases = _bad_sources(db)[case]

    # Execute
    with pytest.raises(error) as raised:
        snapshot(_cfg(params, **silo), "0")

    # Assert: which silo, which database, what is wrong; the previous snapshot untouched, no temp file left
    message = str(raised.value)
    assert isinstance(raised.value, SourceError) and raised.value.silo_id == "0"
    assert message.startswith(f"silo '0': sqlite:///{db}/")
    for phrase in phrases:
        assert phrase in message
    assert "five" not in message  # never a value from a row
    assert _parquet(good, "0").read_bytes() == before
    assert not [p for p in _parquet(good, "0").parent.iterdir() if p.name.endswith(".tmp")]
    assert not any(db.glob("nowhere*"))  # SQLite did not create the missing file
    if case == "a query that writes":  # the database is opened read-only
        with sa.create_engine(f"sqlite:///{db}/0.sqlite").connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM interactions")).scalar() == len(demo[2]["0"])


#: statements that are not one read-only SELECT, and what the refusal names (issue #17, item 8)
NOT_ONE_SELECT = {
    "ATTACH DATABASE '{out}/attached.db' AS x": "not 'ATTACH'",
    "SELECT * FROM interactions; ATTACH DATABASE '{out}/attached.db' AS x": "exactly one SELECT, not 2 statements",
    "PRAGMA query_only = OFF": "not 'PRAGMA'",
    "INSERT INTO interactions VALUES (1, 2, 3, 4)": "not 'INSERT'",
    "UPDATE interactions SET rating = 1": "not 'UPDATE'",
    "CREATE TABLE copied AS SELECT * FROM interactions": "not 'CREATE'",
    "DROP TABLE interactions": "not 'DROP'",
    "WITH gone AS (DELETE FROM interactions RETURNING *) SELECT * FROM gone": "it holds DELETE",
    "SELECT * INTO copied FROM interactions": "it holds INTO",
    "-- a comment only;": "exactly one SELECT, not 0 statements",
}


@pytest.mark.parametrize("statement", list(NOT_ONE_SELECT))
def test_a_query_that_is_not_one_select_is_refused_before_it_runs(demo, tmp_path, statement):
    # Prepare: a good snapshot first; where an ATTACH would create its database file
    params, db, originals = demo
    snapshot(_cfg(params, source=demo_source(db)), "0")
    before = _parquet(_cfg(params, source=demo_source(db)), "0").read_bytes()
    out = tmp_path / "attach-target"
    out.mkdir()
    query = statement.format(out=out)

    # Execute
    with pytest.raises(SourceQueryError) as raised:
        snapshot(_cfg(params, source=demo_source(db), query=query), "0")

    # Assert: named, which silo and database, what is wrong; it never ran: no file, the table and the snapshot
    # as they were
    assert isinstance(raised.value, SourceError) and raised.value.silo_id == "0"
    assert str(raised.value).startswith(f"silo '0': sqlite:///{db}/0.sqlite: silo.query must be ")
    assert NOT_ONE_SELECT[statement] in str(raised.value) and "refused before it ran" in str(raised.value)
    assert list(out.iterdir()) == []
    with sa.create_engine(f"sqlite:///{db}/0.sqlite").connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM interactions")).scalar() == len(originals["0"])
        assert sa.inspect(conn).get_table_names() == ["interactions"]
    assert _parquet(_cfg(params, source=demo_source(db)), "0").read_bytes() == before


def test_the_sqlite_connection_itself_refuses_writes_attach_and_settings(demo, tmp_path):
    # Prepare: the engine a snapshot reads through, used directly (as if a statement got past the check)
    params, db, originals = demo
    url = sa.engine.make_url(demo_source(db).replace("{silo}", "0"))
    engine = read_only_engine("0", url, _shown(str(url)))
    refused = {}

    # Execute
    with engine.connect() as conn:
        for statement in ("INSERT INTO interactions VALUES (1, 2, 3, 4)", "DELETE FROM interactions",
                          f"ATTACH DATABASE '{tmp_path / 'attached.db'}' AS x", "PRAGMA query_only = OFF",
                          "CREATE TEMP TABLE t (a)"):
            with pytest.raises(sa.exc.DBAPIError) as raised:
                conn.execute(sa.text(statement))
            refused[statement.split()[0]] = str(raised.value.orig)
        rows = conn.execute(sa.text("SELECT count(*) FROM interactions")).scalar()
        read_only = conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()

    # Assert: each refused by SQLite (not by fedrec's check), reading still works, nothing changed or created
    assert refused == {"INSERT": "not authorized", "DELETE": "not authorized", "ATTACH": "not authorized",
                       "PRAGMA": "not authorized", "CREATE": "not authorized"}
    assert rows == len(originals["0"]) and read_only
    assert not (tmp_path / "attached.db").exists()
    with sa.create_engine(f"sqlite:///{db}/0.sqlite").connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM interactions")).scalar() == len(originals["0"])


def test_a_source_that_is_not_a_url_is_named_without_quoting_it(tiny_params):
    with pytest.raises(SourceError, match="silo.source: not a database URL") as raised:
        snapshot(_cfg(tiny_params, source="host=db password=hunter2"), "0")
    assert "hunter2" not in str(raised.value)


def test_demo_db_command(tmp_path, params_file, tiny_params, monkeypatch):
    # Prepare
    from fedrec.cli.app import app

    monkeypatch.chdir(tmp_path)

    # Execute: a relative --out-dir and a column mapping
    result = CliRunner().invoke(app, ["demo-db", "--out-dir", "db", "--params", str(params_file),
                                      "-S", "silo.user_column=customer", "-S", "silo.table=ratings"])

    # Assert: one SQLite file per silo, the mapping's names, the source printed (relative, as given) and how to use it
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "sqlite:///db/{silo}.sqlite"
    assert "fedrec run -S silo.source=sqlite:///db/{silo}.sqlite" in result.stderr
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == ["0.sqlite", "1.sqlite", "2.sqlite"]
    columns = sa.inspect(sa.create_engine(f"sqlite:///{tmp_path / 'db' / '1.sqlite'}")).get_columns("ratings")
    assert [c["name"] for c in columns] == ["customer", "item_id", "rating", "timestamp"]
    cfg = _cfg(tiny_params, source=result.stdout.strip(), table="ratings", user_column="customer")
    original = pd.read_parquet(_parquet(from_dict(tiny_params), "1"))  # the partition it was written from
    pd.testing.assert_frame_equal(pd.read_parquet(snapshot(cfg, "1")), _canonical(original))


def test_demo_db_command_names_a_bad_config(tmp_path, params_file):
    from fedrec.cli.app import app

    result = CliRunner().invoke(app, ["demo-db", "--out-dir", str(tmp_path / "db"), "--params", str(params_file),
                                      "-S", "silo.tabel=x"])
    assert result.exit_code == 2 and "silo.tabel" in result.output
    assert not (tmp_path / "db").exists()


# --- PostgreSQL 15, a real server started here ---------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or shutil.which(name, path="/usr/local/bin")
    return found or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server listening on a Unix socket in a temp dir only (no TCP); as root, its
    binaries run as ``nobody`` (postgres refuses root). Yields the socket dir; the server and dir are gone after."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin: "
                    "the PostgreSQL source test needs them (the SQLite tests ran)")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="fedrec-pg-", dir="/tmp"))  # short: a socket path has ~100 characters
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "nobody", "--"]
        shutil.chown(base, "nobody")
    run = dict(check=True, capture_output=True, timeout=60, cwd=base)
    try:
        subprocess.run(as_user + [initdb, "-D", str(base / "data"), "-U", "fedrec", "--auth=trust", "-E", "UTF8",
                                  "--no-sync", "--no-instructions"], **run)
        subprocess.run(as_user + [pg_ctl, "-D", str(base / "data"), "-l", str(base / "server.log"), "-w", "-o",
                                  f"-k {base} -c listen_addresses='' -F", "start"], **run)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.decode(errors='replace')}") from exc
    try:
        yield base
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(base / "data"), "-m", "immediate", "stop"], capture_output=True,
                       timeout=60, cwd=base)
        shutil.rmtree(base, ignore_errors=True)


def _shown(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def test_postgres_source(postgres, tiny_params, tmp_path):
    # Prepare: native types (BIGINT ids, SMALLINT stars, TIMESTAMPTZ), a schema, a second silo's table, and a text
    # column whose value must never reach an error message
    url = f"postgresql://fedrec:s3cret-pw@/postgres?host={postgres}"
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA IF EXISTS clinic CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA clinic"))
        conn.execute(sa.text("CREATE TABLE clinic.visits (patient BIGINT, item INTEGER, stars SMALLINT, "
                             "seen_at TIMESTAMPTZ, remark TEXT, silo TEXT)"))
        conn.execute(sa.text("INSERT INTO clinic.visits VALUES "
                             "(7, 1, 5, to_timestamp(888000000), 'private-remark', '0'), "
                             "(7, 2, 3, to_timestamp(888000060), 'x', '0'), "
                             "(2, 1, 4, to_timestamp(887000000), 'y', '0'), "
                             "(5, 5, 1, to_timestamp(889000000), 'z', '1')"))
    engine.dispose()
    silo = dict(source=url, table="clinic.visits", user_column="patient", item_column="item", rating_column="stars",
                timestamp_column="seen_at")

    # Execute
    by_table = pd.read_parquet(snapshot(_cfg(tiny_params, **silo), "0"))
    by_query = pd.read_parquet(snapshot(_cfg(tiny_params, **silo | {
        "query": "SELECT patient, item, stars, extract(epoch FROM seen_at)::bigint AS seen_at "
                 "FROM clinic.visits WHERE silo = '{silo}'"}), "1"))

    # Assert: int64 throughout, a TIMESTAMPTZ as Unix seconds, rows in canonical order
    assert by_table.dtypes.to_dict() == INT64
    assert by_table.values.tolist() == [[2, 1, 4, 887000000], [5, 5, 1, 889000000], [7, 1, 5, 888000000],
                                        [7, 2, 3, 888000060]]
    assert by_query.dtypes.to_dict() == INT64 and by_query.values.tolist() == [[5, 5, 1, 889000000]]

    # Execute + Assert: the named errors, password hidden, no row value in any message
    cases = {
        SourceTableError: [silo | {"table": "clinic.nothing"}, "table 'clinic.nothing' (silo.table) does not exist",
                           silo | {"query": "SELECT * FROM clinic.nothing"},
                           'relation "clinic.nothing" does not exist'],
        SourceColumnError: [silo | {"item_column": "film"}, "no column 'film' (silo.item_column); columns present: "
                                                            "patient, item, stars, seen_at, remark, silo",
                            silo | {"query": "SELECT film FROM clinic.visits"}, 'column "film" does not exist'],
    }
    for error, (table_case, table_phrase, query_case, query_phrase) in cases.items():
        for case, phrase in ((table_case, table_phrase), (query_case, query_phrase)):
            with pytest.raises(error) as raised:
                snapshot(_cfg(tiny_params, **case), "0")
            assert phrase in str(raised.value)
            assert str(raised.value).startswith(f"silo '0': {_shown(url)}: ")
            assert "s3cret-pw" not in str(raised.value) and "fedrec:***@" in str(raised.value)
    with pytest.raises(SourceTableError) as raised:  # a data error (22P02) quotes the value: not passed on
        snapshot(_cfg(tiny_params, **silo | {"query": "SELECT patient, item, stars, remark::int AS seen_at "
                                                       "FROM clinic.visits"}), "0")
    assert "private-remark" not in str(raised.value) and "SQLSTATE 22P02" in str(raised.value)
    with pytest.raises(SourceQueryError, match="must be a SELECT .*, not 'SET': refused before it ran"):
        snapshot(_cfg(tiny_params, **silo | {"query": "SET search_path TO clinic"}), "0")
    with pytest.raises(SourceQueryError, match="not 'DELETE': refused before it ran"):  # a snapshot never writes
        snapshot(_cfg(tiny_params, **silo | {"query": "DELETE FROM clinic.visits RETURNING *"}), "0")
    # a write past the check: the server refuses it (the session's and the transaction's default is read-only)
    engine = read_only_engine("0", sa.engine.make_url(url), _shown(url))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW default_transaction_read_only")).scalar() == "on"
        with pytest.raises(sa.exc.DBAPIError, match="read-only transaction") as raised:
            conn.execute(sa.text("DELETE FROM clinic.visits"))
        assert raised.value.orig.sqlstate == "25006"
    with engine.connect() as conn:  # a later transaction of the same engine too
        with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
            conn.execute(sa.text("CREATE TABLE clinic.copied AS SELECT * FROM clinic.visits"))
    engine.dispose()
    with sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://")).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM clinic.visits")).scalar() == 4
        assert sa.inspect(conn).get_table_names(schema="clinic") == ["visits"]
    down = tmp_path / "no-server"
    down.mkdir()
    with pytest.raises(SourceUnavailableError) as raised:  # the database is down
        snapshot(_cfg(tiny_params, **silo | {"source": url.replace(str(postgres), str(down))}), "0")
    assert "cannot connect" in str(raised.value) and "s3cret-pw" not in str(raised.value)
    assert str(raised.value).startswith(f"silo '0': {_shown(url.replace(str(postgres), str(down)))}: ")
    # every failure left the last good snapshot as it was
    assert pd.read_parquet(_parquet(_cfg(tiny_params, **silo), "0")).values.tolist() == by_table.values.tolist()


# --- a federated run ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_federated_run_leaves_out_a_silo_whose_database_is_broken(prefect_harness, tmp_path):
    # Prepare: every silo in its own SQLite database; silo 1's has no `interactions` table (renamed), silo 0's lost
    # a user after the partition
    from fedrec.flows.federated import run_demo

    params = make_tiny_params(tmp_path)
    params["silo"] = {"source": demo_source(tmp_path / "db")}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    cfg = from_dict(params)
    write_demo_databases(cfg, tmp_path / "db")
    snapshot(cfg, "1")  # an earlier run's snapshot of silo 1
    old_1 = _parquet(cfg, "1").read_bytes()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db' / '1.sqlite'}")
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE interactions RENAME TO interactions_old"))
    engine.dispose()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db' / '0.sqlite'}")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM interactions WHERE user_id = (SELECT min(user_id) FROM interactions)"))
        expected_0 = _canonical(pd.read_sql("SELECT * FROM interactions", conn))
    engine.dispose()

    # Execute
    summary = run_demo(params_path=str(path), overrides={"federation.rounds": 1, "federation.min_silos": 2,
                                                         "evaluation.k": 5})

    # Assert: silo 1 left out with its named error; 0 and 2 trained on their databases' rows
    assert summary["silos"] == ["0", "2"] and set(summary["excluded"]) == {"1"}
    why = summary["excluded"]["1"]
    assert "SourceTableError: silo '1': sqlite:///" in why
    assert "table 'interactions' (silo.table) does not exist; tables present: interactions_old" in why
    assert run_exchange(cfg, summary["run_id"]).keys("round-0001/updates") == [
        update_key(1, "0"), update_key(1, "2")]  # both trained and sent an update
    pd.testing.assert_frame_equal(pd.read_parquet(_parquet(cfg, "0")), expected_0)
    assert _parquet(cfg, "1").read_bytes() == old_1
    versions = {s: pipeline.data_version(pd.read_parquet(_parquet(cfg, s))) for s in ("0", "2")}
    assert summary["data_versions"] == versions
    run = mlflow.MlflowClient(cfg.tracking.uri).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["silos_excluded"] == "1"
    assert {k: v for k, v in run.data.tags.items() if k.startswith("data_version.")} == \
        {"data_version.0": versions["0"], "data_version.2": versions["2"]}


# --- one silo's rows per snapshot ------------------------------------------------------------------------------


def test_snapshot_writes_only_each_silos_rows_and_refuses_a_source_every_silo_would_share(demo):
    params, db, originals = demo
    shared = _cfg(params, source=f"sqlite:///{db}/0.sqlite")  # no {silo}: every silo would read silo 0's rows
    with pytest.raises(SourceError, match=r"silos \['0', '1', '2'\] would all read the same rows"):
        pipeline.snapshot_all(shared)
    assert not list(pipeline.Paths.of(shared).snapshots.glob("*/interactions.parquet"))  # nothing written

    # on silo 1's machine: only its snapshot, from its own database, and errors name silo 1
    only = _cfg(params, source=f"sqlite:///{db}/1.sqlite")
    assert pipeline.snapshot_all(only, "1") == ["1"]
    assert [p.parent.name for p in pipeline.Paths.of(only).snapshots.glob("*/interactions.parquet")] == ["1"]
    pd.testing.assert_frame_equal(_canonical(pd.read_parquet(_parquet(only, "1"))), _canonical(originals["1"]),
                                  check_dtype=False)
    with pytest.raises(SourceError, match="^silo '2': "):
        pipeline.snapshot_all(_cfg(params, source=f"sqlite:///{db}/missing.sqlite"), "2")

    # one machine, a source per silo (silo.sources): each snapshot holds that silo's rows and no other's
    per_silo = _cfg(params, sources=[f"{s}=sqlite:///{db}/{s}.sqlite" for s in ("0", "2")])
    assert pipeline.snapshot_all(per_silo) == ["0", "2"]
    for s in ("0", "2"):
        pd.testing.assert_frame_equal(_canonical(pd.read_parquet(_parquet(per_silo, s))), _canonical(originals[s]),
                                      check_dtype=False)


# --- MariaDB (the source article's MySQL), a real server started here -------------------------------------------


@pytest.fixture(scope="module")
def mariadb():
    """A throwaway MariaDB server on a Unix socket in a temp dir (no TCP); as root it runs as ``nobody``. Yields the
    socket path. Debian: apt-get install mariadb-server (CI installs it)."""
    mariadbd, install_db = shutil.which("mariadbd", path="/usr/sbin:/usr/bin"), shutil.which("mariadb-install-db")
    if not (mariadbd and install_db):
        pytest.skip("MariaDB server binaries (mariadbd, mariadb-install-db) not found: apt-get install mariadb-server")
    base = Path(tempfile.mkdtemp(prefix="fedrec-my-", dir="/tmp"))
    user = ["--user=nobody"] if os.geteuid() == 0 else []
    if user:
        shutil.chown(base, "nobody")
    sock = base / "sock"
    subprocess.run([install_db, "--no-defaults", f"--datadir={base / 'data'}", "--auth-root-authentication-method=normal",
                    "--skip-test-db", *user], check=True, capture_output=True, timeout=120)
    server = subprocess.Popen([mariadbd, "--no-defaults", f"--datadir={base / 'data'}", f"--socket={sock}",
                               "--skip-networking", f"--pid-file={base / 'pid'}", *user],
                              stdout=subprocess.DEVNULL, stderr=open(base / "server.log", "wb"))
    try:
        admin = f"mysql+pymysql://root@localhost/?unix_socket={sock}"
        for _ in range(300):
            try:
                with sa.create_engine(admin).connect():
                    break
            except sa.exc.OperationalError:
                if server.poll() is not None:
                    raise RuntimeError((base / "server.log").read_text(errors="replace")[-2000:])
                time.sleep(0.2)
        yield sock
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_mariadb_source(mariadb, tiny_params):
    # Prepare: a database and a read-write owner, native types (BIGINT ids, TINYINT stars, DATETIME), two silos' rows
    admin = sa.create_engine(f"mysql+pymysql://root@localhost/?unix_socket={mariadb}")
    with admin.begin() as conn:
        conn.execute(sa.text("CREATE DATABASE IF NOT EXISTS shop"))
        conn.execute(sa.text("CREATE USER IF NOT EXISTS 'fedrec'@'localhost' IDENTIFIED BY 's3cret-pw'"))
        conn.execute(sa.text("GRANT ALL ON shop.* TO 'fedrec'@'localhost'"))
        conn.execute(sa.text("DROP TABLE IF EXISTS shop.visits"))
        conn.execute(sa.text("CREATE TABLE shop.visits (customer BIGINT, item INT, stars TINYINT, seen_at DATETIME, "
                             "branch VARCHAR(8))"))
        conn.execute(sa.text("INSERT INTO shop.visits VALUES (7, 1, 5, '1998-02-21 16:00:00', '0'), "
                             "(7, 2, 3, '1998-02-21 16:01:00', '0'), (2, 1, 4, '1998-02-10 02:13:20', '0'), "
                             "(5, 5, 1, '1998-03-04 20:26:40', '1')"))
    admin.dispose()
    url = f"mysql://fedrec:s3cret-pw@localhost/shop?unix_socket={mariadb}"
    silo = dict(source=url, query="SELECT * FROM visits WHERE branch = '{silo}'", user_column="customer",
                item_column="item", rating_column="stars", timestamp_column="seen_at")

    # Execute: silo 0 snapshots through the project's own code path (the default driver chosen for mysql://)
    path = snapshot(_cfg(tiny_params, **silo), "0")

    # Assert: only silo 0's rows, the Parquet schema, date-times as Unix seconds
    frame = pd.read_parquet(path)
    assert sorted(frame["user_id"]) == [2, 7, 7] and dict(frame.dtypes) == INT64
    assert set(frame["timestamp"]) == {888076800, 888076860, 887076800}
    # the session is read-only: a write through the same engine settings is refused by the server
    engine = read_only_engine("0", sa.engine.make_url(url), _shown(url))
    with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError, match="READ ONLY|read only|1792"):
        conn.execute(sa.text("DELETE FROM visits"))
    engine.dispose()
    # a wrong password is a named error that names the silo and hides the password
    with pytest.raises(SourceUnavailableError) as raised:
        snapshot(_cfg(tiny_params, **silo | {"source": url.replace("s3cret-pw", "wrong")}), "0")
    assert str(raised.value).startswith("silo '0': ") and "wrong" not in str(raised.value)
