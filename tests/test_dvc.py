"""dvc.yaml: the whole pipeline reproduced by a real DVC repo, then an experiment with a param override."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import make_tiny_params
from fedrec.config import from_dict, to_dict

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("fedrec", "models", "flows", "tasks", "expectations")
METRICS = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10")


def _sh(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in COPIED:
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = make_tiny_params(tmp_path)
    params["data"]["work_dir"] = "data"  # DVC outputs live inside the repo
    params["partition"]["n_silos"] = 2
    params["federation"]["min_silos"] = 2  # the floor: two silos (each learns the other's update; fine for a test)
    params["training"]["epochs"] = 1
    params["federation"]["rounds"] = 1
    params["tracking"]["experiment"] = "fedrec-dvc-test"
    # DVC needs every key dvc.yaml names: write the full config, defaults filled in, as the repo's own file has
    (repo / "params.yaml").write_text(yaml.safe_dump(to_dict(from_dict(params)), sort_keys=False))
    (repo / ".gitignore").write_text("__pycache__/\n.prefect/\n")
    prefect_home = tmp_path / "prefect"
    prefect_home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1", "PREFECT_HOME": str(prefect_home),
        "GIT_AUTHOR_NAME": "fedrec tests", "GIT_AUTHOR_EMAIL": "tests@example.invalid",
        "GIT_COMMITTER_NAME": "fedrec tests", "GIT_COMMITTER_EMAIL": "tests@example.invalid",
    })
    for args in (["git", "init", "-q"], ["git", "config", "user.name", "fedrec tests"],
                 ["git", "config", "user.email", "tests@example.invalid"], ["dvc", "init", "-q"],
                 ["git", "add", "-A"], ["git", "commit", "-q", "-m", "pipeline"]):
        done = _sh(args, repo, env)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return repo, env


def test_dvc_repro_and_experiment(tmp_path):
    # Prepare
    repo, env = _repo(tmp_path)

    # Execute: the whole pipeline
    repro = _sh(["dvc", "repro"], repo, env)

    # Assert
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    for stage in ("prepare", "partition", "validate", "split", "centralized", "federate"):
        assert f"Running stage '{stage}'" in repro.stdout
    centralized = json.loads((repo / "results" / "centralized.json").read_text())
    federated = json.loads((repo / "results" / "federated.json").read_text())
    for key in METRICS:
        assert 0.0 <= centralized[key] <= 1.0 and 0.0 <= federated[key] <= 1.0
    assert centralized["model"] == "neumf"
    assert federated["rounds"] == 1 and len(federated["history"]) == 1
    assert federated["silos"] == ["0", "1"] and federated["he"] is True
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "partition", "validate", "split", "centralized", "federate"}
    assert lock["stages"]["federate"]["params"]["params.yaml"]["federation"]["rounds"] == 1
    assert json.loads((repo / "data" / "silos" / "manifest.json").read_text()).keys() == {"0", "1"}

    # nothing changed: a second repro runs nothing
    again = _sh(["dvc", "repro"], repo, env)
    assert again.returncode == 0 and "Running stage" not in again.stdout

    # Execute: an experiment that only touches the federation params
    exp = _sh(["dvc", "exp", "run", "-S", "federation.rounds=2"], repo, env)

    # Assert: only the federate stage reran, with 2 rounds
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    assert "Running stage 'federate'" in exp.stdout
    assert "Running stage 'centralized'" not in exp.stdout
    federated = json.loads((repo / "results" / "federated.json").read_text())
    assert federated["rounds"] == 2 and [h["round"] for h in federated["history"]] == [1, 2]
    assert json.loads((repo / "results" / "centralized.json").read_text()) == centralized
    shown = _sh(["dvc", "exp", "show", "--json"], repo, env)
    assert shown.returncode == 0, shown.stderr
    assert {1, 2} <= set(_federation_rounds(json.loads(shown.stdout)))  # the baseline commit and the experiment


def _federation_rounds(node) -> list[int]:
    """Every params.yaml federation.rounds value in `dvc exp show --json` output."""
    found = []
    if isinstance(node, dict):
        params = node.get("params.yaml")
        if isinstance(params, dict) and isinstance(params.get("data"), dict):
            found.append(params["data"].get("federation", {}).get("rounds"))
        for value in node.values():
            found += _federation_rounds(value)
    elif isinstance(node, list):
        for value in node:
            found += _federation_rounds(value)
    return found
