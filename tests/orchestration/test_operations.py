"""Scheduled retraining and monitoring, against real servers on loopback: `fedrec ui` (a Prefect server and an
MLflow server, in a PREFECT_HOME of the test's own), `fedrec deploy` (read back through the Prefect API), a triggered
run executed by a real `fedrec worker` process, `fedrec cleanup`, headless-Chromium screenshots of the pages, and
Ctrl-C stopping everything. The tests of this module run in order against one `fedrec ui`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml
from typer.testing import CliRunner

from fedrec.coordinator.report import RoundRecord
from fedrec.orchestration.ops import procs
from fedrec.orchestration.ops.ui import STATE_FILE

from conftest import ROOT, make_tiny_params
from support import screenshot

pytestmark = pytest.mark.slow  # real servers, subprocess CLIs or whole federations: not in `make test-fast`

POOL = "fedrec-test-pool"
DEPLOYMENT = "retraining-test"
SCREENSHOTS = ROOT / "reports" / "screenshots"


@dataclass
class UI:
    proc: subprocess.Popen
    home: Path
    params: Path
    base: Path
    env: dict
    prefect: str
    mlflow: str
    log: Path

    @property
    def api(self) -> str:
        return f"{self.prefect}/api"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedrec.cli.app", *args]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """`fedrec ui` on free ports over a fresh PREFECT_HOME and the tiny run's MLflow store; this process's Prefect
    client points at it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    base = tmp_path_factory.mktemp("ops")
    home = base / "prefect-home"
    home.mkdir()
    params = make_tiny_params(base)
    # each silo's round its own task run here (the default logs a line per round instead: test_parties)
    params["operations"] = {"reports_dir": str(base / "reports"), "retention_days": 30, "silo_round_tasks": True}
    params_path = base / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(home)}
    prefect_port, mlflow_port = procs.free_port(), procs.free_port()
    log = base / "ui.log"
    with open(log, "wb") as out:
        # started with SIGINT ignored, as a background job of a script starts it: Ctrl-C must still stop it
        proc = subprocess.Popen(_cli("ui", "-p", str(params_path), "--prefect-port", str(prefect_port),
                                     "--mlflow-port", str(mlflow_port)), stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    started = UI(proc, home, params_path, base, env, f"http://127.0.0.1:{prefect_port}",
                 f"http://127.0.0.1:{mlflow_port}", log)
    deadline = time.monotonic() + 150
    while not (home / STATE_FILE).exists():  # written once both servers answer
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "fedrec ui did not come up:\n" + log.read_text()
        time.sleep(0.5)
    try:
        with temporary_settings(updates={PREFECT_API_URL: started.api}):
            yield started
    finally:
        if proc.poll() is None:  # a test failed before the Ctrl-C test
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def test_ui_serves_prefect_and_mlflow_and_points_the_project_profile_at_prefect(ui):
    state = json.loads((ui.home / STATE_FILE).read_text())

    assert procs.answers(f"{ui.api}/health") and procs.answers(f"{ui.mlflow}/health")
    assert procs.answers(ui.prefect) and procs.answers(ui.mlflow)  # the UIs' pages, not only the APIs
    out = ui.log.read_text()
    assert f"Prefect UI: {ui.prefect}" in out and f"MLflow UI:  {ui.mlflow}" in out
    assert state["prefect_api"] == ui.api and state["pid"] == ui.proc.pid
    assert f'PREFECT_API_URL = "{ui.api}"' in (ui.home / "profiles.toml").read_text()


def test_deploy_rejects_a_bad_cron_before_starting_anything(ui):
    from fedrec.cli.app import app

    result = CliRunner().invoke(app, ["deploy", "--cron", "61 3 * * *", "-p", str(ui.params)])

    assert result.exit_code == 2
    assert "invalid schedule '61 3 * * *'" in " ".join(result.output.split())


def test_deploy_registers_the_scheduled_flow_with_its_cron(ui):
    # Execute: a separate `fedrec deploy` that finds the UI's server through the project's profile only
    done = subprocess.run(_cli("deploy", "-p", str(ui.params), "--pool", POOL, "--name", DEPLOYMENT,
                               "--cron", "30 2 * * *", "--json"), env=ui.env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    # re-registering replaces the schedule (one cron, not two)
    from fedrec.orchestration.ops.deploy import read_back, register

    again = register(deployment=DEPLOYMENT, work_pool=POOL, cron="0 3 * * *", timezone="UTC",
                     params_path=str(ui.params))

    # Assert: read back through the API
    with _client() as client:
        dep = client.read_deployment_by_name(f"scheduled_retraining/{DEPLOYMENT}")
        pool = client.read_work_pool(POOL)
    assert printed["pool_created"] is True and printed["cron"] == "30 2 * * *"
    assert again.id == printed["id"] == str(dep.id) and again.pool_created is False
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in dep.schedules] == [("0 3 * * *", "UTC", True)]
    assert read_back(printed["id"]).cron == "0 3 * * *"
    assert pool.type == "process" and dep.work_pool_name == POOL
    assert dep.entrypoint == "flows/scheduled.py:scheduled_retraining"
    assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    assert dep.parameters == {"params_path": str(ui.params), "overrides": {}}
    assert dep.global_concurrency_limit.limit == 1  # one retraining at a time: a late run queues


def _finished_run(client, name: str, with_children: bool):
    """A flow run of a throwaway flow, completed now (the API stamps states with the server's time)."""
    from prefect import flow, task
    from prefect.client.schemas.actions import ArtifactCreate, LogCreate
    from prefect.states import Completed, Running

    @flow(name="retention-probe")
    def probe():  # pragma: no cover - never run, only named
        pass

    @task(name="probe-task")
    def probe_task():  # pragma: no cover
        pass

    run = client.create_flow_run(probe, name=name, state=Running())
    task_run = None
    if with_children:
        task_run = client.create_task_run(probe_task, run.id, dynamic_key="0", state=Completed())
        client.create_artifact(ArtifactCreate(key=f"{name}-note", type="markdown", data="probe",
                                              flow_run_id=run.id, task_run_id=task_run.id))
        from datetime import datetime, timezone

        client.create_logs([LogCreate(name="probe", level=20, message=f"{name} says hello",
                                      timestamp=datetime.now(timezone.utc), flow_run_id=run.id)])
    client.set_flow_run_state(run.id, Completed(), force=True)
    return client.read_flow_run(run.id), task_run


def test_cleanup_deletes_runs_that_ended_before_the_cutoff_and_keeps_newer(ui):
    # Prepare: an older run (a task run, an artifact, a log) and, 2 s later, a newer one (the API stamps
    # states with the server's clock: no run can be made to have ended 30 days ago)
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.exceptions import ObjectNotFound

    from fedrec.cli.app import app

    with _client() as client:
        old, old_task = _finished_run(client, "probe-old", with_children=True)
        time.sleep(2.0)
        new, _ = _finished_run(client, "probe-new", with_children=False)
    cutoff = old.end_time.timestamp() + 1.0  # between the two
    old_logs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[old.id]))
    with _client() as client:  # logs reach the database through the server's queue
        deadline = time.monotonic() + 20
        while not client.read_logs(old_logs) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert client.read_logs(old_logs), "the probe's log never arrived"
    assert old.end_time.timestamp() < cutoff < new.end_time.timestamp()
    runner = CliRunner()

    # Execute: a dry run, then the cleanup (the CLI's cutoff is its own now minus N days)
    dry = runner.invoke(app, ["cleanup", "--older-than-days", str((time.time() - cutoff) / 86400), "--dry-run",
                              "--json", "-p", str(ui.params)])
    real = runner.invoke(app, ["cleanup", "--older-than-days", str((time.time() - cutoff) / 86400), "--json",
                               "-p", str(ui.params)])

    # Assert
    assert dry.exit_code == 0 and real.exit_code == 0, dry.output + real.output
    dry_counts, counts = json.loads(dry.stdout.splitlines()[-1]), json.loads(real.stdout.splitlines()[-1])
    assert (dry_counts["flow_runs"], dry_counts["task_runs"], dry_counts["artifacts"], dry_counts["dry_run"]) == \
        (1, 1, 1, True)
    assert (counts["flow_runs"], counts["task_runs"], counts["artifacts"]) == (1, 1, 1)
    assert "deleted 1 flow run(s)" in " ".join(real.stderr.split())
    with _client() as client:
        with pytest.raises(ObjectNotFound):
            client.read_flow_run(old.id)
        with pytest.raises(ObjectNotFound):  # the database cascades a flow run's delete to its task runs
            client.read_task_run(old_task.id)
        assert client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[old.id]))) == []
        assert client.read_flow_run(new.id).state.is_completed()
        # the API's delete queues the run's logs for deletion (a background job of the server)
        deadline = time.monotonic() + 20
        while client.read_logs(old_logs) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert client.read_logs(old_logs) == []


