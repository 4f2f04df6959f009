"""flows.federated + flows.silo_agent: the whole federation end to end on a real Prefect server (silo agents in
their own host processes), a real MLflow store and real TenSEAL."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import make_tiny_params
from fedrec import pipeline
from fedrec.config import load_config
from fedrec.crypto import CKKSCodec
from fedrec.federation.filters import load_global
from fedrec.silo.store import SiloStore
from fedrec.wire.exchange import PUBLIC_CONTEXT_KEY, run_exchange
from fedrec.wire.payload import MAGIC, EncryptedUpdate

METRICS = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10")


def _run_flow(base: Path, overrides: dict | None = None) -> tuple[dict, dict, Path]:
    from flows.federated import run_demo

    params = make_tiny_params(base)
    path = base / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    summary = run_demo(params_path=str(path), overrides=overrides)
    return summary, params, path


@pytest.fixture(scope="module")
def he_run(prefect_harness, tmp_path_factory):
    return _run_flow(tmp_path_factory.mktemp("he"))


@pytest.fixture(scope="module")
def plain_run(prefect_harness, tmp_path_factory):
    return _run_flow(tmp_path_factory.mktemp("plain"), {"federation.he": False})


def test_he_run_summary(he_run):
    summary, params, _ = he_run

    assert summary["he"] is True and summary["rounds"] == 2
    assert summary["silos"] == ["0", "1", "2"] and summary["excluded"] == {} and summary["failures"] == {}
    assert summary["key_holder"] == "0" and summary["coordinator_can_decrypt"] is False
    assert summary["seconds_per_round_median"] > 0
    for key in METRICS:
        assert 0.0 <= summary[key] <= 1.0
    assert [h["round"] for h in summary["history"]] == [1, 2]
    assert all(0.0 <= h["val_hr@10"] <= 1.0 for h in summary["history"])
    assert summary["selected_round"] in (1, 2)
    selected = summary["history"][summary["selected_round"] - 1]
    assert summary["hr@10"] == selected["test_hr@10"]
    assert selected["val_hr@10"] == max(h["val_hr@10"] for h in summary["history"])
    assert set(summary["per_silo_test"]) == {"0", "1", "2"}
    # ciphertexts are much bigger than the fp32 update they carry
    assert all(b > summary["plaintext_fp32_bytes"] for b in summary["bytes_per_round"].values())


def test_he_run_is_tracked_in_mlflow(he_run):
    # Prepare
    summary, params, _ = he_run
    client = mlflow.MlflowClient(params["tracking"]["uri"])
    run_id = summary["mlflow_run_id"]

    # Execute
    run = client.get_run(run_id)

    # Assert: per-round metrics with steps 1 and 2
    assert run.info.status == "FINISHED"
    assert run.data.tags["prefect_flow_run"] == summary["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "val_hr_at_10")] == [1, 2]
    assert [m.value for m in client.get_metric_history(run_id, "val_hr_at_10")] == \
        [h["val_hr@10"] for h in summary["history"]]
    for silo in ("0", "1", "2"):
        history = client.get_metric_history(run_id, f"bytes_sent_silo_{silo}")
        assert [m.step for m in history] == [1, 2]
        assert np.mean([m.value for m in history]) == pytest.approx(summary["bytes_per_round"][silo])
    assert [m.step for m in client.get_metric_history(run_id, "seconds_train")] == [1, 2]
    assert all(m.value > 0 for m in client.get_metric_history(run_id, "seconds_encrypt"))
    assert run.data.metrics["selected_round"] == summary["selected_round"]
    assert run.data.params["silos"] == "0,1,2" and run.data.params["silos_excluded"] == "-"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"hr_ndcg_per_round.png", "summary.json", "validation.json"} <= artifacts
    # Assert: the selected global item tower is a registered model version of this run
    versions = client.search_model_versions(f"name='{load_config(he_run[2]).tracking.registered_model}'")
    assert [v.run_id for v in versions] == [run_id]
    assert summary["model_uri"].startswith("models:/")


def test_plain_run_matches_he_run(he_run, plain_run):
    # Prepare
    he_summary, he_params, he_path = he_run
    plain_summary, plain_params, plain_path = plain_run
    he_ex = run_exchange(load_config(he_path), he_summary["run_id"])
    plain_ex = run_exchange(load_config(plain_path, {"federation.he": False}), plain_summary["run_id"])

    # Execute
    he_global, plain_global = load_global(he_ex, 2), load_global(plain_ex, 2)
    initial = load_global(he_ex, 0)

    # Assert
    assert plain_summary["he"] is False
    assert set(he_global) == set(plain_global) == set(initial)
    for name in he_global:
        assert he_global[name].shape == plain_global[name].shape
        # quantized aggregation (crypto.quantization_bits): CKKS noise is rounded away, models are identical
        assert torch.equal(he_global[name], plain_global[name]), name
    assert any(not torch.equal(he_global[n], initial[n]) for n in initial)  # training moved the model
    assert torch.equal(initial["out.weight"], load_global(plain_ex, 0)["out.weight"])
    assert plain_summary["hr@10"] == he_summary["hr@10"]


def test_bad_silo_is_excluded(prefect_harness, tiny_cfg, params_file):
    # Prepare: the data steps, then one silo ships a rating of 9
    from flows.federated import run_demo

    pipeline.prepare(tiny_cfg)
    pipeline.partition(tiny_cfg)
    bad = pipeline.Paths.of(tiny_cfg).silos / "1" / "interactions.parquet"
    frame = pd.read_parquet(bad)
    frame.loc[3, "rating"] = 9
    frame.to_parquet(bad, index=False)

    # Execute
    summary = run_demo(params_path=str(params_file), overrides={"federation.rounds": 1})

    # Assert: silo 1 left out with the failed expectation as the reason; 0 and 2 trained
    assert set(summary["excluded"]) == {"1"}
    assert "expect_column_values_to_be_between(rating)" in summary["excluded"]["1"]
    assert "[9]" not in summary["excluded"]["1"]  # the offending values stay in the silo's own report
    assert "e.g. [9]" in json.dumps(json.loads((pipeline.Paths.of(tiny_cfg).validation / "1.json").read_text()))
    assert summary["silos"] == ["0", "2"]
    assert set(summary["bytes_per_round"]) == {"0", "2"}
    assert set(summary["per_silo_test"]) == {"0", "2"}
    assert [h["round"] for h in summary["history"]] == [1]
    paths = pipeline.Paths.of(tiny_cfg)
    assert json.loads((paths.validation / "1.json").read_text())["success"] is False
    assert not (paths.split / "1").exists()
    exchange = run_exchange(tiny_cfg, summary["run_id"])
    assert exchange.keys("round-0001/updates") == ["round-0001/updates/0.bin", "round-0001/updates/2.bin"]
    aggregate = EncryptedUpdate.from_bytes(exchange.get("round-0001/aggregate.bin"), expect_kind="aggregate")
    assert aggregate.contributors == ("0", "2")
    run = mlflow.MlflowClient(tiny_cfg.tracking.uri).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["silos_excluded"] == "1"


def _user_rows(model_path: Path) -> list[np.ndarray]:
    users = torch.load(model_path, weights_only=True)["users"]
    assert set(users) == {"tables.gmf.weight", "tables.mlp.weight"}
    return [row for table in users.values() for row in table.numpy()]


def test_exchange_leaks_no_user_data_and_no_secret_key(he_run):
    # Prepare
    summary, params, path = he_run
    cfg = load_config(path)
    exchange_dir = Path(cfg.federation.exchange_url) / summary["run_id"]
    files = sorted(p for p in exchange_dir.rglob("*") if p.is_file())
    rows = [r for s in summary["silos"] for r in _user_rows(SiloStore.of(cfg, s, summary["run_id"]).model_path)]
    patterns = [r.astype("<f4").tobytes() for r in rows] + [r.astype("<f8").tobytes() for r in rows]
    interactions = pd.read_parquet(pipeline.Paths.of(cfg).silos / "0" / "interactions.parquet")

    # Assert: what is on the exchange
    names = [str(p.relative_to(exchange_dir)) for p in files]
    assert PUBLIC_CONTEXT_KEY in names
    assert {"global/round-0000.bin", "global/round-0002.bin", "round-0002/aggregate.bin",
            "round-0002/updates/1.bin"} <= set(names)
    assert len(rows) == 2 * 90 and len(patterns) == 4 * 90
    for file in files:
        data = file.read_bytes()
        rel = str(file.relative_to(exchange_dir))
        assert "user" not in rel.lower() and "interaction" not in rel.lower() and "key" not in rel.lower()
        if rel.endswith(".json"):  # small typed messages: verdicts, instructions, counts, seconds, metric sums
            assert isinstance(json.loads(data), dict), rel
        else:
            assert rel == PUBLIC_CONTEXT_KEY or data.startswith(MAGIC), rel  # typed payloads besides the context
        assert not data.startswith(b"PAR1") and not data.endswith(b"PAR1"), rel  # no parquet
        assert b"user_id" not in data and b"interactions" not in data and b"timestamp" not in data, rel
        for pattern in patterns:
            assert pattern not in data, f"{rel} holds a user embedding"
        # no raw interaction row as text either (e.g. a CSV dump)
        first = interactions.iloc[0]
        assert f"{first.user_id},{first.item_id},{first.rating},{first.timestamp}".encode() not in data
        if rel.endswith(".bin"):
            payload = EncryptedUpdate.from_bytes(data, source=rel)
            assert all(not t.name.startswith("users.") for t in payload.layout)
    # no plaintext update ever touched a silo's disk: its store holds the trained user tower and, at the key
    # holder, the secret context; nothing else
    for silo in summary["silos"]:
        root = SiloStore.of(cfg, silo, summary["run_id"]).root
        stored = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        assert stored == ({"model.pt", "keys/secret.ctx"} if silo == summary["key_holder"] else {"model.pt"}), stored
    # the public context holds no secret key
    public = (exchange_dir / PUBLIC_CONTEXT_KEY).read_bytes()
    assert CKKSCodec(public, cfg.crypto.poly_modulus_degree // 2).can_decrypt is False
    # the secret context lives only in the key holder's store, private to it; the other silos never get it
    secret = SiloStore.of(cfg, summary["key_holder"], summary["run_id"]).secret_context_path
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert CKKSCodec(secret.read_bytes(), 4096, public_context=public).can_decrypt
    assert all(secret.read_bytes() != f.read_bytes() for f in files)
    others = [s for s in summary["silos"] if s != summary["key_holder"]]
    assert others and not any(SiloStore.of(cfg, s, summary["run_id"]).secret_context_path.exists() for s in others)


def test_user_embedding_patterns_are_found_where_they_are(he_run):
    """Control for the scan above: the same byte patterns are found in the silo's own model file."""
    summary, _, path = he_run
    store = SiloStore.of(load_config(path), "0", summary["run_id"])
    model_bytes = store.model_path.read_bytes()
    rows = _user_rows(store.model_path)

    assert all(np.abs(r).sum() > 0 for r in rows)  # trained embeddings, not zeros that match anything
    assert all(r.astype("<f4").tobytes() in model_bytes for r in rows)


def test_refit_phase_retrains_for_the_selected_rounds(prefect_harness, tmp_path):
    # Execute
    summary, params, path = _run_flow(tmp_path, {"training.refit": True})

    # Assert: a second federation (validation items in training) ran for exactly the selected rounds
    refit = run_exchange(load_config(path), f"{summary['run_id']}-refit")
    rounds_run = sorted(k for k in refit.keys("global") if k.endswith(".bin"))
    assert summary["refit"] is True
    assert len(rounds_run) == summary["selected_round"] + 1  # round 0 (initial) .. selected round
    run = mlflow.MlflowClient(params["tracking"]["uri"]).get_run(summary["mlflow_run_id"])
    assert run.data.metrics["refit_test_hr_at_10"] == summary["hr@10"]
    assert run.data.metrics["selected_test_hr_at_10"] == summary["hr@10"]
