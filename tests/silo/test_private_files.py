"""A silo's private state, its data copies and its hosts' logs are 0600 files in 0700 directories, whatever the
umask (fedrec.core.fsperm, used by every writer of them; issue #17, item 7)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedrec.core.config import from_dict
from fedrec.core.fsperm import private_file
from fedrec.orchestration.launch import LocalSiloHosts
from fedrec.silo import data as pipeline
from fedrec.silo.data import demo_source, write_demo_databases
from fedrec.silo.feedback import append_feedback
from fedrec.silo.source import snapshot
from fedrec.silo.store import SiloStore
from fedrec.wire.trust import Identity


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes(top: Path) -> dict[str, int]:
    """Every directory and file under ``top`` (and ``top``): its mode, by path relative to ``top``'s parent."""
    return {str(p.relative_to(top.parent)): _mode(p) for p in [top, *sorted(top.rglob("*"))]}


def _private(modes: dict[str, int], top: Path) -> dict[str, int]:
    """What :func:`_modes` should be: 0700 for each directory, 0600 for each file."""
    return {name: 0o700 if (top.parent / name).is_dir() else 0o600 for name in modes}


@pytest.fixture()
def open_umask():
    """The usual umask (0022: files 0644, directories 0755), so that only fedrec's own writers can make them private."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_silos_private_state_is_0600_in_0700(tiny_cfg, tmp_path, open_umask):
    # Prepare: what a silo agent keeps of a run (users' embeddings + optimizer state, the coordinator it trusted,
    # the run's HE secret) and its long-term identity
    store = SiloStore.of(tiny_cfg, "0", "run-1")
    users = torch.nn.Embedding(4, 3)
    state = {"users": users.state_dict(), "optimizer": torch.optim.Adam(users.parameters()).state_dict()}

    # Execute
    store.private_dir(store.silo_dir)
    Identity.load_or_create(store.identity_dir, "0")
    store.save_model(state)
    store.save_coordinator({"name": "coordinator", "sign": "ab", "kx": "cd"})
    store.save_secret_context(b"secret context")

    # Assert: every directory from state/silos/<silo> down 0700, every file 0600; nothing else left beside them
    modes = _modes(store.silo_dir)
    assert modes == _private(modes, store.silo_dir)
    assert {"0/run-1/model.pt", "0/run-1/coordinator.json", "0/run-1/keys/secret.ctx",
            "0/identity/identity.key"} <= set(modes)
    assert not [name for name in modes if name.endswith(".tmp")]
    saved = torch.load(store.model_path, weights_only=True)
    assert torch.equal(saved["users"]["weight"], users.weight.detach())


def test_a_model_saved_again_over_an_open_file_stays_0600(tiny_cfg, open_umask):
    # Prepare: a model.pt left 0644 in a 0755 directory by an older fedrec
    store = SiloStore.of(tiny_cfg, "0", "run-1")
    store.root.mkdir(parents=True)
    store.model_path.write_bytes(b"old")
    store.model_path.chmod(0o644)

    # Execute
    store.save_model({"users": {"weight": torch.zeros(2, 2)}})

    # Assert: the file replaced by one created 0600, the directories up to state/silos/<silo> made 0700
    assert _mode(store.model_path) == 0o600
    assert _mode(store.root) == _mode(store.silo_dir) == 0o700
    assert _mode(store.silo_dir.parent) == 0o755  # state/silos itself is not one silo's


def test_a_silos_data_copies_are_0600_in_0700(tiny_params, tmp_path, open_umask):
    # Prepare: the demo silos' databases; silo 0 then reads its own (silo.source)
    cfg = from_dict(tiny_params)
    write_demo_databases(cfg, tmp_path / "db")
    db_cfg = from_dict(tiny_params | {"silo": {"source": demo_source(tmp_path / "db")}})
    paths = pipeline.Paths.of(cfg)

    # Execute: every writer of a silo's rows (partition, snapshot, split, feedback)
    snapshot(db_cfg, "0")
    pipeline.split_silo(cfg, "1")
    frame = pipeline.silo_interactions(cfg, "2")
    user, newest = int(frame["user_id"].iloc[0]), int(frame["timestamp"].max())
    unseen = sorted(set(pipeline.catalogue_ids(cfg).tolist()) - set(frame.query("user_id == @user")["item_id"]))
    append_feedback(cfg, "2", pd.DataFrame({"user_id": [user], "item_id": [unseen[0]], "rating": [4],
                                            "timestamp": [newest + 10]}), record_dvc=False)

    # Assert
    for top in (paths.silo_data("0"), paths.silo_data("1"), paths.silo_snapshot("0"), paths.silo_split("1"),
                paths.silo_feedback("2")):
        modes = _modes(top)
        assert modes == _private(modes, top), top
        assert any(name.endswith(".parquet") for name in modes), top
    assert pd.read_parquet(paths.silo_snapshot("0") / "interactions.parquet").equals(
        pipeline.silo_interactions(db_cfg, "0"))


def test_the_silo_hosts_logs_are_0600_in_0700(tiny_cfg, tmp_path, open_umask):
    # Prepare: two host processes; each runs a one-line program instead of `python -m fedrec.cli.silo_host`, so that
    # the test waits for no federation (start() opens the logs and starts the processes as for a run)
    cfg = tiny_cfg.replace(**{"federation.max_parallel_silos": 2})
    hosts = LocalSiloHosts(cfg, "run-logs", ["0", "1"], params_path="params.yaml", overrides=None, api_url=None)
    hosts._cmd = [sys.executable, "-c", "print('host output')"]

    # Execute
    hosts.start()
    failures = hosts.join(timeout=60)

    # Assert: state/logs/<run>/ and every host-*.log private; what each host printed is in its log
    modes = _modes(hosts.log_dir)
    assert failures == [] and modes == _private(modes, hosts.log_dir)
    assert sorted(modes) == ["run-logs", "run-logs/host-0.log", "run-logs/host-1.log"]
    assert (hosts.log_dir / "host-1.log").read_text() == "host output\n"


def test_private_file_leaves_nothing_when_the_writer_fails(tmp_path, open_umask):
    target = tmp_path / "silo" / "model.pt"

    with pytest.raises(RuntimeError):
        with private_file(target) as fh:
            fh.write(b"half")
            raise RuntimeError("killed mid-write")

    assert list(target.parent.iterdir()) == [] and _mode(target.parent) == 0o700
