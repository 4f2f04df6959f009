"""The data pipeline's steps as plain functions (DVC stages and Prefect tasks call these).

prepare -> partition -> validate -> split; outputs live under ``data.work_dir``:

    prepared/{interactions,users}.parquet  catalogue/items.parquet
    silos/<silo>/{interactions,users}.parquet + manifest.json   (the demo partition)
    snapshots/<silo>/interactions.parquet   a database silo's rows (silo.source), taken at each run
    feedback/<silo>/batch-*.parquet    new interactions (fedrec feedback), part of the silo's data
    validation/<silo>.json + summary.json
    split/<silo>/{train,holdout}.parquet   (only silos that passed validation)

A silo's folders (``<area>/<silo>/``) hold its users' rows: 0600 files in 0700 directories (:mod:`fedrec.core.fsperm`),
and the silo id is checked before it becomes a path segment (:func:`fedrec.wire.exchange.check_silo_id`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fedrec.core.config import Config
from fedrec.core.data import files, synthetic
from fedrec.core.data.movielens import (
    check_local_dir,
    load_movielens_100k,
    resolve_raw_dir,
)
from fedrec.core.data.partition import (
    assign_silos,
    list_silos,
    read_catalogue,
    write_catalogue,
    write_silos,
)
from fedrec.core.data.split import Split, split_interactions
from fedrec.core.data.types import Dataset
from fedrec.core.errors import PartitionChangedError
from fedrec.silo import source
from fedrec.silo.paths import Paths, silo_base_file
from fedrec.silo.validation import ValidationReport, input_digest, saved_verdict, validate_interactions
from fedrec.wire.exchange import check_silo_id

if TYPE_CHECKING:
    from fedrec.core.training import SiloData


def load_dataset(cfg: Config) -> Dataset:
    if cfg.data.source == "synthetic":
        return synthetic.generate(cfg.data.synthetic)
    if cfg.data.source == "files":
        return files.load(cfg)
    return load_movielens_100k(resolve_raw_dir(cfg.resolved_raw_dir(), cfg.data.download_dir, cfg.raw_dir_setting()))


def check_data_dir(cfg: Config) -> None:
    """A data directory that is set (FEDREC_DATA_DIR or data.raw_dir) must exist and hold MovieLens, also when
    data/ already holds prepared data: a typo never trains on whatever happens to be there."""
    if cfg.data.source == "movielens" and cfg.resolved_raw_dir():
        check_local_dir(cfg.resolved_raw_dir(), cfg.raw_dir_setting())


def prepare(cfg: Config) -> Dataset:
    dataset = load_dataset(cfg)
    paths = Paths.of(cfg)
    paths.prepared.mkdir(parents=True, exist_ok=True)
    dataset.interactions.to_parquet(paths.prepared / "interactions.parquet", index=False)
    dataset.users.to_parquet(paths.prepared / "users.parquet", index=False)
    write_catalogue(dataset, paths.catalogue)
    _write_settings(paths.prepared, prepared_settings(cfg))
    return dataset


SETTINGS_FILE = "settings.json"


def prepared_settings(cfg: Config) -> dict:
    """The settings the prepared data depends on (stored beside it: a change prepares anew)."""
    data = cfg.data
    settings: dict = {"source": data.source, "min_user_interactions": data.min_user_interactions}
    if data.source == "synthetic":
        settings["synthetic"] = data.synthetic.model_dump(mode="json")
    elif data.source == "files":
        settings["files"] = data.files.model_dump(mode="json")
    return settings


def partition_settings(cfg: Config) -> dict:
    """The settings the demo partition depends on: the prepared data's plus ``partition.*`` (own files name
    their silos themselves)."""
    settings = {"prepared": prepared_settings(cfg)}
    if cfg.data.source != "files":
        settings["partition"] = cfg.partition.model_dump(mode="json")
    return settings


def _write_settings(folder: Path, settings: dict) -> None:
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True))


def _stored_settings(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None


def read_prepared(cfg: Config) -> Dataset:
    paths = Paths.of(cfg)
    return Dataset(
        interactions=pd.read_parquet(paths.prepared / "interactions.parquet"),
        items=read_catalogue(paths.catalogue),
        users=pd.read_parquet(paths.prepared / "users.parquet"),
    )


def partition(cfg: Config) -> dict[str, dict[str, int]]:
    """The demo's data owners' step: each silo's interactions (and registered users) under data/silos; feedback
    appended later lives beside it (data/feedback, kept when the partition is rerun)."""
    dataset = read_prepared(cfg)
    paths = Paths.of(cfg)
    paths.feedback.mkdir(parents=True, exist_ok=True)
    given = cfg.data.source == "files"  # own data: the files say which silo holds which user
    assignment = files.assignment(dataset.users) if given else assign_silos(dataset, cfg.partition)
    if paths.silos.exists():  # derived from prepared/ alone: a stale silo of an earlier partition must not linger
        shutil.rmtree(paths.silos)
    manifest = write_silos(dataset, assignment, paths.silos)
    _write_settings(paths.silos, partition_settings(cfg))
    return manifest


INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


def silo_interactions(cfg: Config, silo_id: str, *, refresh: bool = False) -> pd.DataFrame:
    """One silo's interactions as it trains on them: its base data (the Parquet of the demo partition, or, with
    ``silo.source`` a database URL, the snapshot of its rows, taken anew when ``refresh``) plus every batch of
    feedback appended since (``fedrec feedback``)."""
    if refresh and cfg.silo.source_of(silo_id):
        source.snapshot(cfg, silo_id)
    frames = [pd.read_parquet(silo_base_file(cfg, silo_id))]
    frames += [pd.read_parquet(p) for p in feedback_batches(cfg, silo_id)]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def snapshot_all(cfg: Config, only: str | None = None) -> list[str]:
    """`fedrec snapshot` (the DVC stage): each database silo's rows into data/snapshots/<silo>; ``only``: just that
    silo (what a silo's operator runs on its machine). Silos without a source (silo.source, silo.sources) are skipped.
    Refused before anything is written when several silos would read the very same rows (one URL, table and query
    without "{silo}"): each silo's snapshot would hold them all."""
    listed = [check_silo_id(s) for s in ([only] if only else cfg.federation.silos)]  # before anything is written
    Paths.of(cfg).snapshots.mkdir(parents=True, exist_ok=True)
    if not cfg.silo.source and not cfg.silo.sources:
        return []
    silos = listed or (sorted(cfg.silo.source_map) if not cfg.silo.source else ensure_partitioned(cfg))
    silos = [s for s in silos if cfg.silo.source_of(s)]
    same: dict[tuple[str, str, str], list[str]] = {}
    for silo_id in silos:
        read = (cfg.silo.source_of(silo_id).replace("{silo}", silo_id), cfg.silo.table.replace("{silo}", silo_id),
                cfg.silo.query.replace("{silo}", silo_id))
        same.setdefault(read, []).append(silo_id)
    shared = next((group for group in same.values() if len(group) > 1), None)
    if shared:
        raise source.SourceError(shared[0], "silo.source", f"silos {shared} would all read the same rows (no "
                                 "'{silo}' in silo.source, silo.table or silo.query): give each silo its own with "
                                 "silo.sources, or run `fedrec snapshot --silo <id>` on each silo's machine")
    for silo_id in silos:
        source.snapshot(cfg, silo_id)
    return silos


def feedback_batches(cfg: Config, silo_id: str) -> list[Path]:
    return sorted(Paths.of(cfg).silo_feedback(silo_id).glob("batch-*.parquet"))


def data_version(frame: pd.DataFrame) -> str:
    """A content hash of interactions, independent of row order and file layout (16 hex digits): which data a
    run trained on, for MLflow tags. A hash of a whole table reveals no row."""
    import hashlib

    cols = [c for c in INTERACTION_COLUMNS if c in frame.columns]
    rows = frame[cols].sort_values(cols, kind="stable").to_numpy(dtype=np.float64)
    return hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()[:16]


def validate_silo(cfg: Config, silo_id: str, frame: pd.DataFrame | None = None,
                  in_child: bool = False) -> ValidationReport:
    """Validate one silo's interactions against the GE suite and save its report (``in_child``: GE runs in a child
    process, for long-lived silo hosts). Data that passed before, unchanged (same rows, catalogue, suite and
    settings: :func:`fedrec.silo.validation.input_digest`), takes its saved verdict without running GE again."""
    frame = silo_interactions(cfg, silo_id, refresh=True) if frame is None else frame
    catalogue = read_catalogue(Paths.of(cfg).catalogue)["item_id"].tolist()
    digest = input_digest(frame, catalogue, cfg.data.min_user_interactions)
    if (report := saved_verdict(_report_path(cfg, silo_id), digest)) is not None:
        return report
    report = validate_interactions(frame, silo_id, catalogue, cfg.data.min_user_interactions, in_child=in_child)
    report.save(_report_path(cfg, silo_id), digest if report.success else None)
    return report


def saved_validation(cfg: Config, silo_id: str, frame: pd.DataFrame) -> ValidationReport | None:
    """The passing verdict saved for exactly this data (and catalogue, suite, settings), or None: GE must run."""
    catalogue = read_catalogue(Paths.of(cfg).catalogue)["item_id"].tolist()
    return saved_verdict(_report_path(cfg, silo_id), input_digest(frame, catalogue, cfg.data.min_user_interactions))


def _report_path(cfg: Config, silo_id: str) -> Path:
    return Paths.of(cfg).validation / f"{check_silo_id(silo_id)}.json"


def validate_all(cfg: Config) -> list[ValidationReport]:
    paths = Paths.of(cfg)
    reports = [validate_silo(cfg, s) for s in list_silos(paths.silos)]
    write_validation_summary(cfg, reports)
    return reports


def write_validation_summary(cfg: Config, reports: list[ValidationReport]) -> None:
    summary = {r.silo_id: {"success": r.success, "n_rows": r.n_rows, "failures": r.summary()} for r in reports}
    path = Paths.of(cfg).validation / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True))


