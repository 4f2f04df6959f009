"""Run the Great Expectations suite in ``expectations/`` on one silo's interactions.

The suite is data (JSON), applied with an ephemeral GE context so nothing is written
outside the report. Reports keep expectation names, columns and counts, never row values (GE's
``partial_unexpected_list`` examples are dropped): a report may leave the silo (hello, MLflow, logs). A failing silo raises :class:`SiloValidationError` naming the silo and
every failed expectation; the report (pass/fail, failures, counts) is saved either way.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fedrec.core.errors import SiloValidationError

SUITE_PATH = Path(__file__).resolve().parents[2] / "expectations" / "silo_interactions.json"
DERIVED_COUNT = "user_interaction_count"
#: 1 where the row's item is in the catalogue (or missing: the not-null expectation names that). GE resolves an
#: expectation's kwargs for every metric it computes: the catalogue itself as a value set (1,682 ids) was half of
#: a silo's validation time
DERIVED_IN_CATALOGUE = "item_in_catalogue"
# GE's suite-parameter parser (pyparsing) is not thread-safe; Prefect runs silos in threads.
_GE_LOCK = threading.Lock()


@dataclass(frozen=True)
class ValidationReport:
    silo_id: str
    success: bool
    n_rows: int
    n_users: int
    evaluated: int
    failures: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> list[str]:
        return [f"{f['expectation']}({f.get('column') or ''}): {f['detail']}" for f in self.failures]

    def save(self, path: str | Path, input_digest: str | None = None) -> None:
        """The report as JSON; ``input_digest`` (:func:`input_digest`, a passing report only) lets the next
        validation of the very same data take this verdict (:func:`saved_verdict`)."""
        record = asdict(self) | ({"input_digest": input_digest} if input_digest else {})
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(record, indent=2, default=str))

    def raise_if_failed(self) -> None:
        if not self.success:
            raise SiloValidationError(self.silo_id, self.summary())


def input_digest(df: pd.DataFrame, catalogue: list[int], min_user_interactions: int,
                 suite_path: str | Path = SUITE_PATH) -> str | None:
    """A digest of everything a verdict depends on: the rows (values, dtypes, column names, order), the
    catalogue, min_user_interactions, the suite's text and the Great Expectations version. None when the frame
    cannot be hashed (then it is always validated). The validation time (the timestamps' upper bound) is left
    out: only passing verdicts are taken again, and a row that was not in the future is not later."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        rows = pd.util.hash_pandas_object(df, index=False).to_numpy()
        ge = version("great_expectations")
    except (TypeError, ValueError, PackageNotFoundError):
        return None
    digest = hashlib.sha256(json.dumps({
        "columns": [str(c) for c in df.columns], "dtypes": [str(t) for t in df.dtypes], "rows": len(df),
        "min_user_interactions": int(min_user_interactions), "great_expectations": ge}).encode())
    digest.update(rows.tobytes())
    digest.update(pd.Series(catalogue, dtype="int64").to_numpy().tobytes())
    digest.update(Path(suite_path).read_bytes())
    return digest.hexdigest()


def saved_verdict(path: str | Path, digest: str | None) -> ValidationReport | None:
    """The passing report saved at ``path`` for input ``digest`` (:meth:`ValidationReport.save`), or None: the
    data, the catalogue, the suite or its settings changed since, or the report failed, or there is none."""
    if digest is None:
        return None
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("input_digest") != digest or record.get("success") is not True:
        return None
    try:
        return ValidationReport(**{k: record[k] for k in ValidationReport.__dataclass_fields__})
    except (KeyError, TypeError):
        return None


def load_suite(path: str | Path = SUITE_PATH):
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    spec = json.loads(Path(path).read_text())
    suite = gx.ExpectationSuite(name=spec["name"])
    for exp in spec["expectations"]:
        suite.add_expectation_configuration(
            ExpectationConfiguration(type=exp["type"], kwargs=exp["kwargs"], meta=exp.get("meta", {}))
        )
    return suite


def _with_derived_columns(df: pd.DataFrame, catalogue: list[int]) -> pd.DataFrame:
    out = df.copy()
    if "user_id" in out.columns:
        out[DERIVED_COUNT] = out.groupby("user_id", dropna=False)["user_id"].transform("size").astype("int64")
    else:
        out[DERIVED_COUNT] = pd.Series(dtype="int64")
    if "item_id" in out.columns:
        known = out["item_id"].isin(catalogue) | out["item_id"].isna()
        out[DERIVED_IN_CATALOGUE] = known.astype("int64")
    else:
        out[DERIVED_IN_CATALOGUE] = pd.Series(dtype="int64")
    return out


def _plain(value: Any) -> Any:
    """numpy scalars print as np.int64(2); users want 2."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def _failure(result) -> dict[str, Any]:
    cfg = result.expectation_config
    res = result.result or {}
    exc = (result.exception_info or {}) if isinstance(result.exception_info, dict) else {}
    if exc.get("raised_exception"):  # the message may quote data: only that it failed leaves this function
        detail = "could not be evaluated (the column is missing or of an unusable type)"
    elif "unexpected_count" in res:  # counts only: GE's partial_unexpected_list holds raw rows, which stay out
        detail = f"{res['unexpected_count']} unexpected value(s)"
        if res.get("unexpected_percent") is not None:
            detail += f" ({float(res['unexpected_percent']):.2f}% of rows)"
    else:  # table-level expectations observe counts or column names, not rows
        detail = f"observed {_plain(res.get('observed_value'))}"
    # a check on a derived column is reported on the column it checks (meta "column", e.g. item_id)
    return {"expectation": cfg.type, "column": (cfg.meta or {}).get("column") or cfg.kwargs.get("column"),
            "detail": detail}


def validate_interactions(
    df: pd.DataFrame,
    silo_id: str,
    catalogue: list[int],
    min_user_interactions: int,
    now: int | None = None,
    in_child: bool = False,
) -> ValidationReport:
    """Validate one silo's interactions; never raises for bad data (see :meth:`raise_if_failed`). ``in_child``:
    run Great Expectations in a child process of this one (shared by the silos validating at the same time, gone
    when none is), so a long-lived silo host never holds GE (140 MB per process, measured)."""
    if in_child:
        return GE_CHILD.run(_validate, df, silo_id, catalogue, min_user_interactions, now)
    with _GE_LOCK:
        return _validate(df, silo_id, catalogue, min_user_interactions, now)


class _Child:
    """One spawned worker process for this process's validations (its silos take turns): shut down once none has
    come for LINGER_S seconds."""

    LINGER_S = 1.0

    def __init__(self):
        self._lock, self._pool, self._busy, self._last = threading.Lock(), None, 0, 0.0

    def run(self, fn, *args):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with self._lock:
            if self._pool is None:  # spawn: a fork would copy Prefect's and torch's threads
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            self._busy += 1
            future = self._pool.submit(fn, *args)
        try:
            return future.result()
        finally:
            with self._lock:
                self._busy -= 1
                self._last = time.monotonic()
            timer = threading.Timer(self.LINGER_S, self._close_if_idle)
            timer.daemon = True
            timer.start()

    def _close_if_idle(self) -> None:
        with self._lock:
            if self._pool is not None and self._busy == 0 and time.monotonic() - self._last >= self.LINGER_S * 0.99:
                self._pool.shutdown(wait=False)
                self._pool = None

    def close(self) -> None:
        """Now, waiting for the child to exit (nothing may be in flight)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


#: this process's child for Great Expectations (fedrec.silo.prevalidation uses it too)
GE_CHILD = _Child()

def _validate(df, silo_id, catalogue, min_user_interactions, now) -> ValidationReport:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas(f"silo_{silo_id}")
        .add_dataframe_asset("interactions")
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": _with_derived_columns(df, [int(i) for i in catalogue])})
    )
    params = {
        "now": int(now if now is not None else time.time()),
        "min_user_interactions": int(min_user_interactions),
    }
    result = batch.validate(load_suite(), expectation_parameters=params)
    missing = {c for c in ("user_id", "item_id", "rating", "timestamp") if c not in df.columns}
    failures = [_failure(r) for r in result.results
                if not r.success and r.expectation_config.kwargs.get("column") not in missing]
    if missing:
        failures.insert(0, {"expectation": "required columns", "column": None,
                            "detail": f"missing column(s) {sorted(missing)}"})
    n_users = int(df["user_id"].nunique()) if "user_id" in df.columns else 0
    return ValidationReport(
        silo_id=silo_id, success=bool(result.success) and not failures, n_rows=int(len(df)),
        n_users=n_users, evaluated=len(result.results), failures=failures,
    )
