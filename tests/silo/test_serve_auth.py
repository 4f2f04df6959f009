"""`fedrec serve` safe to expose (fedrec.silo.serve_auth): per-client API keys hashed at rest, revocable, required
whenever keys exist (and for any bind beyond loopback), and a rate limit per key."""

from __future__ import annotations

import json
import stat

import pytest
from typer.testing import CliRunner

from fedrec.cli.app import app
from fedrec.core.errors import ConfigError
from fedrec.silo import data as pipeline
from fedrec.silo.serve_auth import ServeKeyError, add_key, check_exposure, keys_path, list_keys, revoke_key

from support.serving import serving

SILO = "1"


def _a_user(cfg) -> int:
    return int(pipeline.silo_interactions(cfg, SILO)["user_id"].iloc[0])


def test_a_key_is_shown_once_and_only_its_hash_is_kept_in_a_private_file(tiny_cfg):
    token = add_key(tiny_cfg, SILO, "shop-frontend")

    path = keys_path(tiny_cfg, SILO)
    assert token.startswith("fsk_") and len(token) > 40
    assert token not in path.read_text() and "shop-frontend" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert list_keys(tiny_cfg, SILO)["shop-frontend"]["revoked"] is False
    with pytest.raises(ServeKeyError, match="already has a key"):
        add_key(tiny_cfg, SILO, "shop-frontend")
    with pytest.raises(ServeKeyError, match="client name"):
        add_key(tiny_cfg, SILO, "../evil")
    revoke_key(tiny_cfg, SILO, "shop-frontend")
    assert list_keys(tiny_cfg, SILO)["shop-frontend"]["revoked"] is True
    with pytest.raises(ServeKeyError, match="no key for client"):
        revoke_key(tiny_cfg, SILO, "nobody")


def test_serving_beyond_loopback_needs_a_key(tiny_cfg, params_file):
    pipeline.ensure_partitioned(tiny_cfg)
    with pytest.raises(ConfigError, match="without authentication"):
        check_exposure(tiny_cfg, SILO, "0.0.0.0")
    check_exposure(tiny_cfg, SILO, "127.0.0.1")  # loopback: fine without keys

    refused = CliRunner().invoke(app, ["serve", "--silo", SILO, "--host", "0.0.0.0", "-p", str(params_file)])
    assert refused.exit_code == 2 and "without authentication" in refused.output

    add_key(tiny_cfg, SILO, "frontend")
    check_exposure(tiny_cfg, SILO, "0.0.0.0")


def test_requests_need_a_valid_unrevoked_key_and_each_key_is_rate_limited(tiny_cfg):
    from fedrec.silo.http import make_app

    pipeline.ensure_partitioned(tiny_cfg)
    user = _a_user(tiny_cfg)
    good, other = add_key(tiny_cfg, SILO, "frontend"), add_key(tiny_cfg, SILO, "batch-job")
    with serving(make_app(tiny_cfg, SILO, rate_limit=0.5, burst=2)) as client:
        bare = client.get(f"/recommend/{user}")
        wrong = client.get(f"/recommend/{user}", headers={"Authorization": "Bearer fsk_not-a-key"})
        ok = [client.get(f"/recommend/{user}", headers={"Authorization": f"Bearer {good}"}) for _ in range(3)]
        health = client.get("/health")
        revoke_key(tiny_cfg, SILO, "batch-job")
        revoked = client.get(f"/recommend/{user}", headers={"Authorization": f"Bearer {other}"})

    assert bare.status_code == 401 and bare.json()["error"] == "Unauthorized"
    assert bare.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401 and good not in json.dumps(wrong.json())
    assert [r.status_code for r in ok] == [503, 503, 429]  # past auth (no run yet: 503); the third is over the limit
    assert ok[2].json()["error"] == "TooManyRequests" and int(ok[2].headers["retry-after"]) >= 1
    assert health.status_code == 200
    assert revoked.status_code == 401
