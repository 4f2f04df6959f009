"""fedrec.core.data.movielens: the ML-100K file format, local directories and the md5-checked download."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from fedrec.core.data.movielens import (
    REQUIRED_FILES,
    fetch_movielens_100k,
    load_movielens_100k,
    resolve_raw_dir,
)
from fedrec.core.errors import ChecksumError, DataNotFoundError

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]

# Invented rows in the exact ML-100K layout.
U_DATA = [  # user \t item \t rating \t timestamp
    (1, 1, 5, 874965758), (1, 2, 3, 876893171), (2, 3, 4, 878542960), (2, 1, 1, 875072484),
    (3, 4, 2, 889751712), (3, 2, 5, 888552084),
]
U_ITEM = [  # id, title, release date, video release, url, genres set on
    (1, "Toy Story (1995)", "01-Jan-1995", "", "http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)",
     ["Animation", "Children's", "Comedy"]),
    (2, "Café au lait (1993)", "15-Mar-1993", "", "http://us.imdb.com/M/title-exact?Cafe%20au%20lait", ["Comedy"]),
    (3, "Heat (1995)", "15-Dec-1995", "", "http://us.imdb.com/M/title-exact?Heat%20(1995)",
     ["Action", "Crime", "Thriller"]),
    (4, "unknown", "", "", "", ["unknown"]),
]
U_USER = ["1|24|M|technician|85711", "2|53|F|other|94043", "3|23|M|writer|T8H1N"]


def write_ml100k(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in U_DATA))
    lines = []
    for item_id, title, date, video, url, genres in U_ITEM:
        flags = "|".join("1" if g in genres else "0" for g in GENRES)
        lines.append(f"{item_id}|{title}|{date}|{video}|{url}|{flags}\n")
    (directory / "u.item").write_bytes("".join(lines).encode("latin-1"))
    (directory / "u.user").write_text("\n".join(U_USER) + "\n")
    (directory / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    return directory


def test_fixture_is_latin1_not_utf8(tmp_path):
    raw = write_ml100k(tmp_path / "ml") / "u.item"
    with pytest.raises(UnicodeDecodeError):
        raw.read_bytes().decode("utf-8")


def test_load_parses_dtypes_years_genres_and_zips(tmp_path):
    # Prepare
    directory = write_ml100k(tmp_path / "ml-100k")

    # Execute
    ds = load_movielens_100k(directory)

    # Assert: interactions
    assert list(ds.interactions.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert all(str(t) == "int64" for t in ds.interactions.dtypes)
    assert ds.interactions.values.tolist() == [list(r) for r in U_DATA]
    # items: titles (latin-1 accent decoded), years (missing date -> <NA>), genre lists
    items = ds.items.set_index("item_id")
    assert str(ds.items["item_id"].dtype) == "int64"
    assert str(ds.items["year"].dtype) == "Int64"
    assert items.loc[2, "title"] == "Café au lait (1993)"
    assert items.loc[1, "year"] == 1995 and items.loc[2, "year"] == 1993 and items.loc[3, "year"] == 1995
    assert pd.isna(items.loc[4, "year"])
    assert items.loc[1, "genres"] == ["Animation", "Children's", "Comedy"]
    assert items.loc[3, "genres"] == ["Action", "Crime", "Thriller"]
    assert items.loc[4, "genres"] == ["unknown"]
    assert ds.n_items == 4
    # users: zip codes stay strings (leading zeros, Canadian postcodes)
    users = ds.users.set_index("user_id")
    assert str(ds.users["user_id"].dtype) == "int64"
    assert users["zip_code"].tolist() == ["85711", "94043", "T8H1N"]
    assert all(isinstance(z, str) for z in users["zip_code"])
    assert users.loc[2, "gender"] == "F" and users.loc[3, "occupation"] == "writer"
    assert users.loc[1, "age"] == 24


def test_leading_zero_zip_is_kept(tmp_path):
    directory = write_ml100k(tmp_path / "ml")
    (directory / "u.user").write_text("1|24|M|technician|01002\n")

    users = load_movielens_100k(directory).users

    assert users["zip_code"].tolist() == ["01002"]


def test_resolve_raw_dir_with_complete_directory(tmp_path):
    directory = write_ml100k(tmp_path / "ml")

    assert resolve_raw_dir(str(directory), tmp_path / "downloads") == directory


def test_resolve_raw_dir_missing_files_raises(tmp_path):
    directory = write_ml100k(tmp_path / "ml")
    (directory / "u.genre").unlink()
    (directory / "u.user").unlink()

    with pytest.raises(DataNotFoundError, match=r"u\.user.*u\.genre|u\.genre.*u\.user") as info:
        resolve_raw_dir(str(directory), tmp_path / "downloads")
    assert "u.data" not in str(info.value).split("lacks")[1]


def _fake_zip(tmp_path: Path) -> Path:
    src = write_ml100k(tmp_path / "src")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name in REQUIRED_FILES:
            archive.write(src / name, f"ml-100k/{name}")
    path = tmp_path / "ml-100k.zip"
    path.write_bytes(buf.getvalue())
    return path


def test_fetch_wrong_md5_raises_checksum_error(tmp_path):
    archive = _fake_zip(tmp_path)
    target = tmp_path / "raw"

    with pytest.raises(ChecksumError, match=hashlib.md5(archive.read_bytes()).hexdigest()):
        fetch_movielens_100k(target, url=archive.as_uri(), md5="0" * 32)
    assert not (target / "ml-100k").exists()  # nothing unpacked from an unverified archive


def test_fetch_right_md5_unpacks(tmp_path):
    archive = _fake_zip(tmp_path)
    target = tmp_path / "raw"
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()

    directory = fetch_movielens_100k(target, url=archive.as_uri(), md5=md5)

    assert directory == target / "ml-100k"
    assert all((directory / n).is_file() for n in REQUIRED_FILES)
    assert len(load_movielens_100k(directory).interactions) == len(U_DATA)
    # a second call finds the unpacked copy and does not download again (the URL is now gone)
    archive.unlink()
    assert fetch_movielens_100k(target, url=archive.as_uri(), md5=md5) == directory


def test_fetch_unreachable_raises_data_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match="FEDREC_DATA_DIR"):
        fetch_movielens_100k(tmp_path / "raw", url=(tmp_path / "missing.zip").as_uri())
