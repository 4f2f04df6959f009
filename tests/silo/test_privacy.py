"""fedrec.silo.privacy: user-level DP inside a silo — each user's change clipped to C, noise with the configured
sigma, the accountant's epsilon from Opacus; and a private federated run end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrec.core.config import PrivacyConfig, from_dict
from fedrec.core.state import flatten_state
from fedrec.core.training import model_config
from fedrec.models import build_model
from fedrec.silo import data as pipeline
from fedrec.silo.privacy import epsilon, noise_multiplier, private_update


@pytest.fixture()
def silo(tiny_cfg):
    pipeline.ensure_partitioned(tiny_cfg)
    pipeline.validate_silo(tiny_cfg, "0")
    pipeline.split_silo(tiny_cfg, "0")
    data = pipeline.load_silo_data(tiny_cfg, "0")
    model = build_model(model_config(tiny_cfg.model, data.n_users, data.n_items), torch.Generator().manual_seed(0))
    return model, data


def _update(silo, cfg: PrivacyConfig, sigma: float, n_participants: int = 1):
    model, data = silo
    return private_update(model, data, model.shared_state(), cfg, sigma, n_participants, 4,
                          np.random.default_rng(0), torch.device("cpu"))


def test_without_noise_each_users_change_is_clipped_to_the_bound(silo):
    # Prepare: a bound far below what 5 local steps move, no noise, every user sampled
    cfg = PrivacyConfig(enabled=True, clip_norm=1e-3, user_sample_rate=1.0)

    # Execute
    update = _update(silo, cfg, sigma=0.0)

    # Assert: the silo's summed change is at most users x C; every user hit the bound
    total = torch.linalg.vector_norm(torch.from_numpy(flatten_state(update.delta))) * update.n_users
    assert update.sampled == update.n_users == silo[1].n_users and update.clipped == update.n_users
    assert float(total) <= update.n_users * 1e-3 * (1 + 1e-4)
    assert float(total) > 0.1 * update.n_users * 1e-3  # not cancelled out: the users' changes share a direction
    assert 0.0 < update.loss < 1.0


def test_noise_has_the_configured_share_of_sigma(silo):
    # Prepare: sigma 2, bound 0.01, a round with 4 participants: each silo adds N(0, (2 * 0.01)^2 / 4)
    cfg = PrivacyConfig(enabled=True, clip_norm=0.01)
    quiet, noisy = _update(silo, cfg, 0.0, 4), _update(silo, cfg, 2.0, 4)

    # Execute: the noise this silo added, back in units of the summed update
    noise = (flatten_state(noisy.delta) - flatten_state(quiet.delta)) * noisy.n_users

    # Assert: its standard deviation is sigma * C / sqrt(participants), over the tower's thousands of parameters
    assert len(noise) > 1000
    assert np.std(noise) == pytest.approx(2.0 * 0.01 / math.sqrt(4), rel=0.1)


@pytest.mark.slow
def test_the_accountant_is_opacus_rdp_and_a_target_epsilon_picks_sigma():
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(40):
        accountant.step(noise_multiplier=1.5, sample_rate=0.5)

    assert epsilon(1.5, 0.5, 40, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5))
    sigma = noise_multiplier(PrivacyConfig(target_epsilon=4.0, user_sample_rate=0.5), 40)
    assert epsilon(sigma, 0.5, 40, 1e-5) == pytest.approx(4.0, rel=0.05)
    assert epsilon(0.0, 1.0, 40, 1e-5) == math.inf


def test_privacy_bounds_are_checked():
    from fedrec.core.errors import ConfigError

    with pytest.raises(ConfigError, match="privacy.user_sample_rate"):
        from_dict({"privacy": {"user_sample_rate": 0}})


@pytest.mark.slow
def test_a_private_federated_run_reports_its_epsilon_per_round(prefect_harness, tmp_path):
    import mlflow
    import yaml

    from fedrec.flows.federated import run_demo

    from conftest import make_tiny_params

    params = make_tiny_params(tmp_path)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))

    summary = run_demo(params_path=str(path), overrides={"privacy.enabled": True, "privacy.target_epsilon": 8.0})

    dp = summary["privacy"]
    assert dp["unit"] == "user within a silo" and dp["rounds"] == 2
    assert dp["epsilon"] == pytest.approx(8.0, rel=0.05) and dp["noise_multiplier"] > 0
    history = mlflow.MlflowClient(params["tracking"]["uri"]).get_metric_history(summary["mlflow_run_id"], "dp_epsilon")
    assert [m.step for m in history] == [1, 2] and history[0].value < history[1].value
    assert summary["failures"] == {} and 0.0 <= summary["hr@10"] <= 1.0
