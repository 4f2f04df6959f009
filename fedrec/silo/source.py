"""A silo's interactions from its own SQL database (silo.source), snapshotted into its Parquet data.

``silo.source`` is a SQLAlchemy URL with ``{silo}`` replaced by the silo's id (``sqlite:///data/db/{silo}.sqlite``,
``postgresql://user:password@host:5432/db``, ``mysql://user:password@host/db`` for MariaDB or MySQL; a relative
SQLite path is resolved against the working directory; ``postgresql://`` uses psycopg 3, ``mysql://`` PyMySQL);
``silo.sources`` gives single silos their own URL on one machine. The silo reads ``silo.table`` (``schema.table``
accepted, ``{silo}`` replaced)
or, when set, runs ``silo.query`` (one SELECT, ``{silo}`` replaced), maps ``silo.*_column`` onto user_id, item_id,
rating, timestamp, coerces them to the Parquet schema of the demo partition (int64; a fractional rating stays
float64, a column holding NULLs stays float64 so the validation suite reports it; a date-time timestamp becomes
Unix seconds) and writes them atomically to ``data/snapshots/<silo>/interactions.parquet``: the file the validation,
split and training read, the ``partition`` stage's DVC output and the source of the run's ``data_version`` tag.
Rows are written in a canonical order, so an unchanged table gives a byte-identical snapshot; the file is 0600 in a
0700 directory (the silo's users' rows, :mod:`fedrec.core.fsperm`).

Reading never writes, twice over: ``silo.query`` is checked before it runs (exactly one SELECT or WITH ... SELECT;
ATTACH, PRAGMA, writes, DDL, SELECT INTO and several statements are refused, :class:`SourceQueryError`), and the
database itself refuses writes: SQLite is opened read-only (``mode=ro``, ``PRAGMA query_only``, and an authorizer that
denies ATTACH, settings and writes: ``mode=ro`` alone would still let ATTACH create a file), PostgreSQL sessions
default to read-only transactions (``default_transaction_read_only``) and run in one.

Nothing is written on an error; the previous snapshot stays as it was. Errors are named (:class:`SourceError`
and its subclasses) and say which silo and which URL (password hidden). They travel to the coordinator in the
silo's hello, so they never carry row values: a database message is quoted only when it can name schema objects
alone (a missing table or column, a syntax error); otherwise the silo's own log has it.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.core.config import Config
from fedrec.core.errors import FedrecError
from fedrec.core.fsperm import private_file
from fedrec.silo.paths import silo_base_file
from fedrec.wire.exchange import check_silo_id

log = logging.getLogger(__name__)

#: the interactions' columns and dtypes, as fedrec.core.data.partition.write_silos writes them
COLUMNS = ("user_id", "item_id", "rating", "timestamp")
#: seconds before a PostgreSQL connection attempt gives up (a URL's own ?connect_timeout= wins)
CONNECT_TIMEOUT_S = 10


class SourceError(FedrecError):
    """A silo's database (silo.source) could not be snapshotted; the silo is left out of the round."""

    def __init__(self, silo_id: str, where: str, problem: str):
        self.silo_id, self.where, self.problem = silo_id, where, problem
        super().__init__(f"silo {silo_id!r}: {where}: {problem}")


class SourceUnavailableError(SourceError):
    """The database cannot be reached: server down, wrong host or credentials, SQLite file missing."""


class SourceTableError(SourceError):
    """The table does not exist, or the query failed or returned no rows set."""


class SourceColumnError(SourceError):
    """A mapped column (silo.*_column) is missing from the table or query, or holds values that are not numbers."""


class SourceQueryError(SourceError):
    """silo.query is not exactly one read-only SELECT; refused before it reaches the database."""


