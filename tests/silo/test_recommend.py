"""Recommendations inside a silo (`fedrec recommend`, `fedrec serve`) and the feedback loop (`fedrec feedback` →
the next federated run trains on it → the user's recommendations change), after real federated runs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedrec.cli.app import app
from fedrec.core.config import load_config
from fedrec.core.errors import SiloValidationError
from fedrec.silo import data as pipeline
from fedrec.silo.feedback import FeedbackError, append_feedback, read_feedback
from fedrec.silo.recommend import (
    NoTrainedModelError,
    UnknownSiloError,
    UnknownUserError,
    recommend,
)

from conftest import make_tiny_params
from support.serving import serving

SILO = "1"


@pytest.fixture(scope="module")
def trained(prefect_harness, tmp_path_factory):
    """A tiny federation (3 silos, 2 rounds, CKKS) and its params file."""
    from fedrec.flows.federated import run_demo

    base = tmp_path_factory.mktemp("rec")
    path = base / "params.yaml"
    path.write_text(yaml.safe_dump(make_tiny_params(base)))
    summary = run_demo(params_path=str(path))
    return summary, path


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _a_user(cfg) -> int:
    return int(pipeline.silo_interactions(cfg, SILO)["user_id"].iloc[0])


@pytest.mark.slow
def test_recommend_json_lists_k_unseen_items_with_titles(trained):
    summary, path = trained
    cfg = load_config(path)
    user = _a_user(cfg)
    seen = set(pipeline.silo_interactions(cfg, SILO).query("user_id == @user")["item_id"])

    result = _cli("recommend", "--silo", SILO, "--user", str(user), "-k", "5", "--json", "-p", str(path))

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["silo"] == SILO and body["user"] == user and body["source"] == "model"
    assert body["run_id"] == summary["run_id"]
    assert len(body["items"]) == 5 and set(body["items"][0]) == {"item_id", "title", "score", "because"}
    assert not seen & {i["item_id"] for i in body["items"]}
    # each explanation names only items of this user's own history, strongest first
    named = [b for i in body["items"] for b in i["because"]]
    assert named and {b["item_id"] for b in named} <= seen
    assert all([b["weight"] for b in i["because"]] == sorted((b["weight"] for b in i["because"]), reverse=True)
               for i in body["items"])
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    titles = pipeline.read_catalogue(pipeline.Paths.of(cfg).catalogue).set_index("item_id")["title"]
    assert all(titles[i["item_id"]] == i["title"] for i in body["items"])
    assert _cli("recommend", "--silo", SILO, "--user", str(user), "--k", "3", "-p", str(path)).exit_code == 0


def test_unknown_silo_or_user_is_a_named_error_not_a_traceback(trained):
    _, path = trained
    cfg = load_config(path)

    for args, name in ((("--silo", "9", "--user", "1"), "has no data"),
                       (("--silo", SILO, "--user", "987654"), "is not a user of silo"),
                       (("--silo", "../x", "--user", "1"), "silo id")):
        result = _cli("recommend", *args, "-p", str(path))
        assert result.exit_code == 2 and name in result.output, result.output
        assert "Traceback" not in result.output
    with pytest.raises(UnknownUserError):
        recommend(cfg, SILO, 987654)
    with pytest.raises(UnknownSiloError):
        recommend(cfg, "9", 1)


def test_a_silo_without_a_trained_model_says_so(trained, tmp_path):
    _, path = trained
    cfg = load_config(path, {"federation.state_dir": str(tmp_path / "empty-state")})

    with pytest.raises(NoTrainedModelError, match="fedrec run"):
        recommend(cfg, SILO, _a_user(cfg))


def test_a_new_user_of_the_silo_gets_its_popular_items(trained):
    _, path = trained
    cfg = load_config(path)
    registry = pipeline.Paths.of(cfg).silos / SILO / "users.parquet"
    users = pd.read_parquet(registry)
    new_user = int(users["user_id"].max()) + 1000
    pd.concat([users, pd.DataFrame({"user_id": [new_user]})]).to_parquet(registry, index=False)
    counts = pipeline.silo_interactions(cfg, SILO)["item_id"].value_counts()

    result = _cli("recommend", "--silo", SILO, "--user", str(new_user), "-k", "3", "--json", "-p", str(path))

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["source"] == "popularity" and "new user" in body["note"]
    assert [int(counts[i["item_id"]]) for i in body["items"]] == counts.iloc[:3].tolist()  # ties in any order


def test_serve_answers_over_http_on_loopback(trained):
    from fedrec.silo.http import make_app

    _, path = trained
    cfg = load_config(path)
    user = _a_user(cfg)
    with serving(make_app(cfg, SILO)) as client:
        ok = client.get(f"/recommend/{user}", params={"k": 4})
        unknown = client.get("/recommend/987654")
        bad_k = client.get(f"/recommend/{user}", params={"k": 0})
        health = client.get("/health")

    assert ok.status_code == 200
    assert ok.json() == recommend(cfg, SILO, user, 4).to_dict()
    assert unknown.status_code == 404 and unknown.json()["error"] == "UnknownUserError"
    assert bad_k.status_code == 422
    assert health.json() == {"silo": SILO, "run_id": ok.json()["run_id"]}


def test_serve_answers_every_error_as_error_and_detail_without_echoing_the_input(tiny_cfg):
    # Prepare: a silo with data but no finished run yet (no federation needed for the error paths)
    from fedrec.silo.http import make_app

    pipeline.ensure_partitioned(tiny_cfg)
    user = _a_user(tiny_cfg)

    # Execute
    with serving(make_app(tiny_cfg, SILO)) as client:
        answers = {
            "k=0": client.get(f"/recommend/{user}", params={"k": 0}),
            "k=abc": client.get(f"/recommend/{user}", params={"k": "abc"}),
            "k=1001": client.get(f"/recommend/{user}", params={"k": 1001}),
            "user=abc": client.get("/recommend/abc"),
            "unknown path": client.get("/recommend-abc/1"),
            "POST": client.post(f"/recommend/{user}"),
            "no model yet": client.get(f"/recommend/{user}", params={"k": 5}),
        }
        health = client.get("/health")

    # Assert: the documented shape {"error", "detail"} only, named errors, the parameter and rule named, the value
    # sent never echoed
    expected = {"k=0": (422, "RequestValidationError", "k (query): Input should be greater than or equal to 1"),
                "k=abc": (422, "RequestValidationError", "k (query): Input should be a valid integer"),
                "k=1001": (422, "RequestValidationError", "k (query): Input should be less than or equal to 1000"),
                "user=abc": (422, "RequestValidationError", "user (path): Input should be a valid integer"),
                "unknown path": (404, "NotFound", "no such path; served: GET /recommend/{user}?k=10, POST /recommend, POST /feedback, GET /health"),
                "POST": (405, "MethodNotAllowed", "method not allowed; served: GET /recommend/{user}?k=10"),
                "no model yet": (503, "NoTrainedModelError", f"silo '{SILO}' has no trained state")}
    for case, (status, name, detail) in expected.items():
        answer = answers[case]
        assert answer.status_code == status, (case, answer.text)
        body = answer.json()
        assert set(body) == {"error", "detail"} and body["error"] == name, (case, body)
        assert body["detail"].startswith(detail), (case, body)
        assert "abc" not in answer.text and "1001" not in answer.text, (case, body)
    assert health.status_code == 200 and health.json() == {"silo": SILO, "run_id": None}


def test_invalid_feedback_is_refused_and_nothing_is_appended(trained, tmp_path):
    _, path = trained
    cfg = load_config(path)
    user = _a_user(cfg)
    before = pipeline.silo_interactions(cfg, SILO)
    bad_rating = tmp_path / "bad.csv"
    bad_rating.write_text(f"user_id,item_id,rating\n{user},1,9\n")
    unknown_item = tmp_path / "unknown.csv"
    unknown_item.write_text(f"user_id,item_id,rating\n{user},99999,4\n")
    not_numbers = tmp_path / "text.csv"
    not_numbers.write_text("user_id,item_id,rating\nalice,1,4\n")
    missing = tmp_path / "cols.csv"
    missing.write_text("user,item\n1,2\n")

    for file in (bad_rating, unknown_item):
        with pytest.raises(SiloValidationError, match="refused, nothing appended"):
            append_feedback(cfg, SILO, read_feedback(file))
    for file in (not_numbers, missing, tmp_path / "absent.csv"):
        with pytest.raises(FeedbackError):
            read_feedback(file)
    result = _cli("feedback", str(bad_rating), "--silo", SILO, "-p", str(path))

    assert result.exit_code == 2 and "rating" in result.output
    assert pipeline.feedback_batches(cfg, SILO) == []
    pd.testing.assert_frame_equal(pipeline.silo_interactions(cfg, SILO), before)


@pytest.mark.slow
def test_feedback_feeds_the_next_run_and_changes_the_users_recommendations(trained, tmp_path):
    from fedrec.flows.federated import run_demo

    first, path = trained
    cfg = load_config(path)
    user = _a_user(cfg)
    before = recommend(cfg, SILO, user, 5)
    # the user now interacts with what was recommended (newer than anything in the data)
    newest = int(pipeline.silo_interactions(cfg, SILO)["timestamp"].max())
    file = tmp_path / "feedback.csv"
    pd.DataFrame({"user_id": user, "item_id": [r.item_id for r in before.items[:3]], "rating": 5,
                  "timestamp": [newest + 10, newest + 20, newest + 30]}).to_csv(file, index=False)

    appended = _cli("feedback", str(file), "--silo", SILO, "--json", "-p", str(path))
    assert appended.exit_code == 0, appended.output
    version = json.loads(appended.stdout)["data_version"]
    assert len(pipeline.feedback_batches(cfg, SILO)) == 1
    assert version == pipeline.data_version(pipeline.silo_interactions(cfg, SILO))
    # until the next run, the user's new interactions are already excluded from the answer
    assert not {r.item_id for r in before.items[:3]} & {r.item_id for r in recommend(cfg, SILO, user, 5).items}

    second = run_demo(params_path=str(path))
    after = recommend(cfg, SILO, user, 5)

    assert after.run_id == second["run_id"] != first["run_id"]
    assert second["data_versions"][SILO] == version != first["data_versions"][SILO]
    assert second["data_versions"]["0"] == first["data_versions"]["0"]
    assert [r.item_id for r in after.items] != [r.item_id for r in before.items]
    # the run's MLflow tags name the data version each silo trained on
    mlflow.set_tracking_uri(cfg.tracking.uri)
    tags = mlflow.get_run(second["mlflow_run_id"]).data.tags
    assert tags[f"data_version.{SILO}"] == version
    # the retrained split holds the feedback: its newest interaction is the test item
    holdout = pd.read_parquet(Path(cfg.data.work_dir) / "split" / SILO / "holdout.parquet")
    assert int(holdout.query("user_id == @user")["test_item"].iloc[0]) == before.items[2].item_id


@pytest.fixture(scope="module")
def trained_for_feedback(prefect_harness, tmp_path_factory):
    """Its own tiny federation: the feedback test appends to the silo's data."""
    from fedrec.flows.federated import run_demo

    base = tmp_path_factory.mktemp("foldin")
    path = base / "params.yaml"
    path.write_text(yaml.safe_dump(make_tiny_params(base)))
    run_demo(params_path=str(path))
    return path


