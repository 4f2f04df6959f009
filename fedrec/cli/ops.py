"""`fedrec deploy | worker | ui | cleanup`: scheduled retraining and the local UIs (registered on fedrec.cli.app's app)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from fedrec.cli.options import (
    ParamsOpt,
    SetOpt,
    command_config,
    err,
    merged_overrides,
    user_errors,
)


def register(app: typer.Typer) -> None:
    """Add the operations commands to ``app``."""

    @app.command()
    def deploy(cron: Optional[str] = typer.Option(None, "--cron", help='cron of the runs, e.g. "0 3 * * *" '
                                                  "(default: operations.schedule)"),
               timezone: Optional[str] = typer.Option(None, "--timezone", help="default: operations.timezone"),
               pool: Optional[str] = typer.Option(None, "--pool", help="process work pool (default: "
                                                  "operations.work_pool); created if missing"),
               name: Optional[str] = typer.Option(None, "--name", help="default: operations.deployment"),
               as_json: bool = typer.Option(False, "--json", help="print the registered deployment as JSON"),
               params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
        """Register the scheduled retraining: a deployment of `scheduled_retraining` (provision the silos' data,
        federate, reports, retention) on a cron, in a process work pool, run from this project's directory.
        The -S overrides are kept as the runs' overrides."""
        from fedrec.orchestration.launch import prefect_api
        from fedrec.orchestration.ops import deploy as dep

        with user_errors():
            cfg = command_config(params, set_, {"operations.schedule": cron, "operations.timezone": timezone,
                                         "operations.work_pool": pool, "operations.deployment": name})
            ops = cfg.operations
            dep.cron_schedule(ops.schedule, ops.timezone)  # a bad cron fails before any server starts
            with prefect_api() as api:
                deployed = dep.register(deployment=ops.deployment, work_pool=ops.work_pool, cron=ops.schedule,
                                        timezone=ops.timezone, params_path=str(params),
                                        overrides=merged_overrides(set_))
        err.print(f"registered [bold]{deployed.name}[/] on cron [bold]{deployed.cron}[/] ({deployed.timezone}) in "
                  f"work pool {deployed.work_pool!r}" + (" (created)" if deployed.pool_created else "")
                  + f", running from {deployed.working_directory} (Prefect API {api})")
        err.print(f"start its worker: [bold]fedrec worker[/] (or, with `fedrec ui` running: "
                  f"PREFECT_HOME=.prefect prefect worker start --pool {deployed.work_pool}); "
                  f"a run now: prefect deployment run '{deployed.name}'")
        if as_json:
            sys.stdout.write(json.dumps(deployed.__dict__) + "\n")

    @app.command()
    def worker(pool: Optional[str] = typer.Option(None, "--pool", help="default: operations.work_pool"),
               run_once: bool = typer.Option(False, "--run-once", help="take the runs due now, then exit"),
               params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
        """Serve the scheduled retraining: a process worker of the work pool, against `fedrec ui`'s Prefect server
        (or PREFECT_API_URL's), else against a Prefect server it starts (its scheduler creates the cron's runs).
        Ctrl-C stops both."""
        from fedrec.orchestration.ops.ui import run_worker

        with user_errors():
            cfg = command_config(params, set_)
            ops = cfg.operations
            code = run_worker(pool=pool or ops.work_pool, prefect_port=ops.prefect_port,
                              retention_days=ops.retention_days, log_dir=Path(cfg.federation.state_dir) / "logs" / "ui",
                              echo=err.print, run_once=run_once)
        raise typer.Exit(code=code)

    @app.command()
    def ui(prefect_port: Optional[int] = typer.Option(None, "--prefect-port", help="default: operations.prefect_port"),
           mlflow_port: Optional[int] = typer.Option(None, "--mlflow-port", help="default: operations.mlflow_port"),
           params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
        """Start a Prefect server and an MLflow server on 127.0.0.1 over this project's stores, point this project's
        runs at them, print both URLs; Ctrl-C stops both."""
        from fedrec.orchestration.ops.ui import run_ui
        from fedrec.orchestration.tracking import tracking_uri

        with user_errors():
            cfg = command_config(params, set_, {"operations.prefect_port": prefect_port,
                                         "operations.mlflow_port": mlflow_port})
            ops = cfg.operations
            run_ui(prefect_port=ops.prefect_port, mlflow_port=ops.mlflow_port, tracking_uri=tracking_uri(cfg),
                   retention_days=ops.retention_days, log_dir=Path(cfg.federation.state_dir) / "logs" / "ui",
                   echo=err.print)

    @app.command()
    def cleanup(older_than_days: Optional[float] = typer.Option(None, "--older-than-days", min=0,
                                                                help="default: operations.retention_days"),
                dry_run: bool = typer.Option(False, "--dry-run", help="count, delete nothing"),
                as_json: bool = typer.Option(False, "--json", help="print the counts as JSON"),
                params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
        """Retention: delete the Prefect flow runs that ended more than N days ago, with their task runs, logs and
        artifacts (events: Prefect's own retention, 7 days); says how many."""
        from fedrec.orchestration.launch import prefect_api
        from fedrec.orchestration.ops.retention import cleanup as run_cleanup

        with user_errors():
            cfg = command_config(params, set_)
            days = cfg.operations.retention_days if older_than_days is None else older_than_days
            with prefect_api():
                report = run_cleanup(days, dry_run=dry_run)
        err.print(report.sentence())
        if as_json:
            sys.stdout.write(json.dumps(report.to_dict()) + "\n")
