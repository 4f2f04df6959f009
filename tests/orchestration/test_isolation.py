"""Parties isolated by the operating system: the coordinator and each silo run as different Unix users, each with its
own 0700 directory (params, data, keys, state), sharing only the exchange (a setgid, group-writable directory) and
the Prefect API. The federation completes through the silos' deployments, and the coordinator's user cannot read a
silo's files (control: once the silo's directory is opened up, the same read succeeds)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from fedrec.core.config import from_dict
from fedrec.silo import data as pipeline

from conftest import make_tiny_params
from support import isolation
from support.procs import terminate_all

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not isolation.can_switch_users(),
                                                    reason="needs root to run parties as other users")]

SILOS = ("0", "1", "2")
COORD = "fedrec-coord"


def _silo_user(silo: str) -> str:
    return f"fedrec-silo{silo}"


def _party_params(base: dict, home: Path, exchange: Path) -> Path:
    params = json.loads(json.dumps(base))
    params["data"]["work_dir"] = str(home / "data")
    params["federation"] |= {"state_dir": str(home / "state"), "exchange_url": str(exchange)}
    params["tracking"]["uri"] = f"sqlite:///{home / 'mlflow.db'}"
    params["operations"]["reports_dir"] = str(home / "reports")
    path = home / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _env(home: Path, api: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ") or k.startswith("FEDREC_")}
    return keep | {"HOME": str(home), "PREFECT_HOME": str(home / ".prefect"), "PREFECT_API_URL": api,
                   "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
                   "DVC_NO_ANALYTICS": "1", "MPLCONFIGDIR": str(home / ".mpl"),
                   "TMPDIR": str(home / "tmp")}  # Prefect's runner storage and every temp file stay in the home


def _reads(user: str, path: Path, env: dict) -> subprocess.CompletedProcess:
    code = "import sys; open(sys.argv[1], 'rb').read(1); print('read')"
    return subprocess.run(isolation.as_user(user, [sys.executable, "-c", code, str(path)]), env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def parties(prefect_harness):
    from prefect.settings import get_current_settings

    base = Path(tempfile.mkdtemp(prefix="fedrec-iso-", dir="/tmp"))  # pytest's tmp is 0700 to root
    os.chmod(base, 0o711)
    exchange = base / "exchange"
    exchange.mkdir()
    os.chown(exchange, 0, isolation.ensure_group())
    os.chmod(exchange, 0o2770)  # setgid: every party's payloads stay in the exchange group
    # the data owners' step, staged by root, then each silo's share moved into its own home
    stage = make_tiny_params(base / "stage")
    pipeline.ensure_partitioned(from_dict(stage))
    staged = Path(stage["data"]["work_dir"])
    api = get_current_settings().api.url
    homes, procs = {}, []
    try:
        for party in (COORD, *map(_silo_user, SILOS)):
            isolation.ensure_user(party)
            home = base / party
            (home / "data").mkdir(parents=True)
            (home / "tmp").mkdir()
            shutil.copytree(staged / "catalogue", home / "data" / "catalogue")  # public, every party has it
            homes[party] = (home, _party_params(stage, home, exchange))
        for silo in SILOS:
            home = homes[_silo_user(silo)][0]
            shutil.copytree(staged / "silos" / silo, home / "data" / "silos" / silo)
        shutil.rmtree(base / "stage")  # nothing of a silo's data is left outside its home
        for party, (home, _) in homes.items():
            isolation.chown_tree(home, party)
            os.chmod(home, 0o700)
        for silo in SILOS:
            home, params = homes[_silo_user(silo)]
            log = open(base / f"serve-{silo}.log", "wb")
            procs.append(subprocess.Popen(
                isolation.as_user(_silo_user(silo), [str(Path(sys.executable).with_name("fedrec")), "silo", "serve",
                                                     "--silo", silo, "--params", str(params), "--poll", "1"]),
                cwd=home, env=_env(home, api), stdout=log, stderr=subprocess.STDOUT))
        from test_parties import _wait_for_deployments

        _wait_for_deployments([f"silo_agent/silo-{s}" for s in SILOS])
        time.sleep(3)
        dead = [s for s, p in zip(SILOS, procs) if p.poll() is not None]
        assert not dead, f"silo serve ended: {(base / f'serve-{dead[0]}.log').read_text(errors='replace')[-3000:]}"
        yield base, homes, api
    finally:
        terminate_all(procs)
        if not os.environ.get("FEDREC_KEEP_ISOLATION"):
            shutil.rmtree(base, ignore_errors=True)


def test_parties_as_separate_unix_users_federate_and_the_coordinator_cannot_read_a_silo(parties):
    base, homes, api = parties
    coord_home, coord_params = homes[COORD]
    env = _env(coord_home, api)

    done = subprocess.run(isolation.as_user(COORD, [str(Path(sys.executable).with_name("fedrec")), "coordinate",
                                                    "--silos", ",".join(SILOS), "--params", str(coord_params),
                                                    "--json", "-S", "federation.launcher=deployments"]),
                          cwd=coord_home, env=env, capture_output=True, text=True,
                          timeout=float(os.environ.get("FEDREC_ISOLATION_TIMEOUT", 500)))

    logs = "".join((base / f"serve-{s}.log").read_text(errors="replace")[-1500:] for s in SILOS)
    assert done.returncode == 0, done.stderr[-3000:] + logs
    summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["he"] is True and summary["failures"] == {} and summary["silos"] == list(SILOS)
    assert [h["round"] for h in summary["history"]] == [1, 2]
    # each silo's keys and data are its user's, in its 0700 home
    silo_home = homes[_silo_user("0")][0]
    silo_file = silo_home / "data" / "silos" / "0" / "interactions.parquet"
    assert (silo_home.stat().st_mode & 0o777) == 0o700
    assert silo_file.stat().st_uid == isolation.ensure_user(_silo_user("0"))
    key_holder_keys = list((homes[_silo_user(summary["key_holder"])][0] / "state").rglob("secret.ctx"))
    assert key_holder_keys and all(p.stat().st_uid != isolation.ensure_user(COORD) for p in key_holder_keys)
    # the coordinator's user is refused a silo's data and keys; the silo's own user reads them (control)
    for target in (silo_file, key_holder_keys[0]):
        denied = _reads(COORD, target, env)
        assert denied.returncode != 0 and "PermissionError" in denied.stderr, denied.stdout + denied.stderr
    assert _reads(_silo_user("0"), silo_file, _env(silo_home, api)).stdout.strip() == "read"
    # the check is not vacuous: with the silo's directories opened up, the coordinator's user reads the same file
    subprocess.run(["chmod", "-R", "o+rX", str(silo_home)], check=True)
    assert _reads(COORD, silo_file, env).stdout.strip() == "read"
