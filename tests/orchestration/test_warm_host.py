"""The warm silo host (fedrec.orchestration.warm_host): a real ``python -m fedrec.cli.silo_host --warm`` process that
forks the launch's other hosts from itself, runs host 0 itself, and reports each forked host's exit code; one it
cannot serve (another environment) is stopped and the launcher spawns the hosts itself."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedrec.core.config import from_dict
from fedrec.orchestration.warm_host import ForkedHost, WarmHost, host_env

pytestmark = pytest.mark.slow  # a process that imports torch and Prefect: not in `make test-fast`


def test_the_warm_host_forks_the_other_hosts_runs_host_0_and_reports_each_exit_code(tmp_path):
    # Prepare: two hosts whose run id is refused by the host's own argument check (exit 2, message in its log)
    warm = WarmHost()
    hosts = [(["--silos", silos, "--run-id", "../escape"], tmp_path / f"host-{i}.log")
             for i, silos in enumerate(["0,1", "2"])]

    # Execute
    procs = warm.launch(hosts, host_env())
    codes = [p.wait(timeout=60) for p in procs]

    # Assert: host 0 is the warm host's own process; host 1 a process it forked, whose code it reported; each host
    # wrote its own log
    assert procs[0] is warm.proc
    assert isinstance(procs[1], ForkedHost) and procs[1].pid != warm.proc.pid
    assert codes == [2, 2]
    for _, log in hosts:
        assert "run id" in log.read_text().lower(), log.read_text()


def test_a_launch_with_another_environment_is_left_to_the_launcher_and_the_warm_host_stops(tmp_path):
    warm = WarmHost()
    env = host_env() | {"FEDREC_SOMETHING_NEW": "1"}  # read at import time, perhaps: the warm host's imports are stale

    procs = warm.launch([(["--silos", "0", "--run-id", "r"], tmp_path / "host-0.log")], env)

    assert procs is None
    assert warm.proc.returncode is not None  # stopped, having forked nothing
    assert not (tmp_path / "host-0.log").exists() or (tmp_path / "host-0.log").read_text() == ""


def test_a_warm_host_no_launch_took_is_stopped_on_the_way_out_even_after_an_error():
    from fedrec.orchestration import warm_host

    cfg = from_dict({"federation": {"launcher": "local", "warm_host": True}})
    with pytest.raises(RuntimeError), warm_host.warm_start(cfg):
        warm = warm_host._WARM
        raise RuntimeError("the run failed before its hosts were launched")

    assert warm is not None and warm.proc.returncode is not None
    assert warm_host._WARM is None


def test_a_warm_host_with_another_thread_alive_refuses_to_fork(tmp_path):
    # Prepare: a warm host whose imports left a thread running (a fork would copy its locks, not the thread)
    code = ("import threading, time; from fedrec.orchestration.warm_host import serve; "
            "serve(lambda argv: 0, lambda: threading.Thread(target=time.sleep, args=(30,), daemon=True).start())")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    request = {"hosts": [{"argv": [], "log": str(tmp_path / f"host-{i}.log")} for i in range(2)], "env": host_env()}

    # Execute
    ready = json.loads(proc.stdout.readline())
    out, _ = proc.communicate(json.dumps(request) + "\n", timeout=60)

    # Assert: it said ready, then refused by name and forked nothing (no host ran, no log written)
    assert ready == {"ready": True}
    assert "refused" in json.loads(out.splitlines()[0]) and "pids" not in out
    assert not any((tmp_path / f"host-{i}.log").exists() for i in range(2))
