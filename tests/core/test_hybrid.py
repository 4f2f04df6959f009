"""The hybrid model (models/hybrid.py) and cold-start items (fedrec.core.coldstart): a cold item's score comes from its
text, the text adapter is shared and goes through the encrypted aggregation, the cold items are the same seeded set
everywhere and never trained on, and `fedrec centralized` / `fedrec run` report cold_* metrics beside warm ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from fedrec.core import coldstart, item_text
from fedrec.core.config import CryptoConfig, from_dict, load_config
from fedrec.core.state import state_delta
from fedrec.core.training import SiloData, make_optimizer, model_config, train_epoch
from fedrec.crypto.ckks import CKKSCodec, create_keys
from fedrec.crypto.updates import (
    LocalUpdate,
    aggregate_updates,
    decrypt_aggregate,
    encrypt_update,
)
from fedrec.models import RecModelConfig, build_model
from fedrec.silo import data as pipeline

from conftest import make_tiny_params

COLD = {"evaluation.cold_item_fraction": 0.2}  # 12 of the tiny catalogue's 60 items
COLD_KEYS = ("cold_hr@10", "cold_ndcg@10", "cold_full_hr@10", "cold_full_ndcg@10")


def hybrid(num_items: int = 10, text: np.ndarray | None = None, seed: int = 0):
    text = np.random.default_rng(1).normal(size=(num_items, 12)).astype(np.float32) if text is None else text
    cfg = RecModelConfig(name="hybrid", num_users=4, num_items=num_items, embedding_dim=8, mlp_layers=(16, 8),
                         item_features=text, adapter_hidden=16)
    return build_model(cfg, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def tiny_embeddings(tmp_path_factory) -> Path:
    """The tiny synthetic catalogue's MiniLM embeddings, encoded once per session (copied into each work dir)."""
    base = tmp_path_factory.mktemp("tiny-embeddings")
    cfg = from_dict(make_tiny_params(base))
    pipeline.prepare(cfg)
    item_text.embed_items(cfg)
    return item_text.embeddings_dir(cfg)


def with_embeddings(cfg, tiny_embeddings: Path) -> None:
    shutil.copytree(tiny_embeddings, item_text.embeddings_dir(cfg), dirs_exist_ok=True)


# --- the model --------------------------------------------------------------------------------------------------
def test_a_cold_items_score_depends_on_its_text():
    # Prepare: 20 items whose text says "kind A" or "kind B"; user 0 likes A, user 1 likes B. Items 18 (A) and 19 (B)
    # are cold: in no training row, not even as a sampled negative
    rng = np.random.default_rng(0)
    kinds = np.array([0, 1] * 10)
    text = (np.eye(2, 12)[kinds] * 3 + 0.1 * rng.normal(size=(20, 12))).astype(np.float32)
    warm = np.arange(18)
    users = np.repeat([0, 1, 2, 3], 9)
    items = np.concatenate([warm[kinds[warm] == 0], warm[kinds[warm] == 1]] * 2)
    cold = coldstart.ColdItems(pool=np.array([18, 19]), targets=np.full(4, -1), negatives=np.zeros((4, 0), np.int64),
                               known=np.zeros(0, np.int64))
    data = SiloData(user_ids=np.arange(4), train_users=users, train_items=items, val_items=np.zeros(4, np.int64),
                    test_items=np.ones(4, np.int64), negatives=np.zeros((4, 1), np.int64), n_items=20, cold=cold)
    model = hybrid(20, text)
    cfg = from_dict({"training": {"batch_size": 256, "lr": 0.03}}).training
    optimizer, gen = make_optimizer(model, cfg), np.random.default_rng(0)
    ids_before = model.items.item_gmf.weight[18:].detach().clone()
    for _ in range(60):
        train_epoch(model, optimizer, data, cfg, gen, torch.device("cpu"))

    # Execute
    scores = model.predict(torch.tensor([0, 0, 1, 1]), torch.tensor([18, 19, 18, 19]))

    # Assert: the cold items were never trained (ID rows unchanged), yet each user ranks the cold item whose text
    # is of the kind they like first
    torch.testing.assert_close(model.items.item_gmf.weight[18:].detach(), ids_before)
    assert scores[0] > scores[1] and scores[3] > scores[2]
    # swap the two cold items' texts: their scores follow the text
    swapped = text.copy()
    swapped[[18, 19]] = text[[19, 18]]
    model.items.text.copy_(torch.from_numpy(swapped))
    again = model.predict(torch.tensor([0, 0]), torch.tensor([18, 19]))
    assert again[1] > again[0]
    torch.testing.assert_close(model.full_sort_predict(torch.tensor([0]))[0, 18:], again)