def source_url(cfg: Config, silo_id: str):
    """The silo's source (``silo.sources[silo]`` else ``silo.source``) with ``{silo}`` replaced, as a SQLAlchemy
    URL (a named error when it is not one)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(cfg.silo.source_of(silo_id).replace("{silo}", silo_id))
    except (ArgumentError, ValueError):  # the text itself may hold a password: not quoted
        raise SourceError(silo_id, "silo.source", "not a database URL (dialect[+driver]://user:password@host/db, "
                                                  "sqlite:///path/{silo}.sqlite)") from None


def snapshot(cfg: Config, silo_id: str) -> Path:
    """Read the silo's rows from ``cfg.silo.source`` and write them atomically to
    data/snapshots/<silo>/interactions.parquet (the silo's Parquet data). Returns that path."""
    url = source_url(cfg, check_silo_id(silo_id))  # the id goes into the URL and the snapshot's path
    frame = read_interactions(cfg, silo_id, url)
    target = silo_base_file(cfg, silo_id)
    write_atomically(frame, target)
    log.info("silo %s: snapshot of %d rows from %s -> %s", silo_id, len(frame),
             url.render_as_string(hide_password=True), target)
    return target


def write_atomically(frame: pd.DataFrame, target: Path) -> None:
    """Parquet into a temp file beside ``target`` (0600), then renamed over it: readers see the old or the new file.
    The directory is made 0700: the silo's users' rows."""
    with private_file(target) as fh:
        frame.to_parquet(fh, index=False)


def read_interactions(cfg: Config, silo_id: str, url=None) -> pd.DataFrame:
    """The silo's rows from its database: mapped, coerced to the Parquet schema, in canonical order."""
    import sqlalchemy as sa

    url = source_url(cfg, silo_id) if url is None else url
    shown = url.render_as_string(hide_password=True)
    if cfg.silo.query:  # before anything connects: a refused statement never reaches the database
        check_query(cfg.silo.query.replace("{silo}", silo_id), silo_id, shown)
    engine = read_only_engine(silo_id, url, shown)
    try:
        try:
            conn = engine.connect()
        except sa.exc.DBAPIError as exc:
            raise SourceUnavailableError(silo_id, shown, "cannot connect: " + _db_message(exc, url, always=True)) \
                from None
        with conn:  # closed without a commit: whatever a query did is rolled back
            if cfg.silo.query:
                raw = _run_query(conn, cfg, silo_id, shown, url)
            else:
                raw = _read_table(conn, cfg, silo_id, shown, url)
    finally:
        engine.dispose()
    return coerce(raw, silo_id, shown)


def read_only_engine(silo_id: str, url, shown: str):
    """A SQLAlchemy engine on the silo's database that cannot write: SQLite opened ``mode=ro`` with ``PRAGMA
    query_only`` and :func:`_read_only_authorizer`; PostgreSQL and MariaDB/MySQL with read-only sessions and
    transactions. A missing
    SQLite file is a :class:`SourceUnavailableError` (sqlite3 would create an empty database)."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    backend = url.get_backend_name()
    connect_args: dict = {}
    options: dict = {}
    creator: dict = {}
    if backend == "sqlite":
        creator["creator"] = _sqlite_read_only(silo_id, url, shown)
        url = url.set(query={})  # the creator opens the file; the URL names the dialect only
    elif backend == "postgresql":
        if url.drivername == "postgresql":  # the driver this project installs (psycopg 3), not psycopg2
            url = url.set(drivername="postgresql+psycopg")
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        # every transaction of the session read-only (the server refuses writes), the snapshot's own one too
        given = url.query.get("options", "")
        given = " ".join(given) if isinstance(given, tuple) else given
        connect_args["options"] = f"{given} -c default_transaction_read_only=on".strip()
        options["postgresql_readonly"] = True
    elif backend in ("mysql", "mariadb"):
        if "+" not in url.drivername:  # the driver this project tests (PyMySQL, pure Python: pip install '.[mysql]')
            url = url.set(drivername=f"{backend}+pymysql")
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        # the session's transactions read-only: the server refuses writes (ERROR 1792), the snapshot's own one too
        connect_args["init_command"] = "SET SESSION TRANSACTION READ ONLY"
    try:
        return sa.create_engine(url, poolclass=NullPool, connect_args=connect_args, execution_options=options,
                                **creator)
    except ImportError as exc:
        raise SourceUnavailableError(silo_id, shown, f"the database driver is not installed ({exc.name or exc})") \
            from None
    except sa.exc.NoSuchModuleError:
        raise SourceUnavailableError(silo_id, shown, f"no SQLAlchemy dialect {url.drivername!r} "
                                                     "(supported: sqlite, postgresql, mysql/mariadb)") from None


def _sqlite_read_only(silo_id: str, url, shown: str):
    """A sqlite3 connect function for the engine: the file opened ``mode=ro``, ``PRAGMA query_only=ON``, then
    :func:`_read_only_authorizer` (after which no PRAGMA can turn query_only off)."""
    database = url.database or ""
    # the URL's own URI parameters (e.g. immutable=1) are kept, but never a writable mode
    params = "&".join([f"{k}={v}" for k, v in url.query.items() if k not in ("mode", "uri") and isinstance(v, str)]
                      + ["mode=ro"])
    if database.startswith("file:"):  # a URI the operator wrote
        target = f"{database}?{params}"
    elif database and database != ":memory:":
        # sqlite3 would create a missing file (an empty database): that is a wrong path, not an empty silo
        path = Path(database).resolve()
        if not path.is_file():
            raise SourceUnavailableError(silo_id, shown, f"the SQLite file {path} does not exist")
        target = f"{path.as_uri()}?{params}"
    else:
        target = f"file::memory:?{params}"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(target, uri=True, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_read_only_authorizer)
        return conn

    return connect


#: what a read-only SQLite connection may do (sqlite3's authorizer action codes); anything else is denied when the
#: statement is prepared, before it runs: ATTACH/DETACH, writes, DDL, settings
_SQLITE_ALLOWED = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                             sqlite3.SQLITE_RECURSIVE, sqlite3.SQLITE_TRANSACTION})
#: PRAGMAs that only describe the schema (their argument is a table or index name): SQLAlchemy reflects with them
_SQLITE_SCHEMA_PRAGMAS = frozenset({"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                                    "foreign_key_list", "database_list"})
#: settings SQLAlchemy reads when it connects (read only: with a value, a PRAGMA sets it)
_SQLITE_READ_PRAGMAS = frozenset({"read_uncommitted"})


def _read_only_authorizer(action: int, arg1, arg2, _db, _trigger) -> int:
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        allowed = name in _SQLITE_SCHEMA_PRAGMAS or (name in _SQLITE_READ_PRAGMAS and arg2 is None)
        return sqlite3.SQLITE_OK if allowed else sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK if action in _SQLITE_ALLOWED else sqlite3.SQLITE_DENY


#: keywords a read-only SELECT never holds (besides other DML and any DDL): another database, settings, SELECT INTO
#: (a new table), COPY (files), locks, privileges, procedure calls
_NOT_IN_A_SELECT = frozenset({"ATTACH", "DETACH", "PRAGMA", "INTO", "COPY", "GRANT", "REVOKE", "VACUUM", "CALL",
                              "LOCK", "SET", "RESET", "LOAD", "EXECUTE", "NOTIFY", "LISTEN"})


def check_query(query: str, silo_id: str, shown: str) -> None:
    """Refuse ``query`` unless it is exactly one SELECT (or WITH ... SELECT) that names no write, DDL, ATTACH, PRAGMA
    or setting: a :class:`SourceQueryError` naming the keyword (the query is the operator's own text, not row
    values). Checked before the query runs; the read-only connection is the second line."""
    import sqlparse
    from sqlparse import tokens as T

    statements = [[t for t in stmt.flatten() if not (t.is_whitespace or t.ttype in T.Comment)]
                  for stmt in sqlparse.parse(query)]
    statements = [tokens for tokens in statements if [t for t in tokens if t.ttype is not T.Punctuation]]
    if len(statements) != 1:
        raise SourceQueryError(silo_id, shown, f"silo.query must be exactly one SELECT, not {len(statements)} "
                                               "statements: refused before it ran")
    tokens = statements[0]
    first = tokens[0]
    if not (first.ttype in T.Keyword and first.normalized in ("SELECT", "WITH")):
        raise SourceQueryError(silo_id, shown, f"silo.query must be a SELECT (or WITH ... SELECT), not "
                                               f"{first.normalized.upper()[:40]!r}: refused before it ran")
    for token in tokens:
        word = token.normalized.upper()
        writes = (token.ttype in T.Keyword.DML and word != "SELECT") or token.ttype in T.Keyword.DDL
        if token.ttype in T.Keyword and (writes or word in _NOT_IN_A_SELECT):
            raise SourceQueryError(silo_id, shown, f"silo.query must be a read-only SELECT; it holds {word}: "
                                                   "refused before it ran (quote a column of that name)")


def table_name(cfg: Config, silo_id: str) -> tuple[str | None, str]:
    name = cfg.silo.table.replace("{silo}", silo_id)
    schema, _, table = name.rpartition(".")
    return schema or None, table


def _read_table(conn, cfg: Config, silo_id: str, shown: str, url) -> pd.DataFrame:
    import sqlalchemy as sa

    schema, name = table_name(cfg, silo_id)
    qualified = f"{schema}.{name}" if schema else name
    try:
        table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=conn)
    except sa.exc.NoSuchTableError:
        present = _tables(conn, schema)
        raise SourceTableError(silo_id, shown, f"table {qualified!r} (silo.table) does not exist; tables present: "
                                               f"{', '.join(present) or 'none'}") from None
    except sa.exc.DBAPIError as exc:
        raise SourceTableError(silo_id, shown, f"table {qualified!r} cannot be read: {_db_message(exc, url)}") \
            from None
    mapping = column_mapping(cfg)
    present = [c.name for c in table.columns]
    _check_columns(silo_id, shown, f"table {qualified!r}", mapping, present)
    stmt = sa.select(*[table.c[source].label(target) for target, source in mapping.items()])
    try:
        result = conn.execute(stmt)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    except sa.exc.DBAPIError as exc:
        raise SourceTableError(silo_id, shown, f"table {qualified!r} cannot be read: {_db_message(exc, url)}") \
            from None


def _run_query(conn, cfg: Config, silo_id: str, shown: str, url) -> pd.DataFrame:
    import sqlalchemy as sa

    query = cfg.silo.query.replace("{silo}", silo_id)
    try:
        result = conn.execute(sa.text(query))
        if not result.returns_rows:
            raise SourceTableError(silo_id, shown, "silo.query returned no rows set (it must be a SELECT)")
        keys = list(result.keys())
        rows = result.fetchall()
    except sa.exc.DBAPIError as exc:
        message = _db_message(exc, url)
        error = SourceColumnError if _undefined_column(exc) else SourceTableError
        raise error(silo_id, shown, f"silo.query failed: {message}") from None
    except sa.exc.StatementError as exc:  # e.g. a ":name" in the text taken for a bind parameter
        raise SourceTableError(silo_id, shown, f"silo.query cannot be run ({type(exc.orig or exc).__name__}; "
                                               "write a literal colon as \\:)") from None
    mapping = column_mapping(cfg)
    _check_columns(silo_id, shown, "silo.query", mapping, keys)
    frame = pd.DataFrame(rows, columns=keys) if rows else pd.DataFrame(columns=keys)
    frame = frame.loc[:, ~frame.columns.duplicated()]
    return pd.DataFrame({target: frame[source] for target, source in mapping.items()})


def column_mapping(cfg: Config) -> dict[str, str]:
    s = cfg.silo
    return {"user_id": s.user_column, "item_id": s.item_column, "rating": s.rating_column,
            "timestamp": s.timestamp_column}


def _check_columns(silo_id: str, shown: str, what: str, mapping: dict[str, str], present: list[str]) -> None:
    missing = [f"{source!r} (silo.{_option(target)})" for target, source in mapping.items() if source not in present]
    if missing:
        raise SourceColumnError(silo_id, shown, f"{what} has no column {', '.join(missing)}; columns present: "
                                                f"{', '.join(present) or 'none'}")


def _option(target: str) -> str:
    return {"user_id": "user_column", "item_id": "item_column", "rating": "rating_column",
            "timestamp": "timestamp_column"}[target]


def _tables(conn, schema: str | None) -> list[str]:
    import sqlalchemy as sa

    try:
        return sorted(sa.inspect(conn).get_table_names(schema=schema))
    except sa.exc.SQLAlchemyError:
        return []


def coerce(raw: pd.DataFrame, silo_id: str, shown: str = "") -> pd.DataFrame:
    """The mapped columns with the demo partition's dtypes (int64), rows in canonical order.

    Faithful rather than clean: a fractional rating stays float64 (the suite allows it), a column with NULLs stays
    float64 with NaN (the suite then reports the nulls by count), a date-time timestamp becomes Unix seconds; text
    that is not a number is a :class:`SourceColumnError` naming the column (never the value)."""
    out = {}
    for name in COLUMNS:
        out[name] = _numeric(raw[name], name, silo_id, shown)
    frame = pd.DataFrame(out, columns=list(COLUMNS))
    return frame.sort_values(["user_id", "timestamp", "item_id", "rating"], kind="stable",
                             na_position="last").reset_index(drop=True)


def _numeric(col: pd.Series, name: str, silo_id: str, shown: str) -> np.ndarray:
    if name == "timestamp" and (pd.api.types.is_datetime64_any_dtype(col) or _holds_datetimes(col)):
        col = (pd.to_datetime(col, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    try:
        values = pd.to_numeric(col, errors="raise")
    except (ValueError, TypeError):
        values = None
    if values is None or pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        raise SourceColumnError(silo_id, shown, f"column {name} (silo.{_option(name)}) holds values that are not "
                                                "numbers")
    if pd.api.types.is_integer_dtype(values) and not pd.api.types.is_extension_array_dtype(values):
        return values.to_numpy(dtype="int64")
    array = values.to_numpy(dtype="float64", na_value=np.nan)
    if np.isnan(array).any() or not np.all(array == np.round(array)) or np.any(np.abs(array) >= 2.0**63):
        return array  # NULLs (NaN, for the validation suite to count) or fractional (a half-star rating)
    return array.astype("int64")


def _holds_datetimes(col: pd.Series) -> bool:
    import datetime as dt

    first = col.dropna()
    return len(first) > 0 and isinstance(first.iloc[0], (dt.datetime, dt.date))


def _undefined_column(exc) -> bool:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) == "42703" or str(orig).startswith("no such column")


#: database messages that can only name schema objects and SQL text (the configured query), never row values:
#: PostgreSQL's syntax/undefined-object class (42), read-only transaction (25006), authorization (28), unknown
#: database or schema (3D, 3F); SQLite's by their text
_SCHEMA_ONLY_SQLSTATES = ("42", "25006", "28", "3D", "3F")
_SCHEMA_ONLY_SQLITE = re.compile(
    r"^(no such (table|column): \S+|.*: syntax error|incomplete input|file is not a database"
    r"|attempt to write a readonly database|not authorized|not authorized to use function: \w+)$")


def _db_message(exc, url, always: bool = False) -> str:
    """What the database said, safe to send to the coordinator: quoted only where it cannot carry row values
    (connection failures, :data:`_SCHEMA_ONLY_SQLSTATES`, :data:`_SCHEMA_ONLY_SQLITE`), password removed; otherwise
    the error's kind and a pointer to the silo's log."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    sqlstate = getattr(orig, "sqlstate", None)
    kind = type(orig).__name__ + (f", SQLSTATE {sqlstate}" if sqlstate else "")
    log.warning("database error (%s): %s", kind, _scrub(str(orig), url))
    safe = always or (sqlstate or "").startswith(_SCHEMA_ONLY_SQLSTATES) or bool(_SCHEMA_ONLY_SQLITE.match(text))
    if safe and text:
        return f"{_scrub(text, url)} ({kind})"
    return f"{kind}; the database's message is in the silo's log"


def _scrub(text: str, url) -> str:
    return text.replace(url.password, "***") if url.password else text
