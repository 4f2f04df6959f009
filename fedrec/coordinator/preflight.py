"""The coordinator's checks before a run (`fedrec coordinate`): the catalogue, the roster, the exchange, and, when
the silos run as deployments, a Prefect API that other machines can reach (:mod:`fedrec.protocol.preflight`)."""

from __future__ import annotations

import os

from fedrec.core.config import Config
from fedrec.protocol.preflight import SetupError, check_catalogue, check_exchange, check_roster


def check_prefect_api(cfg: Config) -> str:
    if cfg.federation.launcher != "deployments":
        return "silo agents: local hosts"
    url = os.environ.get("PREFECT_API_URL", "")
    if not url:
        raise SetupError("federation.launcher is deployments: export PREFECT_API_URL=http://<prefect-host>:4200/api "
                         "(the server the silos serve their deployments to; the UI on another port also needs "
                         "PREFECT_UI_API_URL)")
    return f"Prefect API {url}"


def coordinator_ready(cfg: Config, silos: list[str]) -> list[str]:
    return [check_catalogue(cfg), check_roster(cfg, ["coordinator", *silos]), check_exchange(cfg),
            check_prefect_api(cfg)]
