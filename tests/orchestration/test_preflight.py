"""A party's set-up is checked when it starts (`fedrec silo serve`, `fedrec coordinate`), not when the first run comes:
each missing piece is a named SetupError saying where and which command provides it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedrec.cli.app import app
from fedrec.coordinator.preflight import coordinator_ready
from fedrec.core.config import from_dict
from fedrec.protocol.preflight import SetupError
from fedrec.silo import data as pipeline
from fedrec.silo.preflight import silo_ready


def test_a_silo_without_its_data_or_the_catalogue_is_refused_by_name_then_passes(tiny_cfg):
    with pytest.raises(SetupError, match="no interactions at .*silos/0/interactions.parquet"):
        silo_ready(tiny_cfg, "0")
    pipeline.ensure_partitioned(tiny_cfg)
    lines = silo_ready(tiny_cfg, "0")
    assert [line.split()[0] for line in lines] == ["interactions", "catalogue", "roster:", "exchange"]
    (pipeline.Paths.of(tiny_cfg).catalogue / "items.parquet").unlink()
    with pytest.raises(SetupError, match="catalogue .* is missing"):
        silo_ready(tiny_cfg, "0")


def test_the_coordinator_needs_the_catalogue_a_complete_roster_and_a_prefect_api_for_deployments(
        tiny_params, tmp_path, monkeypatch):
    cfg = from_dict(tiny_params)
    with pytest.raises(SetupError, match="catalogue"):
        coordinator_ready(cfg, ["0", "1", "2"])
    pipeline.ensure_partitioned(cfg)
    assert len(coordinator_ready(cfg, ["0", "1", "2"])) == 4

    roster = tmp_path / "roster.json"
    roster.write_text(json.dumps({}))
    pinned = from_dict(tiny_params | {"federation": tiny_params["federation"] | {"roster": str(roster)}})
    with pytest.raises(SetupError, match=r"lacks \['coordinator', '0', '1', '2'\]"):
        coordinator_ready(pinned, ["0", "1", "2"])

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    remote = from_dict(tiny_params | {"federation": tiny_params["federation"] | {"launcher": "deployments"}})
    with pytest.raises(SetupError, match="PREFECT_API_URL"):
        coordinator_ready(remote, ["0", "1", "2"])


def test_silo_serve_fails_fast_with_the_named_error(params_file):
    result = CliRunner().invoke(app, ["silo", "serve", "--silo", "0", "--params", str(params_file)])
    assert result.exit_code != 0
    assert "no interactions at" in result.output and "Traceback" not in result.output
