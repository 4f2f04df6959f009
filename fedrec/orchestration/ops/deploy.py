"""The scheduled retraining deployment: `scheduled_retraining` (flows/scheduled.py) on a cron, in a process work
pool, its code loaded from this project's directory (a `set_working_directory` pull step, no image, offline).

A worker (`fedrec worker`, or `prefect worker start --pool <pool>`) on the machine with the project runs each
scheduled flow run in a subprocess whose working directory is the project: params.yaml, data/, state/, mlflow.db
and .prefect/ are the same as for `fedrec run`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.core.errors import ConfigError
from fedrec.orchestration.ops import OpsError

FLOW_NAME = "scheduled_retraining"
ENTRYPOINT = "flows/scheduled.py:scheduled_retraining"


@dataclass(frozen=True)
class Deployed:
    """A registered deployment as read back from the Prefect API."""

    id: str
    name: str  # <flow>/<deployment>
    work_pool: str
    pool_created: bool
    cron: str
    timezone: str
    parameters: dict[str, Any]
    working_directory: str


def project_dir(start: Path | None = None) -> Path:
    """The project checkout that holds flows/scheduled.py: the working directory, else this package's checkout."""
    for candidate in (Path(start or Path.cwd()), Path(__file__).resolve().parents[3]):
        if (candidate / ENTRYPOINT.split(":")[0]).is_file():
            return candidate.resolve()
    raise OpsError(f"no {ENTRYPOINT.split(':')[0]} under {Path(start or Path.cwd())}: run `fedrec deploy` in the "
                   "project's directory (a clone of this repository)")


def cron_schedule(cron: str, timezone: str):
    """A Prefect cron schedule, or a ConfigError naming what is wrong with it."""
    import zoneinfo

    from prefect.schedules import Cron

    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"operations.timezone {timezone!r} is no IANA time zone (e.g. UTC, Europe/Berlin)") from exc
    try:
        return Cron(cron, timezone=timezone)
    except ValueError as exc:
        raise ConfigError(f"invalid schedule {cron!r} (timezone {timezone!r}): {exc}".splitlines()[0]) from exc


def ensure_work_pool(name: str) -> bool:
    """Create process work pool ``name`` if it does not exist; True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type=ProcessWorker.type,
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
            return True
    if pool.type != ProcessWorker.type:
        raise OpsError(f"work pool {name!r} is a {pool.type!r} pool; the retraining needs a process pool "
                       "(pick another with --pool)")
    return False


def register(*, deployment: str, work_pool: str, cron: str, timezone: str, params_path: str,
             overrides: dict[str, Any] | None = None, project: Path | None = None) -> Deployed:
    """Register (or update) ``scheduled_retraining/<deployment>`` on ``cron``; create the pool if needed.
    ``params_path`` relative to the project directory stays relative (the flow runs there)."""
    from prefect import flow

    schedule = cron_schedule(cron, timezone)
    root = project_dir(project)
    path = Path(params_path)
    if path.is_absolute() and path.resolve().is_relative_to(root):
        params_path = str(path.resolve().relative_to(root))
    if not (root / params_path).is_file():
        raise ConfigError(f"{params_path}: no such params file (relative to {root})")
    created = ensure_work_pool(work_pool)
    retraining = flow.from_source(source=str(root), entrypoint=ENTRYPOINT)
    runner_deployment = retraining.to_deployment(
        name=deployment, work_pool_name=work_pool, schedules=[schedule],
        parameters={"params_path": params_path, "overrides": dict(overrides or {})},
        job_variables={"working_dir": str(root)}, concurrency_limit=1, tags=["fedrec"],
        description="Scheduled federated retraining: each silo's latest data, reports, then retention "
                    "(`fedrec deploy`).")
    deployment_id = runner_deployment.apply()
    return read_back(str(deployment_id), pool_created=created)


def read_back(deployment_id: str, pool_created: bool = False) -> Deployed:
    """The deployment as the Prefect API has it (its schedule, pool, parameters, pull step)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        dep = client.read_deployment(deployment_id)
        flow_name = client.read_flow(dep.flow_id).name
    cron = dep.schedules[0].schedule if dep.schedules else None
    workdir = next((step[key]["directory"] for step in dep.pull_steps or [] for key in step
                    if key.endswith("set_working_directory")), "")
    return Deployed(id=str(dep.id), name=f"{flow_name}/{dep.name}", work_pool=dep.work_pool_name or "",
                    pool_created=pool_created, cron=getattr(cron, "cron", ""), timezone=getattr(cron, "timezone", ""),
                    parameters=dict(dep.parameters), working_directory=workdir)
