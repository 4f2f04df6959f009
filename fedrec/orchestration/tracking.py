"""The one place that talks to MLflow.

Default store: SQLite ``mlflow.db`` and ``mlartifacts/`` in the working directory (MLflow 3 refuses
the plain file store). ``tracking.uri`` in params.yaml or ``MLFLOW_TRACKING_URI`` point elsewhere,
e.g. a shared ``mlflow server``. Only configs, metrics and model weights are logged, never key material.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from fedrec.core.config import Config, flatten, to_dict


def _quiet_mlflow() -> None:
    """MLflow's INFO lines and the pickle-format notice on every log_model stay out of fedrec's output (set when a
    run opens, not at import)."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)


_WARMING: threading.Thread | None = None


def warm_up(cfg: Config) -> None:
    """Import MLflow and open its store in a background thread (≈4.5 s of CPU, nearly all imports), started while
    this process waits for its Prefect server: the run's :func:`mlflow_run` then finds it done instead of
    competing for the CPU with the silos' start-up; then matplotlib, for the run's plots at its end (0.8 s
    there). Errors are left to :func:`mlflow_run`, which names them."""
    global _WARMING

    def work() -> None:
        with contextlib.suppress(Exception):
            _quiet_mlflow()
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri(cfg)).get_experiment_by_name(cfg.tracking.experiment)
            import matplotlib

            matplotlib.use("Agg")  # as the run's plots use it (fedrec.orchestration.ops.plots), at its end
            import matplotlib.pyplot  # noqa: F401

    if _WARMING is None:
        _WARMING = threading.Thread(target=work, name="mlflow-warm-up", daemon=True)
        _WARMING.start()


def _warmed() -> None:
    """Wait for :func:`warm_up`'s thread, if one runs (never two parties opening the store at once)."""
    global _WARMING
    if _WARMING is not None:
        _WARMING.join()
        _WARMING = None


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _experiment_id(mlflow, name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = mlflow.get_tracking_uri()
    location = None
    if uri.startswith("sqlite:"):  # keep artifacts beside the local db, not in the cwd's ./mlruns
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


class RunLogger:
    """Thin facade over the active MLflow run."""

    def __init__(self, mlflow, run):
        self._mlflow = mlflow
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id

    def log_config(self, cfg: Config) -> None:
        self._mlflow.log_params({k: str(v)[:500] for k, v in flatten(to_dict(cfg)).items()})

    def log_params(self, params: dict[str, Any]) -> None:
        self._mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(tags)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items()}
        # by run id: MLflow's active run is per thread, and the rounds' metrics are logged from a thread of their own
        self._mlflow.log_metrics(clean, step=step, run_id=self.run_id)

    def logged_steps(self, metric: str) -> set[int]:
        """The steps at which ``metric`` was logged in this run (none when it never was)."""
        from mlflow.tracking import MlflowClient

        return {m.step for m in MlflowClient().get_metric_history(self.run_id, metric.replace("@", "_at_"))}

    def log_dict(self, payload: dict[str, Any], artifact_file: str) -> None:
        self._mlflow.log_dict(payload, artifact_file)

    def log_saved_figure(self, figure, path: Path) -> None:
        """A figure already saved as ``path``: that file becomes the run's artifact (matplotlib renders a figure
        again on every save: ≈0.1 s a plot here)."""
        import matplotlib.pyplot as plt

        self._mlflow.log_artifact(str(path))
        plt.close(figure)

    def log_torch_model(self, model, name: str, registered_model_name: str | None = None) -> str:
        """Log a torch module (weights + code reference); optionally register it. Returns the model URI."""
        import mlflow.pytorch
        import torch

        info = mlflow.pytorch.log_model(
            model.cpu(), name=name, pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            registered_model_name=registered_model_name, serialization_format="pickle",
        )
        return info.model_uri


@contextmanager
def mlflow_run(cfg: Config, run_name: str, tags: dict[str, str] | None = None,
               run_id: str | None = None) -> Iterator[RunLogger]:
    """A new MLflow run, or (``run_id``) the continuation of an existing one, e.g. a resumed federation."""
    _warmed()
    import mlflow

    _quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri(cfg))
    if run_id is not None:
        with mlflow.start_run(run_id=run_id) as run:
            yield RunLogger(mlflow, run)
        return
    experiment_id = _experiment_id(mlflow, cfg.tracking.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags or {}) as run:
        yield RunLogger(mlflow, run)
