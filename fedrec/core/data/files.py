"""Bring your own data (``data.source: files``): a public item catalogue and each silo's interactions, from CSV or
Parquet files, with a column mapping (``data.files.*``). Nothing here assumes MovieLens.

* the catalogue (``data.files.catalogue``): one row per item; ``item_column`` (integer ids), ``title_column``,
  optional ``category_column`` ("|"-separated, the genres of item text and of the dirichlet partition) and
  ``text_columns`` (free text, part of each item's text for the language-model features).
* interactions (``data.files.interactions``): a path with ``{silo}`` (one file per silo: the silo ids are the
  ``{silo}`` parts of the files found, or ``data.files.silos``) or one file with a ``silo_column``. Columns
  ``user_column``, ``interaction_item_column``, ``rating_column`` ("" = implicit feedback, every row 1) and
  ``timestamp_column`` (Unix seconds or date-times; "" = the file's row order).

Problems are named (:class:`DataFilesError`): a missing column (the columns the file has are listed), duplicate or
non-integer item ids, interactions naming items the catalogue lacks, a user in two silos; counts and at most five
example ids, never rows. :func:`write_example` writes a small dataset in this layout with its params.yaml.
"""

from __future__ import annotations

import glob
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.core.config import Config, FilesConfig
from fedrec.core.data.types import Dataset
from fedrec.core.errors import DataNotFoundError, FedrecError
from fedrec.core.ids import check_silo_id

EXAMPLES = 5
log = logging.getLogger(__name__)


