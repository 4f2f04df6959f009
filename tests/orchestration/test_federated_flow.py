"""fedrec.flows.federated + flows.silo_agent: the whole federation end to end on a real Prefect server (silo agents in
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

from fedrec.core.config import load_config
from fedrec.crypto.ckks import CKKSCodec
from fedrec.protocol.reads import load_global
from fedrec.silo import data as pipeline
from fedrec.silo.store import SiloStore
from fedrec.wire.exchange import PUBLIC_CONTEXT_KEY, run_exchange
from fedrec.wire.payload import MAGIC, EncryptedUpdate
from fedrec.wire.trust import SEALED_MAGIC, peek_envelope

from conftest import make_tiny_params
from support import leakscan

pytestmark = pytest.mark.slow  # real servers, subprocess CLIs or whole federations: not in `make test-fast`

METRICS = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10")


#: the silos' raw user ids are shifted into a range no other number in a run's records falls into, so a
#: leak scan can look for them (and the interactions' timestamps, 88xxxxxxx) as text
USER_ID_BASE = 7_301_000_000


def _run_flow(base: Path, overrides: dict | None = None) -> tuple[dict, dict, Path]:
    from fedrec.flows.federated import run_demo

    params = make_tiny_params(base)
    path = base / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    cfg = load_config(path, overrides)
    for silo in pipeline.ensure_partitioned(cfg):
        file = pipeline.Paths.of(cfg).silos / silo / "interactions.parquet"
        frame = pd.read_parquet(file)
        frame["user_id"] += USER_ID_BASE
        frame.to_parquet(file, index=False)
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
        history = client.get_metric_history(run_id, f"bytes/silo_{silo}")
        assert [m.step for m in history] == [1, 2]
        assert np.mean([m.value for m in history]) == pytest.approx(summary["bytes_per_round"][silo])
    assert [m.step for m in client.get_metric_history(run_id, "seconds/train")] == [1, 2]
    assert all(m.value > 0 for m in client.get_metric_history(run_id, "seconds/encrypt"))
    # the silos' training CPU (one thread each: never more than their training's wall time)
    walls = [m.value for m in client.get_metric_history(run_id, "seconds/train")]
    cpus = [m.value for m in client.get_metric_history(run_id, "seconds/train_cpu")]
    assert len(cpus) == 2 and all(0 < cpu <= wall + 0.01 for cpu, wall in zip(cpus, walls)), (cpus, walls)
    # the rounds' metrics, logged from a thread of their own, went to this run (MLflow's active run is per thread)
    assert len(client.search_runs([run.info.experiment_id],
                                  f"tags.prefect_flow_run = '{summary['run_id']}'")) == 1
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
    from fedrec.flows.federated import run_demo

    pipeline.prepare(tiny_cfg)
    pipeline.partition(tiny_cfg)
    bad = pipeline.Paths.of(tiny_cfg).silos / "1" / "interactions.parquet"
    frame = pd.read_parquet(bad)
    frame.loc[3, "rating"] = 9
    frame.to_parquet(bad, index=False)

    # Execute
    summary = run_demo(params_path=str(params_file), overrides={"federation.rounds": 1, "federation.min_silos": 2,
                                                                "evaluation.k": 5})

    # Assert: silo 1 left out with the failed expectation as the reason; 0 and 2 trained
    assert set(summary["excluded"]) == {"1"}
    assert "expect_column_values_to_be_between(rating)" in summary["excluded"]["1"]
    # counts and names only, in the silo's own report too: the offending value is raw data
    assert "1 unexpected value(s)" in summary["excluded"]["1"] and "[9]" not in summary["excluded"]["1"]
    assert "[9]" not in (pipeline.Paths.of(tiny_cfg).validation / "1.json").read_text()
    assert summary["silos"] == ["0", "2"]
    assert {"hr@5", "ndcg@5", "full_hr@5", "full_ndcg@5"} <= set(summary) and "hr@10" not in summary  # evaluation.k
    assert set(summary["bytes_per_round"]) == {"0", "2"}
    assert set(summary["per_silo_test"]) == {"0", "2"}
    assert [h["round"] for h in summary["history"]] == [1]
    paths = pipeline.Paths.of(tiny_cfg)
    assert json.loads((paths.validation / "1.json").read_text())["success"] is False
    assert not (paths.split / "1").exists()
    exchange = run_exchange(tiny_cfg, summary["run_id"])
    assert exchange.keys("round-0001/updates") == ["round-0001/updates/0.bin", "round-0001/updates/2.bin"]
    aggregate = EncryptedUpdate.from_bytes(peek_envelope(exchange.get("round-0001/aggregate.bin"))[1],
                                           expect_kind="aggregate")
    assert aggregate.contributors == ("0", "2")
    run = mlflow.MlflowClient(tiny_cfg.tracking.uri).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["silos_excluded"] == "1"


def _user_rows(model_path: Path) -> list[np.ndarray]:
    users = torch.load(model_path, weights_only=True)["users"]
    assert set(users) == {"tables.gmf.weight", "tables.mlp.weight"}
    return [row for table in users.values() for row in table.numpy()]


def _needles(cfg, summary) -> list:
    """What must not leave the silos: the run's secret key, trained user vectors, raw user ids, interactions."""
    rows = [r for s in summary["silos"] for r in _user_rows(SiloStore.of(cfg, s, summary["run_id"]).model_path)]
    frames = [pd.read_parquet(pipeline.Paths.of(cfg).silos / s / "interactions.parquet") for s in summary["silos"]]
    secret = SiloStore.of(cfg, summary["key_holder"], summary["run_id"]).secret_context_path.read_bytes()
    return (leakscan.secret_key_needles(secret) + leakscan.embedding_needles(rows)
            + leakscan.number_needles("user-id", np.concatenate([f.user_id for f in frames]))
            + leakscan.number_needles("interaction", np.concatenate([f.timestamp for f in frames])))


