"""Data tasks: prepare the partitioned silos, validate one silo, split one silo."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from fedrec.core.config import Config
from fedrec.silo import data as pipeline
from fedrec.silo.validation import ValidationReport
from fedrec.tasks import IO_RETRIES


@task(name="prepare-silos", **IO_RETRIES, cache_policy=NO_CACHE)
def prepare_silos(cfg: Config) -> list[str]:
    """Load/synthesize and partition when the outputs are missing; returns every silo id."""
    return pipeline.ensure_partitioned(cfg)


@task(name="validate", task_run_name="validate-silo-{silo_id}", cache_policy=NO_CACHE)
def validate_silo(cfg: Config, silo_id: str) -> ValidationReport:
    """Great Expectations on the silo's interactions; on success its leave-one-out split is written."""
    report = pipeline.validate_silo(cfg, silo_id)
    if report.success:
        pipeline.split_silo(cfg, silo_id)
    return report
