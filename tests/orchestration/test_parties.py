"""Separate parties on one machine: a real Prefect server on loopback (the session's harness server), three silos
each serving its own `silo_agent` deployment from its own process, and a coordinator process that runs two encrypted
rounds through them while every path it opens is recorded."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedrec.core.config import from_dict
from fedrec.silo import data as pipeline
from fedrec.wire.trust import peek_envelope

from conftest import make_tiny_params
from support import leakscan
from support.procs import terminate_all

pytestmark = pytest.mark.slow  # real servers, subprocess CLIs or whole federations: not in `make test-fast`

ROOT = Path(__file__).resolve().parents[2]
SILOS = ("0", "1", "2")


def _wait_for_deployments(names: list[str], timeout: float = 180.0) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        for name in names:
            while True:
                try:
                    client.read_deployment_by_name(name)
                    break
                except ObjectNotFound:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"deployment {name} was not served within {timeout}s")
                    time.sleep(1.0)


def _silo_runs(run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowRunFilter,
        FlowRunFilterTags,
        LogFilter,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name={"any_": ["silo_agent"]}),
                                     flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"federation:{run_id}"])))
        return [(run, client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]})),
                 [log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id={"any_": [run.id]}))])
                for run in runs]


def _traced_opens(trace: Path) -> set[str]:
    """Absolute paths of the open/openat calls in an strace log (relative ones are under the project root)."""
    if not trace.exists():
        return set()
    found = set()
    for match in re.finditer(r'open(?:at2?)?\((?:AT_FDCWD, |\d+, )?"([^"]+)"', trace.read_text(errors="replace")):
        path = match.group(1)
        found.add(os.path.normpath(path if path.startswith("/") else str(ROOT / path)))
    return found


@pytest.fixture()
def served_silos(prefect_harness, tmp_path):
    """The data owners' step (each silo's data in place), then one `fedrec silo serve` process per silo."""
    from prefect.settings import get_current_settings

    params = make_tiny_params(tmp_path)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    cfg = from_dict(params)
    pipeline.ensure_partitioned(cfg)
    env = os.environ | {"PREFECT_API_URL": get_current_settings().api.url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    fedrec = str(Path(sys.executable).with_name("fedrec"))
    procs = []
    for silo in SILOS:
        log = open(tmp_path / f"serve-{silo}.log", "wb")
        procs.append(subprocess.Popen([fedrec, "silo", "serve", "--silo", silo, "--params", str(path), "--poll", "1"],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        _wait_for_deployments([f"silo_agent/silo-{s}" for s in SILOS])
        yield cfg, path, env
    finally:
        terminate_all(procs)


def test_coordinator_process_runs_encrypted_rounds_without_opening_silo_data_or_keys(served_silos, tmp_path):
    # Prepare
    cfg, params_path, env = served_silos
    audit = tmp_path / "coordinator-opened.tsv"
    fedrec = str(Path(sys.executable).with_name("fedrec"))

    trace = tmp_path / "coordinator.strace"
    # strace sees every open of the process tree, pyarrow's C++ reads included; without it, Python's audit hook
    # (fedrec.core.audit) records the opens made through Python only
    tracer = ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace)] if shutil.which("strace") else []

    hold = tmp_path / "coordinator-hold"

    # Execute: the coordinator as its own process, starting the silos' agents through their deployments; when
    # done it waits for its memory to be searched
    proc = subprocess.Popen([*tracer, fedrec, "coordinate", "--silos", ",".join(SILOS), "--params", str(params_path),
                             "--json", "-S", "federation.launcher=deployments"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=env | {"FEDREC_AUDIT_OPENS": str(audit), "FEDREC_AUDIT_HOLD": str(hold)})
    ready = Path(f"{hold}.ready")
    deadline = time.monotonic() + 600
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    memory_findings = None
    if ready.exists():
        key_holder_store = sorted((Path(cfg.federation.state_dir) / "silos").glob("*/*/keys/secret.ctx"))
        public = next((Path(cfg.federation.exchange_url)).glob("*/context/public.ctx")).read_bytes()
        needles = (leakscan.secret_key_needles(key_holder_store[0].read_bytes())
                   + leakscan.public_context_needles(peek_envelope(public)[1]))
        memory_findings = leakscan.scan_process(int(ready.read_text()), needles)
        Path(f"{hold}.done").write_text("")
    stdout, stderr = proc.communicate(timeout=120)

    # Assert: two encrypted rounds with every silo contributing
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
    assert summary["he"] is True and [h["round"] for h in summary["history"]] == [1, 2]
    assert summary["silos"] == list(SILOS) and summary["failures"] == {} and summary["excluded"] == {}
    assert summary["coordinator_can_decrypt"] is False
    assert all(b > summary["plaintext_fp32_bytes"] for b in summary["bytes_per_round"].values())
    # Assert: the coordinator opened exchange and catalogue paths, but nothing of a silo's data or keys
    opened = {line.split("\t", 1)[1] for line in audit.read_text().splitlines()} | _traced_opens(trace)
    paths = pipeline.Paths.of(cfg)
    private = [str(p.resolve()) for p in (paths.silos, paths.split, paths.validation, paths.prepared)]
    private.append(str((Path(cfg.federation.state_dir) / "silos").resolve()))
    leaked = sorted(p for p in opened if any(p == root or p.startswith(root + os.sep) for root in private))
    assert leaked == []
    exchange_root = str(Path(cfg.federation.exchange_url).resolve())
    assert any(p.startswith(exchange_root) for p in opened)  # control: the audit does see its reads
    if tracer:
        assert any(p.startswith(str(paths.catalogue.resolve())) for p in opened)  # a pyarrow read, seen by strace
    # Assert: the key material stayed with the key holder, and the coordinator's memory at the end of the run holds
    # the public context's key id (control: the scan sees what it loaded) but not the secret key in any form
    key_dir = Path(cfg.federation.state_dir) / "silos" / summary["key_holder"] / summary["run_id"] / "keys"
    assert (key_dir / "secret.ctx").exists()
    assert memory_findings is not None, "the coordinator never waited for its memory to be searched"
    assert {f.kind for f in memory_findings} == {"public-context"}, [str(f) for f in memory_findings][:5]
    # Assert: each silo ran as its own flow run, visible through the Prefect API, its rounds in its log (the
    # default operations.silo_round_tasks: false; test_operations runs them as task runs)
    runs = _silo_runs(summary["run_id"])
    assert sorted(run.parameters["silo_id"] for run, _, _ in runs) == list(SILOS)
    # each a subflow run of the coordinator's federation run, named after it (deployments across machines too)
    assert all(run.parent_task_run_id is not None for run, _, _ in runs)
    assert sorted(run.name for run, _, _ in runs) == [f"{summary['federation']}-silo-{s}" for s in SILOS]
    for run, task_runs, logs in runs:
        assert run.state.is_completed(), run.state
        names = {t.name for t in task_runs}
        silo = run.parameters["silo_id"]
        assert f"validate-silo-{silo}" in names and not any("-round-" in name for name in names), names
        for r in (1, 2):
            assert any(m.startswith(f"round {r}: loss ") and " MB" in m for m in logs), logs
