"""Session fixtures: offline env, one Prefect test harness, tiny synthetic configs on tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrec.core import env

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    # Must happen before Prefect is imported by any test module.
    state = ROOT / ".pytest-state"
    state.mkdir(exist_ok=True)  # Prefect creates PREFECT_HOME without parents
    env.apply_defaults(state)


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect server for the whole session (first start migrates its database)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_tiny_params(tmp_path: Path) -> dict:
    """A few hundred synthetic interactions in 3 IID silos, every path under ``tmp_path``."""
    return {
        "data": {"source": "synthetic", "work_dir": str(tmp_path / "data"),
                 "synthetic": {"n_users": 90, "n_items": 60, "interactions_per_user": 16, "seed": 0}},
        "partition": {"scheme": "iid", "n_silos": 3, "seed": 0},
        "evaluation": {"n_negatives": 20},
        "model": {"name": "neumf", "embedding_dim": 8, "mlp_layers": [16, 8]},
        "training": {"epochs": 2, "seeds": [0], "batch_size": 128},
        "federation": {"rounds": 2, "exchange_url": str(tmp_path / "state" / "exchange"),
                       "state_dir": str(tmp_path / "state")},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "fedrec-test"},
        "operations": {"reports_dir": str(tmp_path / "reports")},
    }


@pytest.fixture()
def tiny_params(tmp_path) -> dict:
    """A few hundred synthetic interactions in 3 IID silos: every stage runs in seconds."""
    return make_tiny_params(tmp_path)


@pytest.fixture()
def tiny_cfg(tiny_params):
    from fedrec.core.config import from_dict

    return from_dict(tiny_params)


@pytest.fixture()
def params_file(tmp_path, tiny_params) -> Path:
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params))
    return path
