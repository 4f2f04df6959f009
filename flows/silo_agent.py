"""`silo_agent`: one silo's part of one federation run, as a Prefect flow run of that silo.

    validate (GE) ─► join ─► keys + model ─► per round: fit (mask keys + shares ─► train ─► mask ─► encrypt ─►
                                              sign ─► publish) ─► settle ([reveal], [decrypt]) ─► [evaluate] ─► save

Runs where the silo's data is: in a host process on one machine, or from the silo's own served
deployment (`fedrec silo serve`). Its state stays in memory for the whole run; only what the wire
allows leaves it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from fedrec.core.config import load_config
from fedrec.core.errors import ConfigError
from fedrec.silo.agent import SiloAgent
from fedrec.tasks.silo import (
    close_agent,
    join_federation,
    open_agent,
    play_round,
    setup_silo,
    take_part,
    validate_data,
)

#: set by `fedrec silo serve` in its own environment (inherited by the runs it executes): the silo id, params file
#: and overrides its operator chose; a run of the served deployment may not change them
SERVING_ENV = "FEDREC_SILO_SERVING"


def pin_serving(silo_id: str, params_path: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Pin what this served silo runs with (see :func:`check_pinned`); returns the deployment's parameters."""
    pinned = {"silo_id": silo_id, "params_path": params_path, "overrides": dict(overrides) or None}
    os.environ[SERVING_ENV] = json.dumps(pinned)
    return pinned


def check_pinned(silo_id: str, params_path: str, overrides: dict[str, Any] | None) -> None:
    """In a served silo, a run's parameters must be the operator's: a coordinator that starts the deployment with
    another silo id, params file or overrides (say, masking off) is refused before anything is read."""
    raw = os.environ.get(SERVING_ENV)
    if raw is None:
        return
    pinned = json.loads(raw)
    asked = {"silo_id": silo_id, "params_path": params_path, "overrides": dict(overrides or {}) or None}
    changed = sorted(k for k in pinned if pinned[k] != asked[k])
    if changed:
        raise ConfigError(f"this silo serves silo {pinned['silo_id']!r} with its operator's params; the run asked "
                          f"for other {', '.join(changed)}: refused")


def _run_name() -> str:
    """A run the coordinator created (linked to its federation's flow run, named ``<federation>-silo-<id>``) keeps
    its name; a direct call is named ``silo-<id>-<run id>``."""
    name = flow_run.get_name() or ""
    params = flow_run.get_parameters() or {}
    if name.startswith("federation-") and name.endswith(f"-silo-{params.get('silo_id')}"):
        return name
    return f"silo-{params.get('silo_id')}-{params.get('run_id')}"


def _log_round(logger, server_round: int, did: dict | None) -> None:
    """The silo's round in its flow run's log (operations.silo_round_tasks false): its own figures only."""
    if did is None:
        logger.info("round %d: sat out (participant or mask set refused)", server_round)
        return
    logger.info("round %d: loss %.4f, trained %.2f s, encrypted and sent %.2f s, %.2f MB%s", server_round,
                did["loss"], did["seconds_train"], did["seconds_encrypt"], did["bytes_sent"] / 1e6,
                ", decrypted the sum" if did.get("decrypted") else "")


@flow(name="silo_agent", flow_run_name=_run_name)
def silo_agent(run_id: str, silo_id: str = "", params_path: str = "params.yaml",
               overrides: dict[str, Any] | None = None, validation_in_train: bool = False) -> dict[str, Any]:
    """This silo's side of federation run ``run_id``; returns what it did (counts only)."""
    check_pinned(silo_id, params_path, overrides)
    logger = get_run_logger()
    agent = SiloAgent(load_config(params_path, overrides), silo_id, run_id, validation_in_train=validation_in_train)
    ids = open_agent(agent)  # the tasks take these ids; the agent (data, model, keys) stays in this process
    rounds = 0
    try:
        hello = validate_data(*ids)
        if not hello.valid or join_federation(*ids) is None:
            logger.warning("silo %s not admitted to run %s (valid data: %s)", silo_id, run_id, hello.valid)
            return {"silo_id": silo_id, "admitted": False, "rounds": 0}
        setup_silo(*ids)
        while (ins := agent.next_instructions(rounds)) is not None:
            if agent.cfg.operations.silo_round_tasks:
                take_part(*ids, ins)  # fit, settle and (when asked) evaluate: one task run per round
            else:
                _log_round(logger, ins.round, play_round(agent, ins))
            rounds = ins.round
    except BaseException as exc:
        agent.leave(rounds, exc)  # the coordinator stops waiting for this silo
        raise
    finally:
        close_agent(*ids)
    agent.save()
    return {"silo_id": silo_id, "admitted": True, "rounds": rounds, "key_holder": agent.is_key_holder}