def _written_by_the_run(cfg, summary) -> list[Path]:
    """Everything a run writes outside the silos' own stores: exchange, the coordinator's state, MLflow, Prefect,
    host logs."""
    from prefect.settings import get_current_settings

    db_url = get_current_settings().server.database.connection_url.get_secret_value()
    prefect_db = Path(db_url.split(":///", 1)[1])
    mlflow_db = Path(cfg.tracking.uri.removeprefix("sqlite:///"))
    return [Path(cfg.federation.exchange_url) / summary["run_id"], mlflow_db, mlflow_db.parent / "mlartifacts",
            Path(cfg.federation.state_dir) / "coordinator",
            *prefect_db.parent.glob(prefect_db.name + "*"), Path(cfg.federation.state_dir) / "logs",
            Path(get_current_settings().home) / "storage"]


def test_leak_scan_finds_no_secret_key_user_data_or_interaction_after_a_real_run(he_run):
    # Prepare
    summary, params, path = he_run
    cfg = load_config(path)
    needles = _needles(cfg, summary)
    places = _written_by_the_run(cfg, summary)
    scanned = leakscan.files_under(*places)

    # Execute
    findings = leakscan.scan(places, needles)

    # Assert: every kind of needle is there, every place was searched, nothing was found
    assert {n.kind for n in needles} == {"secret-key", "user-embedding", "user-id", "interaction"}
    assert any(p.suffix == ".db" and "mlflow" in p.name for p in scanned)
    assert any("prefect" in p.name and p.suffix == ".db" for p in scanned)
    assert any(p.name.endswith(".png") for p in scanned) and any("round-0002" in str(p) for p in scanned)
    assert any(p.name == "checkpoint.pt" for p in scanned)  # the coordinator's own checkpoint
    assert findings == [], "\n".join(map(str, findings))


@pytest.mark.parametrize("kind", ["secret-key", "user-embedding", "user-id", "interaction"])
def test_the_leak_scan_finds_each_kind_where_it_is_planted(he_run, tmp_path, kind):
    """Control for the scan above: plant one needle of each kind in a log line, an MLflow param and a payload."""
    summary, params, path = he_run
    cfg = load_config(path)
    needles = [n for n in _needles(cfg, summary) if n.kind == kind]
    text = next(n.pattern.decode() for n in needles if n.pattern.isascii() and len(n.pattern) > 8 or n.numeric)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "host.log").write_bytes(b"INFO round 3: silo said " + needles[0].pattern + b" and went on\n")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'planted-mlflow.db'}")
    run = client.create_run(client.create_experiment("planted"))
    client.log_param(run.info.run_id, "note", text)  # as text (hex or digits), as a careless log would

    findings = leakscan.scan([planted, tmp_path / "planted-mlflow.db"], needles)

    assert {(f.kind, Path(f.path).name) for f in findings} == {(kind, "host.log"), (kind, "planted-mlflow.db")}


