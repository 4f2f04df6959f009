"""`scheduled_retraining`: what the `fedrec deploy` deployment runs on its cron, from a worker, in the project's
directory (the deployment's `set_working_directory` pull step).

    provision the demo silos (as `fedrec run`) ─► federated_training (a subflow; every silo agent re-validates and
    re-splits its silo's current data: each run trains on each silo's latest data version, recorded in MLflow as
    data_version.<silo>) ─► plots in <reports_dir>/<run id>/ ─► retention (`fedrec cleanup`'s, older than
    operations.retention_days)
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fedrec.core import env
from fedrec.core.config import load_config
from fedrec.flows.federated import run_demo
from fedrec.orchestration.ops.retention import cleanup


def _run_name() -> str:
    return f"retraining-{datetime.now(timezone.utc):%Y-%m-%d-%H%M}"


@task(name="retention", cache_policy=NO_CACHE)
def apply_retention(older_than_days: int) -> dict[str, Any]:
    """Delete the Prefect flow runs (with their task runs and artifacts) that ended before the retention window."""
    report = cleanup(older_than_days)
    get_run_logger().info("retention: %s", report.sentence())
    return report.to_dict()


@flow(name="scheduled_retraining", flow_run_name=_run_name)
def scheduled_retraining(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                         retention_days: int | None = None) -> dict[str, Any]:
    """Retrain the federation on every silo's latest data, write its reports, then apply the retention policy
    (``retention_days``, default operations.retention_days). Returns counts, metrics and run ids only."""
    env.apply_defaults(Path.cwd())  # what `fedrec run` gets, unless the worker's environment says otherwise
    cfg = load_config(params_path, overrides)
    summary = run_demo(params_path=params_path, overrides=overrides)
    k = cfg.evaluation.k
    retention = apply_retention(cfg.operations.retention_days if retention_days is None else retention_days)
    return {"run_id": summary["run_id"], "mlflow_run_id": summary["mlflow_run_id"],
            "model_uri": summary["model_uri"], "selected_round": summary["selected_round"],
            **{m: summary[m] for m in (f"hr@{k}", f"ndcg@{k}", f"full_hr@{k}", f"full_ndcg@{k}")},
            "silos": summary["silos"], "excluded": sorted(summary["excluded"]),
            "data_versions": summary.get("data_versions", {}), "reports": summary["reports"],
            "retention": retention}