def test_the_adapter_is_shared_and_goes_through_the_encrypted_aggregation():
    # Prepare: a hybrid model; one local step on made-up data from the round's global state
    model = hybrid()
    start = model.shared_state()
    data = SiloData(user_ids=np.arange(4), train_users=np.array([0, 1, 2, 3, 0]), train_items=np.array([1, 2, 3, 4, 5]),
                    val_items=np.array([6, 6, 6, 6]), test_items=np.array([7, 7, 7, 7]),
                    negatives=np.tile(np.array([8, 9]), (4, 1)), n_items=10)
    cfg = from_dict({"training": {"batch_size": 4}}).training
    train_epoch(model, make_optimizer(model, cfg), data, cfg, np.random.default_rng(0), torch.device("cpu"))
    delta = state_delta(model.shared_state(), start)

    # Assert: the adapter is part of the shared state (the frozen text is not: it is public)
    adapter = [k for k in start if k.startswith("adapter.")]
    assert adapter and all(k in start for k in ("item_gmf.weight", "item_mlp.weight", "out.weight"))
    assert not any("text" in k for k in start)
    assert all(float(delta[k].abs().sum()) > 0 for k in adapter)  # trained locally

    # Execute: the federation's path: weight, quantise, encrypt (CKKS), sum, decrypt
    crypto = CryptoConfig()
    keys = create_keys(crypto)
    codec = CKKSCodec(keys.secret_context, crypto.poly_modulus_degree // 2, public_context=keys.public_context)
    update = encrypt_update(LocalUpdate("a", 1, 5, delta), codec, crypto, 10)
    mean = decrypt_aggregate(aggregate_updates([update, encrypt_update(LocalUpdate("b", 1, 5, delta), codec, crypto, 10)],
                                               CKKSCodec(keys.public_context, crypto.poly_modulus_degree // 2), 1, crypto),
                             codec).mean_delta

    # Assert: the adapter's tensors are in the encrypted layout and come back as the (mean) update
    assert {s.name for s in update.layout} == set(start)
    for k in adapter:
        torch.testing.assert_close(mean[k].float(), delta[k].float(), atol=2.0 * 2.0 ** -crypto.quantization_bits,
                                   rtol=0)


# --- cold-start items -------------------------------------------------------------------------------------------
def test_cold_items_are_seeded_from_the_catalogue():
    ids = np.arange(1, 61)
    first = coldstart.cold_item_ids(ids, 0.1, 7)

    assert len(first) == 6 and np.array_equal(first, coldstart.cold_item_ids(ids[::-1], 0.1, 7))
    assert not np.array_equal(first, coldstart.cold_item_ids(ids, 0.1, 8))
    assert len(coldstart.cold_item_ids(ids, 0.0, 7)) == 0


def test_the_split_removes_every_cold_interaction_from_training_at_every_silo(tiny_params):
    # Prepare
    cfg = from_dict(tiny_params).replace(**COLD)
    silos = pipeline.ensure_data(cfg)
    cold = pipeline.split_cold_ids(cfg)
    plain = from_dict(tiny_params)

    for silo in silos:
        # Execute
        split = pipeline.split_silo(cfg, silo)
        data = pipeline.load_silo_data(cfg, silo)

        # Assert: the same cold items at each silo, none of them in training (nor as a sampled training negative)
        assert split.cold_items == tuple(cold)
        assert not split.train["item_id"].isin(cold).any()
        assert not split.holdout[["val_item", "test_item"]].isin(cold).any().any()
        frame = pipeline.silo_interactions(cfg, silo)
        touched = frame[frame["item_id"].isin(cold)].groupby("user_id")["item_id"].apply(set)
        for _, row in split.holdout.iterrows():
            assert set(row["cold_items"]) == touched.get(row["user_id"], set())
            assert not set(row["cold_negatives"]) & set(row["cold_items"])
            assert set(row["cold_negatives"]) <= set(cold)
        _, items, _ = data.epoch_samples(4, np.random.default_rng(0))
        assert not np.isin(items, data.cold.pool).any()
        assert (data.cold.targets >= 0).sum() == (split.holdout["cold_items"].str.len() > 0).sum()
        # the warm protocol's fixed negatives are the ones a run without cold items draws for the same users
        warm = pipeline.split_silo(plain, silo).holdout.set_index("user_id")["negatives"]
        for user, negatives in split.holdout.set_index("user_id")["negatives"].items():
            assert list(negatives) == list(warm[user])


def test_cold_metrics_count_ties_as_a_random_order():
    # a target tied with 19 candidates: HR@10 is the chance it lands in the top 10
    hr, ndcg = coldstart.tie_aware_sums(np.array([0]), np.array([19]), 10)
    assert hr == pytest.approx(0.5)
    assert ndcg == pytest.approx(sum(1 / np.log2(r + 2) for r in range(10)) / 20)
    assert coldstart.tie_aware_sums(np.array([3, 12]), np.array([0, 0]), 10) == pytest.approx((1.0, 1 / np.log2(5)))


@pytest.mark.slow
def test_centralized_hybrid_reports_cold_metrics_beside_warm_ones(params_file, tiny_cfg, tiny_embeddings):
    # Prepare: the tiny data with 20% cold items; the catalogue's embeddings (encoded once this session)
    from fedrec.cli.app import app

    pipeline.prepare(tiny_cfg)
    with_embeddings(tiny_cfg, tiny_embeddings)
    runner = CliRunner()
    args = ["-p", str(params_file), "-S", "evaluation.cold_item_fraction=0.2", "--json"]

    # Execute
    results = {m: runner.invoke(app, ["centralized", "--model", m, *args]) for m in ("hybrid", "neumf", "pop")}

    # Assert
    for model, result in results.items():
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert out["model"] == model
        for key in ("hr@10", "full_hr@10", *COLD_KEYS):
            assert 0.0 <= out[key] <= 1.0, (model, key)
    # popularity knows nothing of a cold item (count 0, all tied): a random order among the cold candidates
    pop = json.loads(results["pop"].stdout)
    assert 0.0 < pop["cold_hr@10"] < 1.0


@pytest.mark.slow
def test_federated_hybrid_with_he_reports_cold_metrics(prefect_harness, tmp_path, tiny_embeddings):
    from fedrec.flows.federated import run_demo

    # Prepare
    params = make_tiny_params(tmp_path)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    overrides = {"model.name": "hybrid", **COLD}
    cfg = load_config(path, overrides)
    pipeline.prepare(cfg)
    with_embeddings(cfg, tiny_embeddings)

    # Execute
    summary = run_demo(params_path=str(path), overrides=overrides)

    # Assert: warm and cold metrics of the selected round; the adapter was among the encrypted, shared tensors
    assert summary["model"] == "hybrid" and summary["he"] is True and summary["failures"] == {}
    for key in ("hr@10", "full_hr@10", *COLD_KEYS):
        assert 0.0 <= summary[key] <= 1.0, key
    selected = summary["history"][summary["selected_round"] - 1]
    assert summary["cold_hr@10"] == selected["cold_hr@10"]
    neumf = build_model(model_config(cfg.model.__class__(name="neumf", embedding_dim=8, mlp_layers=(16, 8)), 1, 60))
    hybrid_model = build_model(model_config(cfg.model, 1, 60, item_features=item_text.model_features(cfg)))
    adapter = sum(t.numel() for k, t in hybrid_model.shared_state().items() if k.startswith("adapter."))
    assert summary["plaintext_fp32_bytes"] == 4 * (sum(t.numel() for t in neumf.shared_state().values()) + adapter)