def test_exchange_holds_signed_payloads_and_sealed_secrets_only(he_run):
    # Prepare
    summary, params, path = he_run
    cfg = load_config(path)
    exchange_dir = Path(cfg.federation.exchange_url) / summary["run_id"]
    files = sorted(p for p in exchange_dir.rglob("*") if p.is_file())
    names = [str(p.relative_to(exchange_dir)) for p in files]
    secret = SiloStore.of(cfg, summary["key_holder"], summary["run_id"]).secret_context_path

    # Assert: what is on the exchange, each file signed by a party
    assert {PUBLIC_CONTEXT_KEY, "global/round-0000.bin", "global/round-0002.bin", "round-0002/aggregate.bin",
            "round-0002/updates/1.bin", "context/sealed/1.bin", "context/sealed/2.bin"} <= set(names)
    assert "context/sealed/0.bin" not in names  # the key holder made the secret; nobody seals it to itself
    for file, rel in zip(files, names):
        data = file.read_bytes()
        author, body = peek_envelope(data, rel)
        assert author in {"coordinator", *summary["silos"]}, rel
        if rel.endswith(".json"):  # small typed messages: verdicts, instructions, counts, seconds, metric sums
            assert isinstance(json.loads(body), dict), rel
        elif rel.startswith("context/sealed/"):
            assert body.startswith(SEALED_MAGIC) and author == summary["key_holder"], rel
        elif rel != PUBLIC_CONTEXT_KEY:
            payload = EncryptedUpdate.from_bytes(body, source=rel)
            assert body.startswith(MAGIC) and all(not t.name.startswith("users.") for t in payload.layout)
    # no plaintext update ever touched a silo's disk: its store holds the trained user tower, the coordinator key
    # it trusted and, at the key holder, the secret context; nothing else
    for silo in summary["silos"]:
        root = SiloStore.of(cfg, silo, summary["run_id"]).root
        stored = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        expected = {"model.pt", "coordinator.json"} | ({"keys/secret.ctx"} if silo == summary["key_holder"] else set())
        assert stored == expected, stored
    # the public context holds no secret key; the secret context is private to the key holder's store
    public = peek_envelope((exchange_dir / PUBLIC_CONTEXT_KEY).read_bytes())[1]
    assert CKKSCodec(public, cfg.crypto.poly_modulus_degree // 2).can_decrypt is False
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert CKKSCodec(secret.read_bytes(), 4096, public_context=public).can_decrypt


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


#: every personalisation at once (fedrec.silo.personal): a personal model kept across rounds (ditto), blended with
#: the global one, and the recency head over both
PERSONAL = {"model.personalisation": "ditto+recency", "model.personal_epochs": 2, "model.personal_blend": 0.5}


@pytest.fixture(scope="module")
def personal_run(prefect_harness, tmp_path_factory):
    return _run_flow(tmp_path_factory.mktemp("personal"), PERSONAL)


def _personal_item_rows(cfg, summary) -> list[np.ndarray]:
    """Each silo's personal item vectors (model.personalisation) that differ from the last global model's."""
    exchange = run_exchange(cfg, summary["run_id"])
    last = load_global(exchange, summary["rounds"])
    rows = []
    for silo in summary["silos"]:
        kept = torch.load(SiloStore.of(cfg, silo, summary["run_id"]).model_path, weights_only=True)["personal"]
        assert kept["round"] == summary["rounds"]
        for name, table in kept["items"].items():
            if name.startswith("item_"):  # the item embedding tables
                moved = (table != last[name]).any(dim=1)
                rows += list(table[moved].numpy())
    return rows


def test_personalised_run_shares_exactly_what_a_plain_run_shares(he_run, personal_run):
    """model.personalisation (ditto, blended, with the head) changes what each silo scores its users with, not what it sends: the global
    models are bit-identical to a run without personalisation, and the metrics differ."""
    he_summary, _, he_path = he_run
    summary, _, path = personal_run
    he_ex = run_exchange(load_config(he_path), he_summary["run_id"])
    ex = run_exchange(load_config(path), summary["run_id"])

    for r in (1, 2):
        mine, theirs = load_global(ex, r), load_global(he_ex, r)
        assert all(torch.equal(mine[name], theirs[name]) for name in theirs), r
    assert [h["val_hr@10"] for h in summary["history"]] != [h["val_hr@10"] for h in he_summary["history"]] or \
        [h["val_ndcg@10"] for h in summary["history"]] != [h["val_ndcg@10"] for h in he_summary["history"]]


def test_a_silos_personal_parameters_never_leave_it(personal_run):
    # Prepare: the personal item vectors each silo kept (those its fine-tuning moved away from the global model)
    summary, _, path = personal_run
    cfg = load_config(path)
    rows = _personal_item_rows(cfg, summary)
    needles = [leakscan.Needle("personal", n.pattern, n.numeric) for n in leakscan.embedding_needles(rows)]
    places = _written_by_the_run(cfg, summary)

    # Execute
    findings = leakscan.scan(places, needles)
    control = leakscan.scan([SiloStore.of(cfg, summary["silos"][0], summary["run_id"]).model_path], needles)

    # Assert: many moved rows; none anywhere the run wrote outside the silos; the scan does find them at home
    assert len(rows) > 10
    assert any("round-0002" in str(p) for p in leakscan.files_under(*places))
    assert findings == [], "\n".join(map(str, findings))
    assert control, "the needles must be findable where the personal model is stored"


def test_recommendations_use_the_silos_personal_model(personal_run):
    from fedrec.core.recency import BlendScorer, RecencyScorer
    from fedrec.silo.recommend import SiloRecommender

    summary, _, path = personal_run
    cfg = load_config(path, PERSONAL)
    silo = summary["silos"][0]
    kept = torch.load(SiloStore.of(cfg, silo, summary["run_id"]).model_path, weights_only=True)["personal"]

    rec = SiloRecommender(cfg, silo)

    assert rec.personalised is True
    assert isinstance(rec.model, RecencyScorer)  # ditto+recency: the head over the personal view ...
    assert isinstance(rec.model.model, BlendScorer) and rec.model.model.weight == 0.5  # ... beside the global model
    for name, value in kept["items"].items():
        assert torch.equal(rec.model.model.items.state_dict()[name].cpu(), value), name
    last = load_global(run_exchange(cfg, summary["run_id"]), summary["rounds"])
    assert all(torch.equal(rec.model.model.other.items.state_dict()[name].cpu(), value) for name, value in last.items())
    user = next(iter(rec.model_users))
    assert len(rec.recommend(user, k=5).items) == 5
    # the head's history is the user's own, newest last: the silo's latest interaction of that user leads it
    own = pipeline.silo_interactions(cfg, silo)
    own = own[own["user_id"] == user].sort_values("timestamp", kind="mergesort")
    latest = int(np.flatnonzero(rec.catalogue["item_id"].to_numpy() == own["item_id"].iloc[-1])[0])
    assert rec.model.history[rec.model_users[user], 0] == latest


TRANSITIONS = {"model.personalisation": "recency", "model.transition_dim": 8, "model.transition_lr": 0.01}


@pytest.fixture(scope="module")
def transitions_run(prefect_harness, tmp_path_factory):
    return _run_flow(tmp_path_factory.mktemp("transitions"), TRANSITIONS)


def test_the_next_item_tables_are_learned_by_the_federation_and_score_the_silos_own_histories(he_run,
                                                                                             transitions_run):
    """model.transition_dim: the tables travel as item-tower rows (masks + CKKS, like the rest), move every round,
    and the silo's recommender scores its users' own latest items through the last global tables."""
    from fedrec.core.recency import RecencyScorer
    from fedrec.silo.recommend import SiloRecommender

    summary, _, path = transitions_run
    cfg = load_config(path, TRANSITIONS)
    assert summary["he"] is True and summary["failures"] == {}
    exchange = run_exchange(cfg, summary["run_id"])
    first, last = load_global(exchange, 1), load_global(exchange, summary["rounds"])
    plain = load_global(run_exchange(load_config(he_run[2]), he_run[0]["run_id"]), 1)
    assert set(last) == set(plain) | {"transitions.prev.weight", "transitions.next.weight"}
    assert not torch.equal(first["transitions.prev.weight"], last["transitions.prev.weight"])
    assert summary["bytes_per_round_mean"] > he_run[0]["bytes_per_round_mean"]  # the tables are sent, encrypted

    rec = SiloRecommender(cfg, summary["silos"][0])
    assert isinstance(rec.model, RecencyScorer) and rec.model.transition_weight == 0.5
    assert torch.equal(rec.model._tables.prev.weight.detach().cpu(), last["transitions.prev.weight"])
    assert len(rec.recommend(next(iter(rec.model_users)), k=5).items) == 5


def test_round_reports_run_in_order_beside_the_rounds_in_the_flow_runs_context_and_their_errors_surface():
    # Prepare: a report that records where it ran and what context it saw, and fails on one record
    import contextvars
    import threading

    from fedrec.flows.federated import RoundReporter

    var = contextvars.ContextVar("flow_run", default=None)
    var.set("this flow run")
    seen = []

    def on_round(record):
        seen.append((record, threading.current_thread() is threading.main_thread(), var.get()))
        if record == "bad":
            raise RuntimeError("tracking store down")

    # Execute / Assert: in order, off the rounds' thread, in the flow run's context
    reporter = RoundReporter(on_round)
    reporter.report("round 1")
    reporter.report("round 2")
    reporter.close()
    assert seen == [("round 1", False, "this flow run"), ("round 2", False, "this flow run")]
    # a failed report is raised at the next report (nothing lost silently), and at close
    reporter = RoundReporter(on_round)
    reporter.report("bad")
    with pytest.raises(RuntimeError, match="tracking store down"):
        reporter.report("round 3")
    reporter.close()
    reporter = RoundReporter(on_round)
    reporter.report("bad")
    with pytest.raises(RuntimeError, match="tracking store down"):
        reporter.close()
