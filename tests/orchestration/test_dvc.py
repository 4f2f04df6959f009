"""This repository is a DVC repository: in a clean clone of it, as a new user gets it, `dvc status`, `dvc exp run`
(with the README's -S spelling), feedback recorded as a new data version, a retraining on it, and the
reproduction of the earlier experiment (`dvc exp apply` + `dvc repro`) with the same metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow  # real servers, subprocess CLIs or whole federations: not in `make test-fast`

ROOT = Path(__file__).resolve().parents[2]
METRICS = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10")
#: the README's `dvc exp run -S ...` on tiny synthetic data (3 IID silos, 2 rounds): the stages run in seconds
TINY = ["data.source=synthetic", "data.synthetic.n_users=90", "data.synthetic.n_items=60",
        "data.synthetic.interactions_per_user=16", "partition.scheme=iid", "partition.n_silos=3",
        "evaluation.n_negatives=20", "model.embedding_dim=8", "model.mlp_layers=[16,8]", "training.epochs=1",
        "training.seeds=[0]", "training.batch_size=128", "federation.rounds=2", "tracking.experiment=fedrec-dvc-test"]


def _sh(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (done.args, done.stdout[-3000:], done.stderr[-3000:])
    return done


def _git_files(*args: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z", *args], cwd=ROOT, capture_output=True, check=True)
    return [p for p in listed.stdout.decode().split("\0") if p]


def _clean_clone(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """``git clone`` of this repository, with the working tree's tracked and unignored files laid over it (so the
    code under test is what runs, committed or not); nothing ignored (data, state, caches) comes along."""
    repo = tmp_path / "clone"
    prefect_home = tmp_path / "prefect"
    prefect_home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING", "FEDREC_", "GIT_DIR", "GIT_WORK_TREE"))}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1", "PREFECT_HOME": str(prefect_home),
        "GIT_AUTHOR_NAME": "fedrec tests", "GIT_AUTHOR_EMAIL": "tests@example.invalid",
        "GIT_COMMITTER_NAME": "fedrec tests", "GIT_COMMITTER_EMAIL": "tests@example.invalid",
    })
    _ok(_sh(["git", "clone", "-q", str(ROOT), str(repo)], tmp_path, env))
    for rel in _git_files() + _git_files("--others", "--exclude-standard"):
        src, dst = ROOT / rel, repo / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif dst.exists():
            dst.unlink()
    _ok(_sh(["git", "add", "-A"], repo, env))
    _ok(_sh(["git", "commit", "-q", "--allow-empty", "-m", "the working tree under test"], repo, env))
    return repo, env


def _metrics(repo: Path) -> dict:
    return json.loads((repo / "results" / "federated.json").read_text())


def test_a_clean_clone_is_a_dvc_repo_whose_experiments_track_data_versions_and_reproduce(tmp_path):
    repo, env = _clean_clone(tmp_path)

    # a new user's first look: a DVC repository whose stages have not run yet
    status = _ok(_sh(["dvc", "status"], repo, env))
    assert "not inside of a DVC repository" not in status.stdout + status.stderr
    assert "prepare" in status.stdout and "federate" in status.stdout
    # the committed dvc.lock (ML-100K, default params): the data stages' params and commands match it, only their
    # data is missing here (not "changed" or "new"): after `make run` provisions the same data they are up to date
    stages = json.loads(_ok(_sh(["dvc", "status", "--json"], repo, env)).stdout)
    assert stages["prepare"] == [{"changed outs": {"data/prepared": "not in cache", "data/catalogue": "not in cache"}}]
    assert all("changed command" not in entry and "params.yaml" not in json.dumps(entry)
               for name in ("prepare", "partition", "validate", "split") for entry in stages[name])

    # an experiment, as the README spells it
    base = _ok(_sh(["dvc", "exp", "run", "-n", "base", *sum((["-S", s] for s in TINY), [])], repo, env))
    for stage in ("prepare", "partition", "validate", "split", "centralized", "federate"):
        assert f"Running stage '{stage}'" in base.stdout
    first = _metrics(repo)
    assert first["rounds"] == 2 and first["silos"] == ["0", "1", "2"] and first["he"] is True
    assert all(0.0 <= first[m] <= 1.0 for m in METRICS)

    # feedback at silo 0: validated, appended, recorded as a new data version (dvc.lock)
    user = int(pd.read_parquet(repo / "data/silos/0/interactions.parquet")["user_id"].iloc[0])
    seen = set(pd.read_parquet(repo / "data/silos/0/interactions.parquet").query("user_id == @user")["item_id"])
    fresh = [i for i in range(1, 61) if i not in seen][:3]
    (tmp_path / "fb.csv").write_text("user_id,item_id,rating\n" + "".join(f"{user},{i},5\n" for i in fresh))
    fed = _ok(_sh(["fedrec", "feedback", str(tmp_path / "fb.csv"), "--silo", "0", "--json"], repo, env))
    assert "committed" in json.loads(fed.stdout)["dvc"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    feedback_out = {o["path"]: o for o in lock["stages"]["partition"]["outs"]}["data/feedback"]
    assert feedback_out["nfiles"] == 1
    assert "split" in _ok(_sh(["dvc", "status"], repo, env)).stdout  # the next retraining is due

    # the retraining trains on the new version; only the stages downstream of the data rerun
    again = _ok(_sh(["dvc", "exp", "run", "-n", "with-feedback"], repo, env))
    assert "Running stage 'federate'" in again.stdout and "Running stage 'prepare'" not in again.stdout
    second = _metrics(repo)
    assert second["data_versions"]["0"] != first["data_versions"]["0"]
    assert second["data_versions"]["1"] == first["data_versions"]["1"]
    shown = _ok(_sh(["dvc", "exp", "show", "--json"], repo, env)).stdout
    assert "base" in shown and "with-feedback" in shown and feedback_out["md5"] in shown

    # reproduce the past experiment: its params, lock and data come back, and its metrics are recomputed
    _ok(_sh(["dvc", "exp", "apply", "base"], repo, env))
    assert not list((repo / "data/feedback").glob("*/batch-*.parquet"))  # the data version it trained on
    (repo / "results" / "federated.json").unlink()
    _ok(_sh(["dvc", "repro", "--force", "--single-item", "federate"], repo, env))
    reproduced = _metrics(repo)

    assert reproduced["run_id"] != first["run_id"]
    assert reproduced["data_versions"] == first["data_versions"]
    assert {m: reproduced[m] for m in METRICS} == {m: first[m] for m in METRICS}
    assert [h["val_hr@10"] for h in reproduced["history"]] == [h["val_hr@10"] for h in first["history"]]


def _tiny_params(repo: Path, env: dict[str, str]) -> None:
    """TINY written into the clone's params.yaml and committed: every command below reads the same config."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for pair in TINY:
        dotted, value = pair.split("=", 1)
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = yaml.safe_load(value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _ok(_sh(["git", "commit", "-qam", "tiny params"], repo, env))


def test_feedback_survives_the_readme_pipeline_commands_run_from_the_venv_without_activating_it(tmp_path):
    # Prepare: a clean clone with its .venv (this interpreter's), the data made outside DVC as `make run` and the
    # README's data commands do, then a feedback batch; PATH without the venv, no VIRTUAL_ENV (nothing activated)
    repo, env = _clean_clone(tmp_path)
    (repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    _tiny_params(repo, env)
    venv_bin = repo / ".venv" / "bin"
    for cmd in ("prepare", "partition", "validate", "split"):
        _ok(_sh([str(venv_bin / "fedrec"), cmd], repo, env))
    user = int(pd.read_parquet(repo / "data/silos/0/interactions.parquet")["user_id"].iloc[0])
    seen = set(pd.read_parquet(repo / "data/silos/0/interactions.parquet").query("user_id == @user")["item_id"])
    fresh = [i for i in range(1, 61) if i not in seen][:2]
    (tmp_path / "fb.csv").write_text("user_id,item_id,rating\n" + "".join(f"{user},{i},4\n" for i in fresh))
    added = json.loads(_ok(_sh([str(venv_bin / "fedrec"), "feedback", str(tmp_path / "fb.csv"), "--silo", "0",
                                "--json"], repo, env)).stdout)
    batch = repo / added["batch"] if not Path(added["batch"]).is_absolute() else Path(added["batch"])
    kept = batch.read_bytes()
    bare = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "FEDREC_PYTHON")} | {"PATH": "/usr/bin:/bin"}
    assert _sh(["sh", "-c", "command -v fedrec"], repo, bare).returncode != 0  # really not on PATH

    # Execute: the README's pipeline commands as a user types them from the project, venv not activated
    exp = _sh([str(venv_bin / "dvc"), "exp", "run", "-S", "federation.rounds=2"], repo, bare, timeout=600)
    after_exp = batch.read_bytes() if batch.exists() else None
    repro = _sh([str(venv_bin / "dvc"), "repro"], repo, bare, timeout=600)
    lighter = _sh([str(venv_bin / "dvc"), "exp", "run", "-S", "federation.rounds=3"], repo, bare, timeout=600)

    # Assert: the feedback is in DVC's cache from the start, both commands ran every stage through bin/fedrec, and
    # the batch is still there, byte for byte
    assert "committed" in added["dvc"], added["dvc"]
    assert exp.returncode == 0, (exp.stdout[-3000:], exp.stderr[-3000:])
    assert "command not found" not in exp.stdout + exp.stderr
    assert "Running stage 'federate'" in exp.stdout
    assert after_exp == kept
    assert repro.returncode == 0, (repro.stdout[-3000:], repro.stderr[-3000:])
    assert batch.read_bytes() == kept
    assert "Running stage 'centralized'" not in repro.stdout  # nothing changed: nothing reruns
    # a federation-only change reruns the federation, not the centralized baseline nor the data stages
    assert lighter.returncode == 0, (lighter.stdout[-3000:], lighter.stderr[-3000:])
    assert "Running stage 'federate'" in lighter.stdout
    assert not [s for s in ("centralized", "prepare", "partition", "split") if f"Running stage '{s}'" in lighter.stdout]
    assert batch.read_bytes() == kept
    # `make exps`: the experiments table keeps to the columns that differ (the audit's `dvc exp show`: 217 columns);
    # read as CSV so that the terminal's width cannot fold the header
    recipe = _ok(_sh(["make", "-s", "-n", "-o", ".venv/.installed", "exps"], repo, bare)).stdout.strip()
    shown = _ok(_sh(["sh", "-c", recipe + " --csv"], repo, bare))
    columns = shown.stdout.splitlines()[0].split(",")
    assert "federation.rounds" in columns and "Experiment" in columns, columns
    assert not [c for c in columns if c.startswith(("data/", "fedrec/", "models", "flows"))], columns
    assert len(columns) <= 24, columns
    assert sorted(p.name for p in (repo / "data/feedback/0").iterdir()) == [batch.name]