@pytest.mark.slow
def test_posted_feedback_is_folded_into_the_users_vector_and_the_next_answer_reflects_it_within_a_second(
        trained_for_feedback):
    from fedrec.silo.http import make_app

    cfg = load_config(trained_for_feedback)
    user = _a_user(cfg)
    with serving(make_app(cfg, SILO)) as client:
        before = client.get(f"/recommend/{user}", params={"k": 10}).json()["items"]
        liked = [i["item_id"] for i in before[5:8]]  # the user now interacts with three of their lower picks
        posted = client.post("/feedback", json={"interactions": [
            {"user_id": user, "item_id": item, "rating": 5.0} for item in liked]})
        start = time.perf_counter()
        after = client.get(f"/recommend/{user}", params={"k": 10}).json()["items"]
        seconds = time.perf_counter() - start
        refused = client.post("/feedback", json={"interactions": [{"user_id": user, "item_id": 10**9, "rating": 5}]})

    assert posted.status_code == 200, posted.text
    assert posted.json()["rows"] == 3 and posted.json()["folded_in"] == [user]
    assert seconds < 1.0
    assert not set(liked) & {i["item_id"] for i in after}  # now seen
    still = {i["item_id"]: i["score"] for i in after} & {i["item_id"]: i["score"] for i in before}.keys()
    assert still and any(abs({i["item_id"]: i["score"] for i in after}[j] - {i["item_id"]: i["score"] for i in
                                                                              before}[j]) > 1e-6 for j in still)
    assert refused.status_code == 422 and refused.json()["error"] == "InvalidFeedbackError"
    assert len(pipeline.feedback_batches(cfg, SILO)) == 1  # the refused rows appended nothing


