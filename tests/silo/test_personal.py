"""fedrec.silo.personal: a silo's fine-tuned view of the global item tower (model.personalisation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.core.config import ConfigError, from_dict
from fedrec.core.training import model_config
from fedrec.models import build_model
from fedrec.silo import data as pipeline
from fedrec.silo import personal


@pytest.fixture()
def silo(tiny_params):
    cfg = from_dict(tiny_params | {"model": tiny_params["model"] | {"personalisation": "finetune"}})
    silos = pipeline.ensure_data(cfg)
    data = pipeline.load_silo_data(cfg, silos[0])
    model = build_model(model_config(cfg.model, data.n_users, data.n_items), torch.Generator().manual_seed(0))
    return cfg, data, model


def test_personalise_fine_tunes_a_copy_and_leaves_the_silos_model_alone(silo):
    cfg, data, model = silo
    before = {k: v.clone() for k, v in model.state_dict().items()}
    global_state = model.shared_state()

    view = personal.personalise(model, data, global_state, cfg, np.random.default_rng(0), torch.device("cpu"))

    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert any(not torch.equal(view.items.state_dict()[k], v) for k, v in global_state.items())
    assert not view.training
    kept = personal.personal_state(view, 3)
    assert kept["round"] == 3 and set(kept["items"]) == set(global_state)


def test_the_proximal_term_holds_the_personal_view_near_the_global_model(silo):
    cfg, data, model = silo
    global_state = model.shared_state()

    def distance(mu: float) -> float:
        c = cfg.replace(**{"model.personal_mu": mu, "model.personal_epochs": 3, "model.personal_lr": 0.01})
        view = personal.personalise(model, data, global_state, c, np.random.default_rng(0), torch.device("cpu"))
        return sum(float((view.items.state_dict()[k] - v).pow(2).sum()) for k, v in global_state.items())

    assert distance(10.0) < 0.5 * distance(0.0)


def test_ditto_trains_on_from_the_kept_personal_model_not_from_the_new_global_one(silo):
    cfg, data, model = silo
    cfg = cfg.replace(**{"model.personalisation": "ditto"})
    first_global = model.shared_state()
    kept = personal.personalise(model, data, first_global, cfg, np.random.default_rng(0), torch.device("cpu"))
    kept_before = {k: v.clone() for k, v in kept.state_dict().items()}
    new_global = {k: v + 0.5 for k, v in first_global.items()}  # the next round's global model

    def run(previous):
        return personal.personalise(model, data, new_global, cfg, np.random.default_rng(1), torch.device("cpu"),
                                    kept=previous)

    ditto, afresh = run(kept), run(None)

    assert personal.keeps(cfg) and personal.finetunes(cfg) and not personal.keeps(cfg.replace(
        **{"model.personalisation": "finetune"}))
    assert all(torch.equal(kept.state_dict()[k], v) for k, v in kept_before.items())  # the kept one is copied
    # one more epoch from the kept model: close to it, far from the shifted global model a fresh copy starts at
    near_kept = sum(float((ditto.items.state_dict()[k] - kept_before[f"items.{k}"]).abs().mean()) for k in first_global)
    near_new = sum(float((afresh.items.state_dict()[k] - new_global[k]).abs().mean()) for k in first_global)
    far = sum(float((ditto.items.state_dict()[k] - new_global[k]).abs().mean()) for k in first_global)
    assert near_kept < far and near_new < far


def test_personalisation_settings_are_checked(tiny_params):
    with pytest.raises(ConfigError, match="personalisation"):
        from_dict(tiny_params | {"model": tiny_params["model"] | {"personalisation": "dittos"}})
    with pytest.raises(ConfigError, match="model.personal_epochs"):
        from_dict(tiny_params | {"model": tiny_params["model"] | {"personal_epochs": 0}})