def passing_silos(cfg: Config) -> list[str]:
    summary = json.loads((Paths.of(cfg).validation / "summary.json").read_text())
    return sorted(s for s, r in summary.items() if r["success"])


def split_silo(cfg: Config, silo_id: str, frame: pd.DataFrame | None = None) -> Split:
    paths = Paths.of(cfg)
    frame = silo_interactions(cfg, silo_id) if frame is None else frame
    catalogue = read_catalogue(paths.catalogue)["item_id"].to_numpy()
    ev = cfg.evaluation
    from fedrec.core import coldstart  # torch: not at import

    cold = coldstart.cold_item_ids(catalogue, ev.cold_item_fraction, ev.cold_seed)  # cold start: none when 0
    split = split_interactions(frame, catalogue, ev.n_negatives, ev.seed, cold)
    split.save(paths.silo_split(silo_id))
    return split


def split_all(cfg: Config) -> list[str]:
    silos = passing_silos(cfg)
    for silo_id in silos:
        split_silo(cfg, silo_id)
    return silos


def catalogue_ids(cfg: Config) -> np.ndarray:
    return read_catalogue(Paths.of(cfg).catalogue)["item_id"].to_numpy(np.int64)


def load_silo_data(cfg: Config, silo_id: str) -> SiloData:
    from fedrec.core.training import SiloData  # torch: not at import (the validation child has none)

    return SiloData.from_split(Split.load(Paths.of(cfg).silo_split(silo_id)), catalogue_ids(cfg))


