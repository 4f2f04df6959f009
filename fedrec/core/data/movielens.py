"""MovieLens-100K: read the GroupLens files from a local directory, or download them (md5-verified).

The licence forbids redistribution, so the files are never committed: point
``FEDREC_DATA_DIR`` (or ``data.raw_dir``) at a local copy, or let
:func:`fetch_movielens_100k` download the official zip when online.
"""

from __future__ import annotations

import hashlib
import io
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from fedrec.core.data.types import Dataset
from fedrec.core.errors import ChecksumError, DataNotFoundError

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_MD5 = "0e33842e24a9c977be4e0107933c0723"
REQUIRED_FILES = ("u.data", "u.item", "u.user", "u.genre")


def _has_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in REQUIRED_FILES)


def fetch_movielens_100k(target_dir: str | Path, url: str = ML100K_URL, md5: str = ML100K_MD5) -> Path:
    """Download and unpack the official zip into ``target_dir``; returns the directory with u.data."""
    target = Path(target_dir)
    unpacked = target / "ml-100k"
    if _has_files(unpacked):
        return unpacked
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - fixed https URL
            payload = response.read()
    except OSError as exc:
        raise DataNotFoundError(
            f"could not download {url} ({exc}); offline? Set FEDREC_DATA_DIR to a directory holding "
            f"{', '.join(REQUIRED_FILES)} (e.g. ../shared/datasets/ml-100k)"
        ) from exc
    digest = hashlib.md5(payload).hexdigest()  # noqa: S324 - GroupLens publishes md5
    if digest != md5:
        raise ChecksumError(f"{url} has md5 {digest}, expected {md5}; refusing to use it")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        archive.extractall(target)
    return unpacked


def check_local_dir(raw_dir: str, setting: str = "data.raw_dir") -> Path:
    """The local MovieLens copy that ``setting`` names; a :class:`DataNotFoundError` (naming the setting) when it
    does not exist or lacks the files: a set directory is never silently replaced by other data."""
    directory = Path(raw_dir).expanduser()
    if not directory.is_dir():
        raise DataNotFoundError(f"{setting}={raw_dir}: no such directory (point it at the folder holding "
                                f"{', '.join(REQUIRED_FILES)}, or unset it to download MovieLens-100K)")
    if not _has_files(directory):
        missing = [n for n in REQUIRED_FILES if not (directory / n).is_file()]
        raise DataNotFoundError(f"{setting}={raw_dir}: the MovieLens directory lacks {missing}")
    return directory


def resolve_raw_dir(raw_dir: str | None, download_dir: str | Path, setting: str = "data.raw_dir") -> Path:
    """A local directory when given (must hold the files), else the downloaded copy."""
    if raw_dir:
        return check_local_dir(raw_dir, setting)
    return fetch_movielens_100k(download_dir)


def load_movielens_100k(directory: str | Path) -> Dataset:
    """Parse u.data / u.item / u.user / u.genre into a :class:`Dataset`."""
    directory = Path(directory)
    interactions = pd.read_csv(
        directory / "u.data", sep="\t", header=None,
        names=["user_id", "item_id", "rating", "timestamp"], dtype="int64",
    )
    genre_names = pd.read_csv(directory / "u.genre", sep="|", header=None, names=["genre", "idx"],
                              encoding="latin-1").dropna()["genre"].tolist()
    item_cols = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *genre_names]
    raw_items = pd.read_csv(directory / "u.item", sep="|", header=None, names=item_cols, encoding="latin-1")
    flags = raw_items[genre_names].to_numpy(dtype=bool)
    items = pd.DataFrame({
        "item_id": raw_items["item_id"].astype("int64"),
        "title": raw_items["title"].astype(str),
        "year": pd.to_datetime(raw_items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year.astype("Int64"),
        "genres": [[g for g, on in zip(genre_names, row) if on] for row in flags],
    })
    users = pd.read_csv(directory / "u.user", sep="|", header=None,
                        names=["user_id", "age", "gender", "occupation", "zip_code"],
                        dtype={"zip_code": str}, encoding="latin-1")
    users["user_id"] = users["user_id"].astype("int64")
    return Dataset(interactions=interactions, items=items, users=users)
