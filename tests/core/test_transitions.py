"""The shared next-item tables (model.transition_dim): pairs, training, the head's use of them, the config's rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.core import recency
from fedrec.core.config import ConfigError, from_dict
from fedrec.core.training import SiloData, make_optimizer, model_config, train_epoch
from fedrec.models import build_model, transitions


def test_pairs_join_only_one_users_items_within_the_window_in_both_orders():
    users = np.array([0, 1, 0, 1, 0, 2])  # interleaved users; user 0 touched 10, 11, 12 in that order
    items = np.array([10, 20, 11, 21, 12, 30])

    before, after = transitions.pairs(users, items, window=1)
    assert sorted(zip(before.tolist(), after.tolist())) == sorted(
        [(10, 11), (11, 10), (11, 12), (12, 11), (20, 21), (21, 20)])
    before, after = transitions.pairs(users, items, window=2)
    assert {(10, 12), (12, 10)} <= set(zip(before.tolist(), after.tolist()))
    assert not {(12, 20), (21, 30), (20, 30)} & set(zip(before.tolist(), after.tolist()))  # never across users


def _cycle_data(n_users: int = 40, n_items: int = 30, length: int = 12, seed: int = 0) -> SiloData:
    """Every user walks the catalogue in one fixed order (item k, then k+1, ...) from a random start: what follows an
    item is always known."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        start = int(rng.integers(0, n_items))
        users += [u] * length
        items += [(start + a) % n_items for a in range(length)]
    last = np.array([(it + 1) % n_items for it in items[length - 1::length]])
    return SiloData(user_ids=np.arange(n_users), train_users=np.array(users), train_items=np.array(items),
                    val_items=last, test_items=(last + 1) % n_items,
                    negatives=rng.integers(0, n_items, size=(n_users, 5)), n_items=n_items)


@pytest.fixture()
def cycle_model(tiny_params):
    cfg = from_dict(tiny_params | {"model": tiny_params["model"] | {
        "name": "gmf", "personalisation": "recency", "transition_dim": 8, "transition_window": 1,
        "transition_lr": 0.05}})
    data = _cycle_data()
    model = build_model(model_config(cfg.model, data.n_users, data.n_items), torch.Generator().manual_seed(0))
    return cfg, data, model


def test_the_tables_are_shared_item_tower_state_and_off_by_default(tiny_params, cycle_model):
    cfg, data, model = cycle_model
    shared = model.shared_state()
    assert shared["transitions.prev.weight"].shape == (data.n_items, 8)
    assert shared["transitions.next.weight"].shape == (data.n_items, 8)
    assert not any("transitions" in k for k in model.users.state_dict())  # nothing per user
    plain = from_dict(tiny_params)
    assert plain.model.transition_dim == 0
    off = build_model(model_config(plain.model, data.n_users, data.n_items), torch.Generator().manual_seed(0))
    assert transitions.of(off) is None and not any("transitions" in k for k in off.shared_state())


def test_an_epoch_trains_the_tables_on_the_silos_own_sequences_and_the_head_then_ranks_the_next_item_first(
        cycle_model):
    cfg, data, model = cycle_model
    optimizer = make_optimizer(model, cfg.training)
    assert optimizer.param_groups[1]["lr"] == 0.05  # the tables' own learning rate
    rng = np.random.default_rng(0)
    before = {k: v.clone() for k, v in model.shared_state().items()}
    for _ in range(30):
        train_epoch(model, optimizer, data, cfg.training, rng, torch.device("cpu"))
    after = model.shared_state()
    assert not torch.equal(before["transitions.prev.weight"], after["transitions.prev.weight"])

    model.eval()
    history = recency.recent_items(data.train_users, data.train_items, data.n_users, 1)
    head = recency.RecencyScorer(model, history, decay=0.5, weight=0.0, transition_weight=1.0)
    top = head.transition_scores(torch.arange(data.n_users)).argmax(dim=1).numpy()
    next_to = [t in {(h - 1) % data.n_items, (h + 1) % data.n_items} for t, h in zip(top, history[:, 0])]
    assert np.mean(next_to) >= 0.9  # pairs are both orders: the item before or after the user's latest
    # without the tables' weight the head is the recency head alone
    plain = recency.RecencyScorer(model, history, decay=0.5, weight=0.5)
    both = recency.RecencyScorer(model, history, decay=0.5, weight=0.5, transition_weight=2.0)
    users = torch.arange(data.n_users)
    assert not torch.allclose(plain.full_sort_predict(users), both.full_sort_predict(users))
    assert torch.allclose(both.for_target("val").full_sort_predict(users), both.full_sort_predict(users))


def test_the_tables_need_the_recency_head_and_no_dp(tiny_params):
    model = tiny_params["model"]
    with pytest.raises(ConfigError, match="needs model.personalisation recency"):
        from_dict(tiny_params | {"model": model | {"transition_dim": 16}})
    with pytest.raises(ConfigError, match="not trained by privacy.enabled"):
        from_dict(tiny_params | {"model": model | {"transition_dim": 16, "personalisation": "recency"},
                                 "privacy": tiny_params.get("privacy", {}) | {"enabled": True}})
    with pytest.raises(ConfigError, match="model.transition_window"):
        from_dict(tiny_params | {"model": model | {"transition_window": 0}})


def test_trained_tables_aggregate_bit_identically_under_ckks_and_in_plaintext(cycle_model):
    """The tables are more rows of the same flat update: real CKKS ciphertexts of two silos' trained updates
    (tables included) decrypt to exactly the plaintext path's mean."""
    from fedrec.core.config import CryptoConfig
    from fedrec.core.state import flatten_state
    from fedrec.crypto.ckks import CKKSCodec, PlainCodec, create_keys
    from fedrec.crypto.updates import LocalUpdate, aggregate_updates, decrypt_aggregate, encrypt_update

    cfg, data, model = cycle_model
    start = {k: v.clone() for k, v in model.shared_state().items()}
    updates = []
    for i, n in enumerate((120, 45)):
        local = build_model(model_config(cfg.model, data.n_users, data.n_items), torch.Generator().manual_seed(0))
        train_epoch(local, make_optimizer(local, cfg.training), data, cfg.training, np.random.default_rng(i),
                    torch.device("cpu"))
        delta = {k: v - start[k] for k, v in local.shared_state().items()}
        assert delta["transitions.next.weight"].abs().sum() > 0
        updates.append(LocalUpdate(silo_id=str(i), round=1, n_samples=n, delta=delta))
    crypto = CryptoConfig()
    keys = create_keys(crypto)
    slots = crypto.poly_modulus_degree // 2
    silo = CKKSCodec(keys.secret_context, slots, public_context=keys.public_context)
    he_sum = aggregate_updates([encrypt_update(u, silo, crypto, 165) for u in updates],
                               CKKSCodec(keys.public_context, slots), 1, crypto)
    plain_sum = aggregate_updates([encrypt_update(u, PlainCodec(), crypto, 165) for u in updates], PlainCodec(), 1,
                                  crypto)
    he, plain = decrypt_aggregate(he_sum, silo).mean_delta, decrypt_aggregate(plain_sum, PlainCodec()).mean_delta
    assert set(he) == set(start) and "transitions.prev.weight" in he
    np.testing.assert_array_equal(flatten_state(he), flatten_state(plain))