def load_union(cfg: Config, silo_ids: list[str]) -> SiloData:
    """All listed silos' data as one (the centralized twin of a federation)."""
    splits = [Split.load(Paths.of(cfg).silo_split(s)) for s in silo_ids]
    union = Split(pd.concat([s.train for s in splits], ignore_index=True),
                  pd.concat([s.holdout for s in splits], ignore_index=True),
                  cold_items=splits[0].cold_items if splits else ())  # the same cold items at every silo
    from fedrec.core.training import SiloData

    return SiloData.from_split(union, catalogue_ids(cfg))


def ensure_partitioned(cfg: Config) -> list[str]:
    """Prepare and partition when their outputs are missing or were made with other settings (``data.*``,
    ``partition.*``: stored beside them in settings.json); returns every silo id. A new partition drops the
    validation and the splits made from the old one (they are redone). Refused with
    :class:`PartitionChangedError` when feedback batches were appended under the old partition: nothing is lost."""
    check_data_dir(cfg)
    paths = Paths.of(cfg)
    new_prepared = not (paths.prepared / "interactions.parquet").exists()
    if not new_prepared and _stored_settings(paths.prepared) is None:  # prepared before settings were stored:
        _write_settings(paths.prepared, prepared_settings(cfg))  # kept (the raw data may be gone), silos redone
    new_prepared = new_prepared or _stored_settings(paths.prepared) != prepared_settings(cfg)
    have = (paths.silos / "manifest.json").exists()
    stored = _stored_settings(paths.silos) if have else None
    if have and (new_prepared or stored != partition_settings(cfg)) and _feedback_batches(paths):
        if stored is None:  # made before settings were stored: cannot tell, and the feedback depends on it
            _write_settings(paths.silos, partition_settings(cfg))
            return list_silos(paths.silos)
        raise PartitionChangedError(
            f"data/silos was partitioned with {json.dumps(stored, sort_keys=True)}, the settings now say "
            f"{json.dumps(partition_settings(cfg), sort_keys=True)}; {len(_feedback_batches(paths))} feedback "
            f"batch(es) under {paths.feedback} belong to the old partition's silos. Restore the old settings, "
            "or move the feedback away (nothing was changed), or use another data.work_dir.")
    if new_prepared:
        prepare(cfg)
    if new_prepared or stored != partition_settings(cfg):
        partition(cfg)
        for derived in (paths.validation, paths.split):
            shutil.rmtree(derived, ignore_errors=True)
    return list_silos(paths.silos)


