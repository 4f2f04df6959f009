"""The exchange on a real S3 API (moto's standalone server on loopback, in its own process, see support/s3server.py),
through the code path a user gets: ``federation.exchange_url: s3://...`` with the endpoint from the environment.

Why moto: it installs from the registries here, runs as a standalone HTTP server, and its S3 implements conditional
writes (If-None-Match: *) as AWS does since 2024; MinIO is not packaged for pip/apt here."""

from __future__ import annotations

import threading
import uuid

import fsspec
import pytest

from fedrec.core.config import from_dict
from fedrec.orchestration.attacks import run_in_process
from fedrec.wire.exchange import Exchange, ExchangeConflictError, global_key, run_exchange

from conftest import make_tiny_params
from support.s3server import s3_server

BUCKET = "fedrec-exchange"


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        server.make_bucket(BUCKET)
        saved = dict(fsspec.config.conf.get("s3", {}))
        # what FSSPEC_S3_ENDPOINT_URL / AWS_* give a party's process; set here since fsspec read the env at import
        fsspec.config.conf["s3"] = {"endpoint_url": server.endpoint, "key": "testing", "secret": "testing"}
        try:
            yield server
        finally:
            fsspec.config.conf["s3"] = saved


def _url() -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"


def test_racing_writers_on_s3_exactly_one_wins_and_its_bytes_stay(s3):
    url = _url()
    for trial in range(10):
        key, won, lost = f"round-0001/updates/{trial}.bin", [], []
        start = threading.Barrier(8)

        def write(i: int) -> None:
            ex = Exchange(url, "run")
            start.wait()
            try:
                ex.put(key, b"writer-%d" % i)
                won.append(i)
            except ExchangeConflictError:
                lost.append(i)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 7, (won, lost)
        assert Exchange(url, "run").get(key) == b"writer-%d" % won[0]


def test_a_payload_is_one_conditional_put_and_a_wait_lists_once_per_look(s3):
    ex = Exchange(_url(), "run")
    s3.requests(reset=True)
    ex.put("round-0001/updates/a.bin", b"x" * 1000)
    assert s3.requests(reset=True) == {"PUT": 1}  # no temporary key, no copy, no delete
    assert ex.get("round-0001/updates/a.bin") == b"x" * 1000
    assert s3.requests(reset=True) == {"GET": 1}
    keys = {f"{s}": f"round-0001/updates/{s}.bin" for s in "abcdefgh"}
    assert ex.wait_all(keys, timeout=0.5, poll=0.05) == {"a"}
    # 8 awaited keys, one LIST per look; backing off from 0.05 s the 0.5 s wait takes at most 5 looks
    looks = s3.requests(reset=True)
    assert set(looks) == {"GET"} and looks["GET"] <= 5, looks


def test_waiting_on_object_storage_backs_off_and_a_local_exchange_does_not(tmp_path, s3):
    remote, local = Exchange(_url(), "run", max_poll_s=0.8), Exchange(str(tmp_path / "ex"), "run", max_poll_s=0.8)
    pauses = iter(remote.pauses(0.1))
    assert [round(next(pauses), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
    pauses = iter(local.pauses(0.1))
    assert [next(pauses) for _ in range(4)] == [0.1] * 4


@pytest.mark.slow
def test_a_whole_encrypted_federation_runs_over_s3_and_states_its_requests_per_round(s3, tmp_path):
    raw = make_tiny_params(tmp_path)
    raw["federation"] |= {"exchange_url": _url(), "round_timeout_s": 60, "join_timeout_s": 60,
                          "poll_max_interval_s": 0.5}
    cfg = from_dict(raw)
    per_round: list[dict[str, int]] = []
    s3.requests(reset=True)
    result = run_in_process(cfg, rounds=3, on_round=lambda record: per_round.append(s3.requests(reset=True)))

    assert result["errors"] == {} and result["selected"]["hr@10"] > 0
    ex = run_exchange(cfg, result["run_id"])
    assert ex.exists(global_key(3)) and ex.url.startswith("s3://")
    assert not [k for k in ex.keys() if k.endswith(".tmp")]
    total = [sum(r.values()) for r in per_round]
    print(f"S3 requests per round (3 silos, CKKS + masks, evaluation): {per_round} -> {total}")
    assert all(r.get("DELETE", 0) == 0 for r in per_round)  # no copy + delete per payload
    # 3 silos + a coordinator waiting on one another: bounded by the backoff, not by the 0.02 s poll
    assert max(total) < 1500, per_round



def test_a_partys_preflight_names_a_missing_bucket_and_passes_on_an_existing_one(s3, tiny_params):
    from fedrec.protocol.preflight import SetupError, check_exchange

    missing = from_dict(tiny_params | {"federation": tiny_params["federation"] | {"exchange_url": "s3://no-such-bucket/x"}})
    with pytest.raises(SetupError, match="no-such-bucket does not exist"):
        check_exchange(missing)
    assert check_exchange(from_dict(tiny_params | {"federation": tiny_params["federation"] | {"exchange_url": _url()}}))
