"""models: GMF / NeuMF with a private user tower and a shared item tower."""

from __future__ import annotations

import pytest
import torch

from fedrec.models import RecModelConfig, build_model
from fedrec.models.popularity import PopularityModel

N_USERS, N_ITEMS, DIM = 6, 11, 4


def make(name: str, seed: int = 0):
    cfg = RecModelConfig(name=name, num_users=N_USERS, num_items=N_ITEMS, embedding_dim=DIM, mlp_layers=(8, 4))
    return build_model(cfg, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["gmf", "neumf"])
def test_output_shapes(name):
    model = make(name)
    users = torch.tensor([0, 1, 5])
    items = torch.tensor([2, 10, 0])

    assert model(users, items).shape == (3,)
    assert model.predict(users, items).shape == (3,)
    assert model.full_sort_predict(users).shape == (3, N_ITEMS)
    loss = model.calculate_loss(users, items, torch.tensor([1.0, 0.0, 1.0]))
    assert loss.shape == () and loss.item() > 0


@pytest.mark.parametrize("name", ["gmf", "neumf"])
def test_full_sort_predict_equals_predict(name):
    model = make(name).eval()
    users = torch.tensor([0, 3, 5])

    full = model.full_sort_predict(users)

    pairs_u = users.repeat_interleave(N_ITEMS)
    pairs_i = torch.arange(N_ITEMS).repeat(len(users))
    assert torch.allclose(full.reshape(-1), model.predict(pairs_u, pairs_i), atol=1e-6)


def test_score_all_chunks_users():
    model = make("neumf").eval()
    users = torch.arange(N_USERS)

    chunked = model.items.score_all(model.users(users), chunk=N_ITEMS * 2)  # 2 users per chunk

    assert torch.allclose(chunked, model.full_sort_predict(users), atol=1e-6)


def test_gmf_logit_is_h_dot_elementwise_product():
    model = make("gmf")
    p = model.users.tables["gmf"].weight[2]
    q = model.items.item_gmf.weight[7]
    expected = (model.items.out.weight[0] * p * q).sum() + model.items.out.bias[0]

    assert model.predict(torch.tensor([2]), torch.tensor([7]))[0].item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("name, keys", [
    ("gmf", {"item_gmf.weight", "out.weight", "out.bias"}),
    ("neumf", {"item_gmf.weight", "item_mlp.weight", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
               "out.weight", "out.bias"}),
])
def test_shared_state_is_item_side_only(name, keys):
    model = make(name)

    shared = model.shared_state()

    assert set(shared) == keys
    assert not any(k.startswith("users.") or "tables" in k for k in shared)
    assert shared["item_gmf.weight"].shape == (N_ITEMS, DIM)
    assert all(not t.requires_grad for t in shared.values())
    # the user tower is the rest of the full state dict
    user_keys = {k for k in model.state_dict() if k.startswith("users.")}
    assert user_keys and all(k.startswith("users.tables.") for k in user_keys)


@pytest.mark.parametrize("name", ["gmf", "neumf"])
def test_load_shared_state_round_trip(name):
    a, b = make(name, seed=1), make(name, seed=2)
    users_before = {k: v.clone() for k, v in b.users.state_dict().items()}

    b.load_shared_state(a.shared_state())

    for k, v in a.shared_state().items():
        assert torch.equal(b.shared_state()[k], v)
    for k, v in b.users.state_dict().items():  # user tower untouched
        assert torch.equal(v, users_before[k])


def test_shared_state_is_a_copy():
    model = make("gmf")
    shared = model.shared_state()

    shared["out.bias"] += 100.0

    assert model.items.out.bias.item() != pytest.approx(shared["out.bias"].item())


def test_same_seed_same_weights():
    assert all(torch.equal(a, b) for a, b in zip(make("neumf", 3).state_dict().values(),
                                                   make("neumf", 3).state_dict().values()))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'bert'"):
        build_model(RecModelConfig(name="bert", num_users=1, num_items=1))


def test_popularity_model_scores_are_counts():
    pop = PopularityModel(train_items=[0, 2, 2, 3, 2, 0], num_items=5)

    assert pop.predict(torch.tensor([0, 1]), torch.tensor([2, 1])).tolist() == [3.0, 0.0]
    assert pop.full_sort_predict(torch.tensor([0, 1])).tolist() == [[2.0, 0.0, 3.0, 1.0, 0.0]] * 2
