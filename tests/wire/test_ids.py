"""Silo and run ids become path segments (exchange keys, state/, data/, logs): each is checked whole
(fedrec.wire.exchange.check_silo_id / check_run_id) before any path is built from it, by every constructor that
builds one (SiloStore, LocalSiloHosts, DeploymentLauncher, the pipeline's silo folders, the recommender)."""

from __future__ import annotations

import pytest

from fedrec.core.errors import ConfigError
from fedrec.orchestration.launch import DeploymentLauncher, LocalSiloHosts
from fedrec.silo import data as pipeline
from fedrec.silo.recommend import SiloRecommender
from fedrec.silo.store import SiloStore
from fedrec.wire.exchange import check_run_id, check_silo_id, run_exchange

#: path-like or malformed ids; "0\n": a trailing newline passed re.match(r"...$") (issue #17, item 6)
BAD_IDS = ["../x", "../../../x", "a/b", "", ".", ".hidden", "-x", "a..b", "0\n", "run\n", "a\nb", "x y", "é"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_path_like_ids_are_refused_whole(bad):
    with pytest.raises(ConfigError, match="silo id .* is not allowed"):
        check_silo_id(bad)
    with pytest.raises(ConfigError, match="run id .* is not allowed"):
        check_run_id(bad)


def test_plain_ids_pass_unchanged():
    run = "0f8e3c2a-1b2c-4d5e-8f90-123456789abc-refit"  # a Prefect flow run id and the refit's suffix
    assert check_run_id(run) == run and check_run_id("crashy") == "crashy"
    assert [check_silo_id(s) for s in ("0", "other", "clinic_3", "site-a.eu")] == ["0", "other", "clinic_3",
                                                                                  "site-a.eu"]
    with pytest.raises(ConfigError):
        check_silo_id("x" * 65)
    with pytest.raises(ConfigError):
        check_run_id("r" * 129)


@pytest.mark.parametrize("bad", ["../../../x", "r1\n", "."])
def test_every_constructor_that_builds_a_path_checks_the_run_id_first(tiny_cfg, tmp_path, bad):
    # Execute + Assert: each refuses before anything is written
    with pytest.raises(ConfigError, match="run id"):
        SiloStore.of(tiny_cfg, "0", bad)
    with pytest.raises(ConfigError, match="run id"):
        LocalSiloHosts(tiny_cfg, bad, ["0", "1"], params_path="params.yaml", overrides=None, api_url=None)
    with pytest.raises(ConfigError, match="run id"):
        DeploymentLauncher(tiny_cfg, bad, ["0", "1"])
    with pytest.raises(ConfigError, match="run id"):
        run_exchange(tiny_cfg, bad)
    with pytest.raises(ConfigError, match="run id"):
        SiloRecommender(tiny_cfg, "0", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no state/, no logs, no hosts.json anywhere


@pytest.mark.parametrize("bad", ["../x", "0\n"])
def test_every_constructor_that_builds_a_path_checks_the_silo_id_first(tiny_cfg, tmp_path, bad):
    paths = pipeline.Paths.of(tiny_cfg)
    for build in (lambda: SiloStore.of(tiny_cfg, bad, "run-1"),
                  lambda: LocalSiloHosts(tiny_cfg, "run-1", ["0", bad], params_path="p", overrides=None, api_url=None),
                  lambda: DeploymentLauncher(tiny_cfg, "run-1", [bad]),
                  lambda: paths.silo_data(bad), lambda: paths.silo_snapshot(bad), lambda: paths.silo_split(bad),
                  lambda: paths.silo_feedback(bad), lambda: pipeline.silo_base_file(tiny_cfg, bad),
                  lambda: pipeline.feedback_batches(tiny_cfg, bad)):
        with pytest.raises(ConfigError, match="silo id"):
            build()
    assert sorted(p.name for p in tmp_path.iterdir()) == []

