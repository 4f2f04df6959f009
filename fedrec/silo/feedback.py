"""The feedback loop at a silo: new interactions are validated with the same Great Expectations suite, appended
as a new batch of the silo's data (data/feedback/<silo>/batch-*.parquet) and recorded as a new DVC data version;
the next federated run trains on them (every silo agent reads its data anew at each run).

Invalid feedback is refused whole with a named error and nothing is appended.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.core.config import Config
from fedrec.core.errors import FedrecError, SiloValidationError
from fedrec.core.fsperm import private_file
from fedrec.silo import data as pipeline
from fedrec.silo.validation import validate_interactions
from fedrec.wire.exchange import check_silo_id

COLUMNS = ("user_id", "item_id", "rating", "timestamp")


class FeedbackError(FedrecError):
    """A feedback file that cannot be read as interactions (missing file, columns or numbers)."""


class InvalidFeedbackError(SiloValidationError):
    """Feedback whose rows would make the silo's data fail its Great Expectations suite: refused whole."""

    def __init__(self, silo_id: str, failures: list[str]):
        self.silo_id, self.failures = silo_id, list(failures)
        FedrecError.__init__(self, f"feedback for silo {silo_id!r} refused, nothing appended: "
                             + "; ".join(self.failures) + ". Fix the feedback file and run `fedrec feedback` again.")


@dataclass(frozen=True)
class FeedbackResult:
    silo: str
    rows: int
    batch: Path
    data_version: str
    #: what DVC recorded ("dvc.lock: stage partition" or why nothing was recorded)
    dvc: str


def read_feedback(path: str | Path) -> pd.DataFrame:
    """A CSV of user_id,item_id,rating[,timestamp] (timestamp defaults to now), with the suite's dtypes."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError as exc:
        raise FeedbackError(f"{path}: no such file") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FeedbackError(f"{path}: not a CSV of interactions ({exc})") from exc
    if "timestamp" not in frame.columns:
        frame["timestamp"] = int(time.time())
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise FeedbackError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)} (timestamp optional)")
    extra = [c for c in frame.columns if c not in COLUMNS]
    if extra:
        raise FeedbackError(f"{path}: unexpected column(s) {extra}; expected {list(COLUMNS)}")
    if frame.empty:
        raise FeedbackError(f"{path}: no rows")
    out = {}
    for col in COLUMNS:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = int(values.isna().sum())
        if bad:
            raise FeedbackError(f"{path}: column {col!r} has {bad} empty or non-numeric value(s)")
        out[col] = values
    return pd.DataFrame(out)


def _as_dtypes(feedback: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """``feedback`` in the silo data's column dtypes; whole numbers where the data holds integers."""
    out = {}
    for col in like.columns:
        if col not in feedback.columns:
            raise FeedbackError(f"feedback lacks column {col!r} of the silo's data")
        values = pd.to_numeric(feedback[col], errors="coerce")
        if values.isna().any():
            raise FeedbackError(f"feedback column {col!r} has empty or non-numeric values")
        if pd.api.types.is_integer_dtype(like[col].dtype) and not np.all(np.mod(values, 1) == 0):
            raise FeedbackError(f"feedback column {col!r} must hold whole numbers, as the silo's data does")
        out[col] = values.astype(like[col].dtype)
    return pd.DataFrame(out)


def append_feedback(cfg: Config, silo_id: str, feedback: pd.DataFrame, *, record_dvc: bool = True) -> FeedbackResult:
    """Validate the silo's data with ``feedback`` added; if it passes, write it as a new batch and record the new
    data version with DVC. Raises :class:`InvalidFeedbackError` (nothing written) if it does not."""
    silo_id = check_silo_id(silo_id)
    current = pipeline.silo_interactions(cfg, silo_id)
    feedback = _as_dtypes(feedback, current)
    union = pd.concat([current, feedback], ignore_index=True)
    catalogue = pipeline.read_catalogue(pipeline.Paths.of(cfg).catalogue)["item_id"].tolist()
    report = validate_interactions(union, silo_id, catalogue, cfg.data.min_user_interactions)
    if not report.success:
        raise InvalidFeedbackError(silo_id, report.summary())
    folder = pipeline.Paths.of(cfg).silo_feedback(silo_id)
    batch = folder / f"batch-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.time_ns() % 10**9:09d}.parquet"
    with private_file(batch, overwrite=False) as fh:  # 0600 in 0700 (the silo's users' rows); never replaces a batch
        feedback.to_parquet(fh, index=False)
    recorded = record_data_version(cfg) if record_dvc else "not recorded (record_dvc=False)"
    return FeedbackResult(silo=silo_id, rows=len(feedback), batch=batch, data_version=pipeline.data_version(union),
                          dvc=recorded)


def dvc_root(start: Path) -> Path | None:
    for folder in [start.resolve(), *start.resolve().parents]:
        if (folder / ".dvc").is_dir():
            return folder
    return None


def record_data_version(cfg: Config) -> str:
    """Record the silos' data (feedback included) as the `partition` stage's new outputs in dvc.lock and DVC's
    cache: a new data version that downstream stages (split, federate) see as changed, and that
    `dvc exp apply`/`dvc checkout` can restore. Done whether or not the pipeline ran through DVC before (`make run`
    does not): a batch outside DVC's cache would be deleted by the next `dvc exp run`, which first resets every
    stage output to the lock. Returns what happened, in words (a failure says what is at risk)."""
    work = Path(cfg.data.work_dir)
    root = dvc_root(work)
    if root is None:
        return "no DVC repository around the data: not versioned (run from the project to version it)"
    dvc = Path(sys.executable).parent / "dvc"
    try:
        done = subprocess.run([str(dvc) if dvc.exists() else "dvc", "commit", "--force", "partition"], cwd=root,
                              capture_output=True, text=True)
    except OSError as exc:
        done = subprocess.CompletedProcess(exc.filename or "dvc", 127, "", str(exc))
    if done.returncode != 0:
        return (f"NOT versioned: dvc commit failed ({done.stderr.strip()[-300:]}); until `dvc commit partition` "
                "succeeds, a `dvc exp run` or `dvc checkout` would delete the new batch")
    return "dvc.lock: stage partition (data/silos, data/feedback) committed to DVC's cache"