def _feedback_batches(paths: Paths) -> list[Path]:
    return sorted(paths.feedback.glob("*/batch-*.parquet")) if paths.feedback.exists() else []


def ensure_data(cfg: Config) -> list[str]:
    """Run the data steps whose outputs are missing; returns the silos that passed validation."""
    paths = Paths.of(cfg)
    ensure_partitioned(cfg)
    if not (paths.validation / "summary.json").exists():
        validate_all(cfg)
    silos = passing_silos(cfg)
    if not all((paths.silo_split(s) / "holdout.parquet").exists() for s in silos):
        split_all(cfg)
    return silos


def silo_sizes(cfg: Config) -> dict[str, int]:
    """Interactions per silo from the demo partition's manifest (used to balance silo hosts on one machine)."""
    manifest = json.loads((Paths.of(cfg).silos / "manifest.json").read_text())
    return {s: int(m["interactions"]) for s, m in manifest.items()}


def split_cold_ids(cfg: Config) -> np.ndarray:
    """The configured cold items (item ids) of this catalogue."""
    ev = cfg.evaluation
    from fedrec.core import coldstart

    return coldstart.cold_item_ids(catalogue_ids(cfg), ev.cold_item_fraction, ev.cold_seed)


def ensure_cold_split(cfg: Config, silos: list[str]) -> None:
    """Split again when the stored splits hold other cold items than configured (a changed fraction or seed)."""
    wanted = split_cold_ids(cfg)
    for silo in silos:
        stored = Split.load(Paths.of(cfg).silo_split(silo)).cold_items
        if not np.array_equal(np.asarray(stored, dtype=np.int64), wanted):
            split_all(cfg)
            return


def write_demo_databases(cfg: Config, out_dir: str | Path) -> dict[str, int]:
    """The demo silos (provisioned when missing) each written into ``<out_dir>/<silo>.sqlite``: table
    ``silo.table`` with the column names of the ``silo.*_column`` mapping, replacing a previous file atomically.
    Returns the rows per silo. A silo then reads it with ``silo.source = sqlite:///<out_dir>/{silo}.sqlite``."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mapping = source.column_mapping(cfg)
    rows: dict[str, int] = {}
    for silo_id in ensure_partitioned(cfg):
        frame = pd.read_parquet(Paths.of(cfg).silo_data(silo_id) / "interactions.parquet")
        frame = frame[list(source.COLUMNS)].rename(columns=mapping)
        schema, table = source.table_name(cfg, silo_id)
        fd, tmp = tempfile.mkstemp(prefix=f".{silo_id}.", suffix=".sqlite.tmp", dir=out)
        os.close(fd)
        try:
            engine = sa.create_engine(f"sqlite:///{tmp}", poolclass=NullPool)
            try:
                frame.to_sql(table, engine, schema=schema, index=False, chunksize=10_000,
                             dtype={c: sa.Integer() for c in frame.columns if frame[c].dtype.kind in "iu"})
            finally:
                engine.dispose()
            os.replace(tmp, out / f"{silo_id}.sqlite")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        rows[silo_id] = len(frame)
    return rows


def demo_source(out_dir: str | Path) -> str:
    """The silo.source value for :func:`write_demo_databases`' files (a relative directory stays relative: it is
    resolved against the working directory of the process that reads it)."""
    return f"sqlite:///{Path(out_dir).as_posix()}/{{silo}}.sqlite"