class DataFilesError(FedrecError, ValueError):
    """The own-data files (data.files.*) do not fit together: which file, which problem, how many ids."""


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """A CSV (.csv, .tsv, .txt) or Parquet file; :class:`DataNotFoundError` when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{what}: {path} does not exist (data.files.*; relative paths are read from "
                                f"{Path.cwd()})")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    raise DataFilesError(f"{what}: {path}: unknown format {suffix!r} (use .csv, .tsv or .parquet)")


def _require(frame: pd.DataFrame, columns: dict[str, str], path: str | Path) -> None:
    missing = {key: col for key, col in columns.items() if col and col not in frame.columns}
    if missing:
        wanted = ", ".join(f"{col!r} (data.files.{key})" for key, col in missing.items())
        raise DataFilesError(f"{path}: missing column(s) {wanted}; the file has {list(map(str, frame.columns))}")


def _examples(values) -> str:
    values = sorted(set(values))
    return ", ".join(map(str, values[:EXAMPLES])) + (", ..." if len(values) > EXAMPLES else "")


def _integer_ids(series: pd.Series, path, column: str) -> np.ndarray:
    numeric = pd.to_numeric(series, errors="coerce")
    bad = series[numeric.isna() | (numeric != np.floor(numeric))]
    if len(bad):
        raise DataFilesError(f"{path}: column {column!r} must hold integer ids; {len(bad)} row(s) do not, e.g. "
                             f"{_examples(bad.astype(str))} (map your ids to integers first)")
    return numeric.to_numpy(np.int64)


def load_catalogue(fc: FilesConfig) -> pd.DataFrame:
    """item_id (int64), title, genres (list), then the text columns: the schema of every catalogue in fedrec."""
    raw = read_table(fc.catalogue, "the item catalogue (data.files.catalogue)")
    _require(raw, {"item_column": fc.item_column, "title_column": fc.title_column,
                   "category_column": fc.category_column} | {"text_columns": c for c in fc.text_columns},
             fc.catalogue)
    ids = _integer_ids(raw[fc.item_column], fc.catalogue, fc.item_column)
    dup = pd.Series(ids)[pd.Series(ids).duplicated()]
    if len(dup):
        raise DataFilesError(f"{fc.catalogue}: {dup.nunique()} item id(s) appear more than once in column "
                             f"{fc.item_column!r}, e.g. {_examples(dup)}: each item needs one row")
    items = pd.DataFrame({"item_id": ids, "title": raw[fc.title_column].fillna("").astype(str).to_numpy()})
    items["year"] = pd.array([pd.NA] * len(items), dtype="Int64")
    if fc.category_column:
        cats = raw[fc.category_column].fillna("").astype(str)
        items["genres"] = [[c.strip() for c in v.split("|") if c.strip()] for v in cats]
    else:
        items["genres"] = [[] for _ in range(len(items))]
    for col in fc.text_columns:
        items[col] = raw[col].fillna("").astype(str).to_numpy()
    return items.sort_values("item_id", kind="stable").reset_index(drop=True)


def silo_files(fc: FilesConfig) -> dict[str, Path]:
    """{silo id: its interactions file} for a ``{silo}`` pattern (the listed silos, else every file found)."""
    pattern = fc.interactions
    if fc.silos:
        found = {s: Path(pattern.replace("{silo}", check_silo_id(s))) for s in fc.silos}
        missing = [s for s, p in found.items() if not p.is_file()]
        if missing:
            raise DataNotFoundError(f"data.files.interactions: no file for silo(s) {missing} "
                                    f"({pattern.replace('{silo}', missing[0])} does not exist)")
        return found
    head, _, tail = pattern.partition("{silo}")
    matcher = re.compile(re.escape(head) + r"(.+?)" + re.escape(tail) + r"\Z")
    found = {}
    for path in sorted(glob.glob(glob.escape(head) + "*" + glob.escape(tail))):
        match = matcher.match(path)
        if match and "/" not in match.group(1):
            found[check_silo_id(match.group(1))] = Path(path)
    if not found:
        raise DataNotFoundError(f"data.files.interactions: no file matches {pattern} (relative to {Path.cwd()})")
    return found


def _timestamps(frame: pd.DataFrame, column: str, path) -> np.ndarray:
    if not column:
        return np.arange(len(frame), dtype=np.int64)  # the file's order is the order of events
    values = frame[column]
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return numeric.to_numpy(np.int64)
    parsed = pd.to_datetime(values, errors="coerce", utc=True)
    if parsed.isna().any():
        raise DataFilesError(f"{path}: column {column!r} must hold Unix seconds or date-times; "
                             f"{int(parsed.isna().sum())} row(s) hold neither")
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def _interactions(raw: pd.DataFrame, fc: FilesConfig, path, silo: pd.Series) -> pd.DataFrame:
    _require(raw, {"user_column": fc.user_column, "interaction_item_column": fc.interaction_item_column,
                   "rating_column": fc.rating_column, "timestamp_column": fc.timestamp_column}, path)
    frame = pd.DataFrame({
        "user_id": _integer_ids(raw[fc.user_column], path, fc.user_column),
        "item_id": _integer_ids(raw[fc.interaction_item_column], path, fc.interaction_item_column),
        "rating": (pd.to_numeric(raw[fc.rating_column], errors="coerce").to_numpy() if fc.rating_column
                   else np.ones(len(raw), np.int64)),
        "timestamp": _timestamps(raw, fc.timestamp_column, path),
        "silo_id": silo.to_numpy(),
    })
    if frame["rating"].dtype.kind == "f" and np.all(np.isfinite(frame["rating"])) \
            and np.all(frame["rating"] == np.floor(frame["rating"])):
        frame["rating"] = frame["rating"].astype(np.int64)
    return frame


def load_interactions(fc: FilesConfig) -> pd.DataFrame:
    """user_id, item_id, rating, timestamp, silo_id of every silo's file (or of the one file's silo column)."""
    if "{silo}" in fc.interactions:
        frames = [_interactions(raw := read_table(p, f"silo {s}'s interactions"), fc, p,
                                pd.Series([s] * len(raw), dtype=object))
                  for s, p in silo_files(fc).items()]
        return pd.concat(frames, ignore_index=True)
    raw = read_table(fc.interactions, "the interactions (data.files.interactions)")
    _require(raw, {"silo_column": fc.silo_column}, fc.interactions)
    return _interactions(raw, fc, fc.interactions, raw[fc.silo_column].astype(str))


def load(cfg: Config) -> Dataset:
    """The catalogue and every silo's interactions, checked against each other; users carry their silo."""
    fc = cfg.data.files
    if not fc.catalogue or not fc.interactions:
        raise DataFilesError("data.source is files: set data.files.catalogue and data.files.interactions")
    items = load_catalogue(fc)
    frame = load_interactions(fc)
    unknown = frame[~frame["item_id"].isin(items["item_id"])]
    if len(unknown):
        per_silo = unknown.groupby("silo_id").size().to_dict()
        raise DataFilesError(f"{len(unknown)} interaction(s) name {unknown['item_id'].nunique()} item id(s) the "
                             f"catalogue ({fc.catalogue}) lacks, e.g. {_examples(unknown['item_id'])}; per silo: "
                             f"{per_silo}. Add the items to the catalogue or drop those rows")
    homes = frame.groupby("user_id")["silo_id"].nunique()
    shared = homes[homes > 1]
    if len(shared):
        raise DataFilesError(f"{len(shared)} user id(s) appear in more than one silo, e.g. {_examples(shared.index)}: "
                             "a user belongs to one silo (give each silo's users their own id range)")
    counts = frame.groupby("user_id").size()
    few = counts.index[counts < cfg.data.min_user_interactions]
    if len(few):  # leave-one-out needs train, validation and test items (data.min_user_interactions)
        log.info("data.files: %d user(s) with fewer than %d interactions left out", len(few),
                 cfg.data.min_user_interactions)
        frame = frame[~frame["user_id"].isin(few)]
    if frame.empty:
        raise DataFilesError(f"no user has data.min_user_interactions={cfg.data.min_user_interactions} interactions")
    users = frame.drop_duplicates("user_id")[["user_id", "silo_id"]].sort_values("user_id").reset_index(drop=True)
    interactions = frame.drop(columns="silo_id").reset_index(drop=True)
    return Dataset(interactions=interactions, items=items, users=users)


