"""fedrec.orchestration.local_server: the run's own Prefect server, started from the CLI's first lines, and its
adoption (or not) by fedrec.orchestration.launch.prefect_api."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from fedrec.orchestration import local_server
from fedrec.orchestration.launch import _await_idle, prefect_api
from fedrec.orchestration.local_server import LocalServer, configured_api_url, spawn_early, take_early

pytestmark = pytest.mark.slow  # a real Prefect server starts (≈6 s of CPU)


@pytest.fixture()
def no_api(monkeypatch, tmp_path):
    """No PREFECT_API_URL anywhere: not in the environment, and a profiles file without it."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "local"\n[profiles.local]\nPREFECT_SERVER_ANALYTICS_ENABLED = "false"\n')
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(profiles))
    yield profiles
    server = take_early()
    if server is not None:
        server.stop()


def test_the_configured_api_is_read_from_the_environment_or_the_active_profile(no_api, monkeypatch):
    assert configured_api_url() is None
    no_api.write_text('active = "remote"\n[profiles.local]\n[profiles.remote]\n'
                      'PREFECT_API_URL = "http://prefect.example:4200/api"\n')
    assert configured_api_url() == "http://prefect.example:4200/api"
    monkeypatch.setenv("PREFECT_PROFILE", "local")  # the environment picks another profile: none set there
    assert configured_api_url() is None
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert configured_api_url() == "http://127.0.0.1:4200/api"


def test_no_early_server_where_an_api_is_configured(no_api, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")

    spawn_early()

    assert take_early() is None


def test_an_early_server_answers_once_ready_is_taken_once_and_stops(no_api):
    # Execute
    spawn_early()
    spawn_early()  # a second call starts no second server
    server = take_early()
    url = server.wait_ready(120)
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        healthy = response.status
    process = server.process
    server.stop()

    # Assert: one server, on 127.0.0.1, healthy; taken once; gone after stop (and stop twice is harmless)
    assert url == f"http://127.0.0.1:{server.port}/api" and healthy == 200
    assert take_early() is None and process.poll() is not None
    server.stop()


def test_a_server_that_exits_is_named_not_waited_for(no_api, monkeypatch):
    monkeypatch.setattr(LocalServer, "_spawn", lambda self: subprocess.Popen([sys.executable, "-c", "exit(5)"]))
    server = LocalServer()

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code 5"):
        server.wait_ready(60)

    assert time.monotonic() - start < 30


def test_prefect_api_stops_an_early_server_when_an_api_is_configured(prefect_harness, no_api):
    # Prepare: the session's server is the configured API (prefect_test_harness sets it in Prefect's settings)
    from prefect.settings import get_current_settings

    local_server._EARLY = LocalServer()  # as spawn_early would have, before Prefect's settings were read
    early = local_server._EARLY.process

    # Execute
    with prefect_api() as url:
        pass

    # Assert: the run reports to the configured API; the early server was stopped unused
    assert url == get_current_settings().api.url
    assert early.wait(timeout=30) is not None and take_early() is None


def test_await_idle_returns_once_a_process_stops_working():
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\n"
                             "time.sleep(60)"])
    try:
        start = time.monotonic()
        _await_idle(busy.pid, timeout_s=30)
        waited = time.monotonic() - start
        _await_idle(os.getpid() + 10**6, timeout_s=30)  # no such process: no wait
    finally:
        busy.kill()
        busy.wait()

    assert 1.0 < waited < 20