def test_top_k_is_the_stable_full_sort_cut_at_k():
    from fedrec.silo.recommend import top_k

    rng = np.random.default_rng(0)
    for n, k in ((50, 10), (50, 50), (50, 80), (1000, 1)):
        scores = rng.integers(0, 8, n).astype(float)  # many ties
        scores[rng.integers(0, n, 5)] = -np.inf
        assert top_k(scores, k).tolist() == np.argsort(-scores, kind="stable")[:k].tolist()


def test_serve_answers_many_users_in_one_request_and_swaps_models_without_losing_a_request(trained):
    from fedrec.silo.http import make_app

    _, path = trained
    cfg = load_config(path)
    user = _a_user(cfg)
    app = make_app(cfg, SILO)
    with serving(app) as client:
        many = client.post("/recommend", json={"users": [user, 987654], "k": 3})
        live = app.state.live
        first = live.current
        answers: list[int] = []
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                answers.append(client.get(f"/recommend/{user}", params={"k": 5}).status_code)

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        swapped = []
        for _ in range(3):  # the model is swapped under load (as when a newer run lands)
            live.current._loaded = None  # stale: the next reload builds a fresh recommender
            swapped.append(live.reload())
        stop.set()
        for t in threads:
            t.join()

    assert many.status_code == 200
    body = many.json()
    assert [r["user"] for r in body["results"]] == [user] and len(body["results"][0]["items"]) == 3
    assert body["errors"]["987654"]["error"] == "UnknownUserError"
    assert len({id(r) for r in swapped + [first]}) == 4
    assert answers and set(answers) == {200}