def assignment(users: pd.DataFrame) -> pd.Series:
    """user_id -> silo_id as the files give it (the partition of an own-data federation)."""
    return pd.Series(users["silo_id"].astype(str).to_numpy(), index=users["user_id"].to_numpy(), name="silo_id")


# --- the example dataset ---------------------------------------------------------------------------------------
_CATEGORIES = ["books", "garden", "kitchen", "music", "outdoor", "toys", "games", "tools"]
_ADJECTIVES = ["compact", "classic", "deluxe", "travel", "family", "pro", "eco", "smart"]


def write_example(out_dir: str | Path, n_silos: int = 3, n_users: int = 240, n_items: int = 120,
                  seed: int = 0) -> dict[str, int]:
    """A small shop-like dataset in the own-data layout: ``catalogue.csv`` (product_id, name, description,
    category), ``interactions/<silo>.csv`` (customer, product_id, stars, ts as ISO date-times) for silos
    shop-a, shop-b, ..., and a ``params.yaml`` mapping those columns (a short federation: 10 rounds).
    Returns interactions per silo."""
    import yaml

    from fedrec.core.config import SyntheticConfig
    from fedrec.core.data import synthetic

    out = Path(out_dir)
    (out / "interactions").mkdir(parents=True, exist_ok=True)
    data = synthetic.generate(SyntheticConfig(n_users=n_users, n_items=n_items, interactions_per_user=20, seed=seed))
    rng = np.random.default_rng(seed)
    ids = data.items["item_id"].to_numpy() + 1000  # not 1..n: nothing may assume dense ids
    cats = [_CATEGORIES[int(c)] for c in rng.integers(0, len(_CATEGORIES), len(ids))]
    names = [f"{_ADJECTIVES[int(a)].capitalize()} {c} item {i}" for a, c, i in
             zip(rng.integers(0, len(_ADJECTIVES), len(ids)), cats, ids)]
    pd.DataFrame({"product_id": ids, "name": names, "category": cats,
                  "description": [f"A {n.lower()} for {c} lovers." for n, c in zip(names, cats)]}) \
        .to_csv(out / "catalogue.csv", index=False)
    silos = [f"shop-{chr(ord('a') + k)}" for k in range(n_silos)]
    home = rng.integers(0, n_silos, data.users["user_id"].max() + 1)
    inter = data.interactions
    rows = {}
    for k, silo in enumerate(silos):
        part = inter[home[inter["user_id"].to_numpy()] == k]
        pd.DataFrame({"customer": part["user_id"].to_numpy() + 10_000 * (k + 1),
                      "product_id": part["item_id"].to_numpy() + 1000,
                      "stars": part["rating"].to_numpy(),
                      "ts": pd.to_datetime(part["timestamp"].to_numpy(), unit="s", utc=True)
                      .strftime("%Y-%m-%dT%H:%M:%SZ")}).to_csv(out / "interactions" / f"{silo}.csv", index=False)
        rows[silo] = len(part)
    params = {
        "data": {"source": "files", "files": {
            "catalogue": "catalogue.csv", "item_column": "product_id", "title_column": "name",
            "category_column": "category", "text_columns": ["description"],
            "interactions": "interactions/{silo}.csv", "user_column": "customer",
            "interaction_item_column": "product_id", "rating_column": "stars",
            "timestamp_column": "ts"}},
        "evaluation": {"n_negatives": 49},
        "model": {"name": "neumf", "embedding_dim": 16, "mlp_layers": [32, 16]},
        "training": {"epochs": 2},
        "federation": {"rounds": 10, "min_silos": min(3, n_silos)},
    }
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return rows
