"""A coordinator that crashes mid-federation resumes: `fedrec run --run-id R` dies (injected, no cleanup) after
round 2 of 4; its silo agents keep their state and wait; the same command again resumes after round 2, continues
the same MLflow run, and ends with the same global model as a run that never crashed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from fedrec.core.config import from_dict
from fedrec.core.diagnostics import CRASH_EXIT_CODE
from fedrec.protocol.reads import load_global
from fedrec.wire.exchange import run_exchange

from conftest import make_tiny_params

pytestmark = pytest.mark.slow  # real servers, subprocess CLIs or whole federations: not in `make test-fast`

ROOT = Path(__file__).resolve().parents[2]


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _fedrec_run(params: Path, run_id: str, env: dict, fault: str | None = None) -> subprocess.CompletedProcess:
    fedrec = str(Path(sys.executable).with_name("fedrec"))
    extra = {"FEDREC_FAULT": fault} if fault else {}
    return subprocess.run([fedrec, "run", "--json", "-r", "4", "--params", str(params), "--run-id", run_id],
                          cwd=ROOT, capture_output=True, text=True, env=env | extra, timeout=600)


def test_a_crashed_coordinator_resumes_and_ends_with_the_uninterrupted_model(prefect_harness, tmp_path):
    # Prepare: a standing Prefect API (the session's server), tiny silos
    from prefect.settings import get_current_settings

    raw = make_tiny_params(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    cfg = from_dict(raw)
    env = os.environ | {"PREFECT_API_URL": get_current_settings().api.url}

    # Execute: crash after round 2, resume; and the same run without a crash
    crashed = _fedrec_run(params, "crashy", env, fault="coordinator-after-round:2")
    hosts = json.loads((Path(cfg.federation.state_dir) / "coordinator" / "crashy" / "hosts.json").read_text())
    alive_after_crash = [Path(f"/proc/{h['pid']}").exists() for h in hosts]
    parents = [_parent(h["pid"]) if alive else None for h, alive in zip(hosts, alive_after_crash)]
    stopped_after_crash = run_exchange(cfg, "crashy").exists("stop.json")
    resumed = _fedrec_run(params, "crashy", env)
    straight = _fedrec_run(params, "straight", env)

    # Assert: the crash was a crash (no stop, no summary), its agents waited, the resumed run finished
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-2000:]
    assert not stopped_after_crash and all(alive_after_crash)
    assert parents[1] == hosts[0]["pid"]  # host 1 was forked by the warm host, which is host 0 (and outlived the CLI)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert straight.returncode == 0, straight.stderr[-3000:]
    summary = json.loads(resumed.stdout.splitlines()[-1])
    reference = json.loads(straight.stdout.splitlines()[-1])
    assert [h["round"] for h in summary["history"]] == [1, 2, 3, 4]
    assert "resumes after round 2" in resumed.stderr
    # Assert: the same global model as the uninterrupted run, parameter for parameter
    final, expected = load_global(run_exchange(cfg, "crashy"), 4), load_global(run_exchange(cfg, "straight"), 4)
    assert max(float((final[k] - expected[k]).abs().max()) for k in final) == 0.0
    assert summary["hr@10"] == reference["hr@10"] and summary["selected_round"] == reference["selected_round"]
    # Assert: one MLflow run holds all four rounds
    client = mlflow.MlflowClient(cfg.tracking.uri)
    assert [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "train_loss")] == [1, 2, 3, 4]
    assert torch.equal(final["out.weight"], expected["out.weight"])
