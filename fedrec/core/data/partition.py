"""Assign every user to exactly one silo.

* ``region``: first digit of the US zip code (silos ``0``-``9``), non-numeric zips to ``other``;
  the natural cross-silo split of ML-100K.
* ``iid``: uniformly at random into K silos of (almost) equal size.
* ``dirichlet``: non-IID; each genre draws silo proportions from Dirichlet(alpha) and a user
  goes to a silo drawn from the proportions of the genre they watch most (Hsu et al. 2019 style).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.core.config import PartitionConfig
from fedrec.core.data.types import Dataset
from fedrec.core.fsperm import private_dir, private_file

OTHER_REGION = "other"


def partition_region(users: pd.DataFrame) -> pd.Series:
    first = users["zip_code"].astype(str).str.strip().str[:1]
    silo = first.where(first.str.isdigit(), OTHER_REGION)
    return pd.Series(silo.to_numpy(), index=users["user_id"].to_numpy(), name="silo_id")


def partition_iid(user_ids: np.ndarray, n_silos: int, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(user_ids))
    silo = np.empty(len(user_ids), dtype=object)
    silo[order] = [str(i % n_silos) for i in range(len(user_ids))]
    return pd.Series(silo, index=np.asarray(user_ids), name="silo_id")


def dominant_genre(dataset: Dataset) -> pd.Series:
    """Each user's most-interacted genre (first genre of each item), ties to the alphabetically first."""
    first_genre = dataset.items.set_index("item_id")["genres"].map(lambda gs: gs[0] if len(gs) else "unknown")
    genres = dataset.interactions["item_id"].map(first_genre)
    counts = pd.crosstab(dataset.interactions["user_id"], genres)
    return counts.idxmax(axis=1)


def partition_dirichlet(dataset: Dataset, n_silos: int, alpha: float, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed)
    dom = dominant_genre(dataset)
    props = {g: rng.dirichlet(np.full(n_silos, alpha)) for g in sorted(dom.unique())}
    silo = [str(rng.choice(n_silos, p=props[g])) for g in dom.to_numpy()]
    return pd.Series(silo, index=dom.index.to_numpy(), name="silo_id")


def assign_silos(dataset: Dataset, cfg: PartitionConfig) -> pd.Series:
    """user_id -> silo_id (str) for every user with at least one interaction."""
    active = np.sort(dataset.interactions["user_id"].unique())
    if cfg.scheme == "region":
        assignment = partition_region(dataset.users)
    elif cfg.scheme == "iid":
        assignment = partition_iid(active, cfg.n_silos, cfg.seed)
    else:
        assignment = partition_dirichlet(dataset, cfg.n_silos, cfg.alpha, cfg.seed)
    return assignment.loc[assignment.index.isin(active)].sort_index()


def write_silos(dataset: Dataset, assignment: pd.Series, out_dir: str | Path) -> dict[str, dict[str, int]]:
    """One directory per silo (``<out_dir>/<silo>/interactions.parquet``, its users' rows: 0600 in 0700) plus
    ``manifest.json`` (counts only). Silo ids come from the partition scheme (digits, ``other``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    silo_of = dataset.interactions["user_id"].map(assignment)
    manifest: dict[str, dict[str, int]] = {}
    for silo_id in sorted(assignment.unique()):
        part = dataset.interactions[silo_of == silo_id].reset_index(drop=True)
        silo_dir = private_dir(out / silo_id)
        with private_file(silo_dir / "interactions.parquet") as fh:
            part.to_parquet(fh, index=False)
        # the silo's registered users (a user with no interactions yet is a new user, not an unknown one)
        with private_file(silo_dir / "users.parquet") as fh:
            pd.DataFrame({"user_id": np.sort(assignment.index[assignment == silo_id].to_numpy(np.int64))}) \
                .to_parquet(fh, index=False)
        manifest[silo_id] = {"users": int(part["user_id"].nunique()), "interactions": int(len(part))}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def write_catalogue(dataset: Dataset, out_dir: str | Path) -> None:
    """The public item catalogue every silo shares (ids, titles, years, genres)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset.items.sort_values("item_id").to_parquet(out / "items.parquet", index=False)


def read_catalogue(out_dir: str | Path) -> pd.DataFrame:
    return pd.read_parquet(Path(out_dir) / "items.parquet")


def list_silos(silo_root: str | Path) -> list[str]:
    manifest = Path(silo_root) / "manifest.json"
    return sorted(json.loads(manifest.read_text()))