@pytest.fixture(scope="module")
def scheduled_run(ui):
    """A run of the deployment, created now and executed by a real `fedrec worker --run-once` process."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(f"scheduled_retraining/{DEPLOYMENT}", timeout=0)
    started = time.monotonic()
    done = subprocess.run(_cli("worker", "--pool", POOL, "--run-once", "-p", str(ui.params)), env=ui.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return flow_run.id, done, time.monotonic() - started


def _children(client, parent_id):
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    return client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))


def _task_names(client, flow_run_id) -> list[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return sorted(t.name for t in client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))))


def test_a_triggered_run_is_executed_by_the_worker_and_visible_through_the_api(ui, scheduled_run):
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterTags,
    )

    run_id, worker, seconds = scheduled_run
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    with _client() as client:
        run = client.read_flow_run(run_id)
        (federation,) = _children(client, run_id)
        silo_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"federation:{federation.id}"])))
        subflows = _children(client, federation.id)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[federation.id])))
        retraining_tasks = _task_names(client, run_id)
        federation_tasks = _task_names(client, federation.id)
        silo_tasks = _task_names(client, silo_runs[0].id)
        flow_name = client.read_flow(federation.flow_id).name

    # the deployment's run, on the pool, completed; the federation is its subflow, each silo a flow run of its own
    assert run.state.is_completed(), run.state
    assert run.deployment_id is not None and run.work_pool_name == POOL and run.name.startswith("retraining-")
    assert flow_name == "federated_training" and federation.state.is_completed()
    # one federation, one thing: the silo runs are its subflow runs, named after it and tagged with its run id
    assert federation.name.startswith("federation-2"), federation.name  # federation-<UTC time>
    assert sorted(r.name for r in silo_runs) == [f"{federation.name}-silo-{s}" for s in ("0", "1", "2")]
    assert sorted(r.id for r in subflows) == sorted(r.id for r in silo_runs)
    assert all(r.state.is_completed() for r in silo_runs)
    assert [t.rsplit("-", 1)[0] for t in retraining_tasks] == ["federated_training", "retention"]  # subflow, task
    assert {"round-1", "round-2", "evaluate-round-1", "evaluate-round-2"} <= set(federation_tasks)
    assert any(t.startswith("silo-") and "-round-" in t for t in silo_tasks), silo_tasks  # silo_round_tasks
    # one table artifact per round (rows: the silos and "all"), and the federation's summary
    tables = sorted((a for a in artifacts if a.key.startswith("fedrec-round")), key=lambda a: a.key)
    assert [(a.key, a.type) for a in tables] == [("fedrec-round-0001", "table"), ("fedrec-round-0002", "table")]
    rows = json.loads(tables[-1].data)
    assert [r["silo"] for r in rows] == ["0", "1", "2", "all"]
    assert all(r["bytes_sent"] > 0 and 0.0 <= r["test_hr@10"] <= 1.0 for r in rows)
    assert tables[-1].description.startswith("**Round 2**")
    (summary,) = [a for a in artifacts if a.key == "fedrec-summary"]
    assert f"Federation {federation.id}" in summary.data and "data version of silo 0" in summary.data
    assert f"`{federation.name}-silo-<silo>`" in summary.data
    print(f"scheduled run: worker process took {seconds:.1f}s")


def test_the_scheduled_run_tracks_he_cost_per_silo_metrics_and_plots(ui, scheduled_run):
    run_id, worker, _ = scheduled_run
    with _client() as client:
        (federation,) = _children(client, run_id)
    params = yaml.safe_load(ui.params.read_text())
    client = mlflow.MlflowClient(params["tracking"]["uri"])
    (run,) = client.search_runs(client.get_experiment_by_name("fedrec-test").experiment_id,
                                f"tags.prefect_flow_run = '{federation.id}'")
    rid = run.info.run_id

    for metric in ("he/seconds", "he/bytes_expansion", "silo/1/seconds_encrypt", "silo/2/test_hr_at_10",
                   "val_ndcg_at_10", "train_loss"):
        assert [m.step for m in client.get_metric_history(rid, metric)] == [1, 2], metric
    assert all(m.value > 1.0 for m in client.get_metric_history(rid, "he/bytes_expansion"))  # ciphertext > fp32
    assert {f"data_version.{s}" for s in "012"} <= set(run.data.tags)
    logged = {a.path for a in client.list_artifacts(rid)}
    assert {"training_curves.png", "per_silo_hr_at_10.png", "hr_ndcg_per_round.png"} <= logged
    reports = Path(params["operations"]["reports_dir"]) / str(federation.id)
    for name in ("training_curves.png", "per_silo_hr_at_10.png"):
        colours, dominant = screenshot.colour_stats(reports / name)
        assert colours > 20 and dominant < 0.97, (name, colours, dominant)


needs_chromium = pytest.mark.skipif(screenshot.browser() is None,
                                    reason="chromium not installed: apt-get install chromium")


@needs_chromium
def test_screenshots_show_the_flow_run_and_the_mlflow_run_pages_rendered(ui, scheduled_run):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_id, _, _ = scheduled_run
    with _client() as client:
        (federation,) = _children(client, run_id)
        table = next(a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[federation.id]))) if a.key.startswith("fedrec-round"))
    tracking = mlflow.MlflowClient(yaml.safe_load(ui.params.read_text())["tracking"]["uri"])
    (run,) = tracking.search_runs(tracking.get_experiment_by_name("fedrec-test").experiment_id,
                                  f"tags.prefect_flow_run = '{federation.id}'")
    pages = {"prefect-flow-run.png": f"{ui.prefect}/runs/flow-run/{federation.id}",
             "prefect-round-table.png": f"{ui.prefect}/artifacts/artifact/{table.id}",
             "mlflow-run.png": f"{ui.mlflow}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
             "mlflow-run-metrics.png":
                 f"{ui.mlflow}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics"}

    tall = {"mlflow-run.png": 1500}  # the Overview: description (training curves), then the metrics table
    shots = {name: screenshot.screenshot(url, SCREENSHOTS / name, height=tall.get(name, 900))
             for name, url in pages.items()}
    prefect_dom = screenshot.rendered_dom(pages["prefect-flow-run.png"])
    mlflow_dom = screenshot.rendered_dom(pages["mlflow-run.png"])
    metrics_dom = screenshot.rendered_dom(pages["mlflow-run-metrics.png"])

    for name, png in shots.items():
        colours, dominant = screenshot.colour_stats(png)
        assert png.stat().st_size > 20_000 and colours > 200 and dominant < 0.95, (name, colours, dominant)
    # the single-page apps rendered this run's data, not only their shells
    assert federation.name in prefect_dom and "federated_training" in prefect_dom
    assert run.info.run_id in mlflow_dom and f"{federation.name}-neumf-he" in mlflow_dom
    # the charts come in sections by metric group, not 60 charts in alphabetical order
    assert all(f">{group}<" in metrics_dom for group in ("he", "round", "bytes", "seconds", "silo/0")), metrics_dom[-2000:]
    print("screenshots: " + ", ".join(str(p.relative_to(ROOT)) for p in shots.values()))


def test_round_table_is_json_safe_with_a_failed_silo_and_reports_he_cost():
    record = RoundRecord(round=3, loss=0.5, contributors=["a", "b"], failures={"c": "left: timeout"},
                         bytes_per_silo={"a": 4000, "b": 6000}, plaintext_bytes=1000,
                         seconds={"train": 2.0, "encrypt": 0.5, "aggregate": 0.25, "decrypt": 0.25, "round": 4.0},
                         val={"hr@10": 0.5, "ndcg@10": 0.25}, test={"hr@10": 0.4, "ndcg@10": 0.2, "full_hr@10": 0.1},
                         per_silo_test={"a": {"hr@10": 0.3, "ndcg@10": 0.1, "full_hr@10": 0.05}},
                         per_silo_val={"a": {"hr@10": 0.6, "ndcg@10": 0.3}},
                         seconds_per_silo={"a": {"train": 1.0, "encrypt": 0.2}, "b": {"train": 1.0, "encrypt": 0.3}})

    rows = record.table(10)
    metrics = record.mlflow_metrics()

    json.dumps(rows, allow_nan=False)
    assert [(r["silo"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok"), ("c", "failed: left: timeout"),
                                                        ("all", "2 contributed")]
    assert rows[1]["test_hr@10"] is None and rows[2]["bytes_sent"] is None and rows[3]["bytes_sent"] == 10_000
    assert rows[0]["encrypt_s"] == 0.2 and rows[3]["val_hr@10"] == 0.5
    assert metrics["he/seconds"] == pytest.approx(1.0) and metrics["he/bytes_expansion"] == pytest.approx(5.0)
    assert metrics["silo/b/seconds_encrypt"] == 0.3
    # the few that matter ungrouped (MLflow's first chart section), every other metric under a group prefix
    assert {k for k in metrics if "/" not in k} == {"train_loss", "val_hr@10", "val_ndcg@10", "test_hr@10",
                                                   "test_ndcg@10", "test_full_hr@10"}
    assert {k.split("/")[0] for k in metrics if "/" in k} == {"round", "seconds", "bytes", "he", "silo"}
    assert RoundRecord(**{k: v for k, v in record.__dict__.items() if k != "seconds_per_silo"}).table(10)[0][
        "train_s"] is None  # records restored from older checkpoints have no per-silo seconds


def test_a_killed_ui_is_tidied_by_the_next_fedrec_command(tmp_path):
    # Prepare: what a `fedrec ui` killed with SIGKILL leaves: its state file, the profile pointing at its server,
    # a server process group of its own
    home = tmp_path / "home"
    home.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "prefect-server-stand-in"],
                              start_new_session=True)
    api = "http://127.0.0.1:9/api"
    (home / "profiles.toml").write_text(f'active = "ephemeral"\n\n[profiles.ephemeral]\nPREFECT_API_URL = "{api}"\n')
    (home / STATE_FILE).write_text(json.dumps({"pid": dead.pid, "prefect_api": api, "groups": [server.pid],
                                               "previous_api_url": None}))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(home)}

    # Execute: any command (the clean-up runs when a command starts, never on import or for --help)
    done = subprocess.run(_cli("config"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)

    # Assert
    try:
        assert done.returncode == 0, done.stderr
        assert server.wait(timeout=10) == -signal.SIGTERM
        assert not (home / STATE_FILE).exists()
        assert "PREFECT_API_URL" not in (home / "profiles.toml").read_text()
    finally:
        if server.poll() is None:
            server.kill()


def test_ctrl_c_stops_both_servers_and_leaves_no_process(ui, scheduled_run):
    state = json.loads((ui.home / STATE_FILE).read_text())

    started = time.monotonic()
    ui.proc.send_signal(signal.SIGINT)
    code = ui.proc.wait(timeout=60)

    assert code == 0, ui.log.read_text()[-2000:]
    assert time.monotonic() - started < 30
    assert not procs.answers(f"{ui.api}/health", timeout=1) and not procs.answers(f"{ui.mlflow}/health", timeout=1)
    assert state["groups"] and not any(procs.group_alive(g) for g in state["groups"])
    left = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.environ().get("PREFECT_HOME") == str(ui.home):
                left.append((p.pid, " ".join(p.cmdline())[:200]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert left == []  # servers, their workers, the worker's flow run and silo hosts: all gone
    assert not (ui.home / STATE_FILE).exists()
    assert "PREFECT_API_URL" not in (ui.home / "profiles.toml").read_text()  # the profile is as before
    assert "stopped" in ui.log.read_text()
