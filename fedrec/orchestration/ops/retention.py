"""Retention of Prefect's run history (≈18 MB of database per 40-round federation: ~1,300 task runs, their
states, logs and events).

`cleanup` deletes, through the Prefect API, every flow run that ended (terminal state) before the cutoff, what
Prefect 3 does with it checked by tests/orchestration/test_operations.py:

- the flow run (DELETE /flow_runs/{id}): the database cascades it to its task runs, their states and the run's
  inputs; the server queues the deletion of its logs (a background job);
- its artifacts: no cascade, no background job: deleted one by one here (DELETE /artifacts/{id});
- its events (most of the database): not tied to runs; Prefect's event retention trims them (7 days by default).

`vacuum_env` is the same policy for Prefect's own db_vacuum service (hourly: old flow runs with their logs and
artifacts; daily: orphans), which `fedrec ui` / `fedrec worker` enable on the Prefect server they start."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

#: Prefect's events retention default (it keeps the last 7 days of events, the bulk of the database)
EVENTS_RETENTION_DAYS = 7
_BATCH = 100


@dataclass(frozen=True)
class CleanupReport:
    cutoff: str  # ISO 8601, UTC
    flow_runs: int
    task_runs: int
    artifacts: int
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (f"{verb} {self.flow_runs} flow run(s) that ended before {self.cutoff} with their {self.task_runs} "
                f"task run(s), {self.artifacts} artifact(s) and their logs")


def vacuum_env(retention_days: int) -> dict[str, str]:
    """Prefect server settings for the same retention, by its own db_vacuum service: old flow runs with their logs
    and artifacts (hourly), orphaned logs and artifacts (daily), events older than min(7, retention_days) days."""
    if retention_days < 1:  # Prefect's minimum is an hour; keep its defaults
        return {}
    seconds = int(timedelta(days=retention_days).total_seconds())
    return {"PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
            "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(seconds),
            "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": f"P{min(retention_days, EVENTS_RETENTION_DAYS)}D"}


def _old_runs_filter(cutoff: datetime):
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterEndTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import TERMINAL_STATES

    return FlowRunFilter(end_time=FlowRunFilterEndTime(before_=cutoff),
                         state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(TERMINAL_STATES))))


def _count_task_runs(client, flow_run_ids: list) -> int:
    # POST /task_runs/count (the sync client has no method for it); the client's own httpx session keeps its auth
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    body = {"flow_runs": FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)).model_dump(mode="json",
                                                                                          exclude_unset=True)}
    response = client._client.post("/task_runs/count", json=body)
    response.raise_for_status()
    return int(response.json())


def cleanup(older_than_days: float, *, now: datetime | None = None, dry_run: bool = False) -> CleanupReport:
    """Delete the flow runs that ended more than ``older_than_days`` ago (see the module doc), via the API of the
    current Prefect settings. Running and scheduled runs are never touched."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    if older_than_days < 0:
        raise ValueError("older_than_days must be >= 0")
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=older_than_days)
    flow_runs = task_runs = artifacts = 0
    seen: set = set()
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            runs = client.read_flow_runs(flow_run_filter=_old_runs_filter(cutoff), sort=FlowRunSort.END_TIME_DESC,
                                         limit=_BATCH, offset=offset)
            ids = [r.id for r in runs if r.id not in seen]
            if not ids:
                break
            seen.update(ids)
            task_runs += _count_task_runs(client, ids)
            flow_runs += len(ids)
            of_runs = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
            if dry_run:
                offset += len(runs)
                counted = 0
                while batch := client.read_artifacts(artifact_filter=of_runs, limit=_BATCH, offset=counted):
                    counted += len(batch)
                artifacts += counted
                continue
            deleted: set = set()
            while (batch := client.read_artifacts(artifact_filter=of_runs, limit=_BATCH)) \
                    and not deleted.issuperset(a.id for a in batch):
                for artifact in batch:
                    try:
                        client.delete_artifact(artifact.id)
                    except ObjectNotFound:
                        pass
                    deleted.add(artifact.id)
            artifacts += len(deleted)
            for run_id in ids:
                try:
                    client.delete_flow_run(run_id)
                except ObjectNotFound:  # another cleanup (or the server's vacuum) was faster
                    pass
            remaining = client.read_flow_runs(flow_run_filter=_old_runs_filter(cutoff).model_copy(
                update={"id": FlowRunFilterId(any_=ids)}), limit=1)
            if remaining:
                raise RuntimeError(f"flow run {remaining[0].id} was not deleted")
    return CleanupReport(cutoff=cutoff.isoformat(timespec="seconds"), flow_runs=flow_runs, task_runs=task_runs,
                         artifacts=artifacts, dry_run=dry_run)