@pytest.mark.slow
def test_no_input_the_openapi_schema_allows_or_breaks_gets_a_5xx_or_a_traceback(trained, tmp_path):
    """schemathesis generates requests from `fedrec serve`'s own OpenAPI schema, valid ones (positive) and ones that
    break it (negative), for every route: each answer is < 500 and each error is ``{"error", "detail"}`` without a
    traceback. It runs over a copy of the trained silo (fuzzed feedback must not touch ``trained``)."""
    import shutil

    import schemathesis
    from hypothesis import HealthCheck, given, settings

    from fedrec.silo.http import make_app

    _, path = trained
    copy = tmp_path / "copy"
    shutil.copytree(path.parent, copy, ignore=shutil.ignore_patterns("mlflow.db*", "params.yaml"))
    params = copy / "params.yaml"
    params.write_text(yaml.safe_dump(make_tiny_params(copy)))
    schema = schemathesis.openapi.from_asgi("/openapi.json", make_app(load_config(params), SILO))
    seen: dict[str, list[int]] = {}

    user = _a_user(load_config(params))
    for operation in [result.ok() for result in schema.get_all_operations()]:
        strategies = [operation.as_strategy()]
        if operation.path != "/health":  # a route without parameters or body has nothing to break
            strategies.append(operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE))
        if operation.path == "/recommend/{user}":  # a user the silo knows, so that k's values reach the model
            strategies.append(operation.as_strategy(path_parameters={"user": user}))
        for strategy in strategies:
            @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def check(case):
                response = case.call()
                seen.setdefault(f"{case.method} {case.path}", []).append(response.status_code)
                assert response.status_code < 500, (case.method, case.formatted_path, response.text)
                if response.status_code >= 400:
                    body = response.json()
                    assert set(body) == {"error", "detail"} and "Traceback" not in body["detail"], body

            check()

    print({route: sorted(set(codes)) for route, codes in seen.items()})
    assert set(seen) == {"GET /health", "GET /recommend/{user}", "POST /recommend", "POST /feedback"}
    assert all(200 in codes for route, codes in seen.items() if route != "POST /feedback")  # valid ones got through
    assert all(422 in codes for route, codes in seen.items() if route != "GET /health")  # broken ones were refused


def test_a_new_snapshot_answers_the_latest_requests_before_it_is_swapped_in_and_cache_0_keeps_nothing(trained):
    from fedrec.silo.http import LiveRecommender

    _, path = trained
    cfg = load_config(path)
    user = _a_user(cfg)
    live = LiveRecommender(cfg, SILO)
    first = live.current
    body = first.recommend_json(user, 5)
    first._loaded = None  # stale: as when a newer run lands
    fresh = live.reload(warm=10)
    uncached = LiveRecommender(cfg, SILO, answer_cache=0).current

    assert fresh is not first and fresh._bodies == {(user, 5): body}  # answered before anyone asked it
    assert json.loads(body) == first.recommend(user, 5).to_dict() == json.loads(uncached.recommend_json(user, 5))
    assert not uncached._bodies and not uncached._answers
