"""A silo host process: runs the ``silo_agent`` flow of one or more silos for one federation run.

Started by the coordinator's local launcher (one machine): ``python -m fedrec.cli.silo_host --silos 0,3 ...``.
Each silo's agent is its own Prefect flow run in its own thread; they take turns computing
(:data:`fedrec.silo.agent.COMPUTE`) on one torch thread, so two hosts use two cores without the GIL. Before it loads
torch and Prefect, the host reads and validates its silos' data in a child process (Great Expectations never shares
its memory with the training stack); the agents' validate tasks take those verdicts.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import traceback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedrec.cli.silo_host")
    parser.add_argument("--silos", required=True, help="comma-separated silo ids hosted here")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--overrides", default="{}", help="JSON object of dotted config overrides")
    parser.add_argument("--validation-in-train", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for this host")
    parser.add_argument("--flow-runs", default="{}", help="JSON: silo -> the flow run id the coordinator created "
                                                         "for it (linked to the federation's flow run)")
    args = parser.parse_args(argv)
    from fedrec.core.errors import ConfigError
    from fedrec.wire.exchange import check_run_id, check_silo_id

    try:  # before any of them becomes a path
        check_run_id(args.run_id)
        silos = [check_silo_id(s) for s in args.silos.split(",")]
    except ConfigError as exc:
        parser.error(str(exc))

    from fedrec.core import env

    env.apply_defaults()
    from fedrec.silo.prevalidation import prevalidate

    try:  # Great Expectations in a child process that exits before torch and Prefect load here (peak RSS)
        prevalidate(args.params, json.loads(args.overrides) or None, silos)
    except Exception:  # noqa: BLE001 - each agent then validates its silo itself and names what failed
        traceback.print_exc()
    import torch

    torch.set_num_threads(args.threads)
    from fedrec.flows.silo_agent import silo_agent

    failures: list[str] = []

    linked = json.loads(args.flow_runs)

    def run(silo_id: str) -> None:
        params = {"silo_id": silo_id, "run_id": args.run_id, "params_path": args.params,
                  "overrides": json.loads(args.overrides) or None, "validation_in_train": args.validation_in_train}
        try:
            # no tags context: Prefect checks tag concurrency limits on the server before every tagged task run
            if silo_id in linked:  # the flow run the coordinator created, a subflow run of the federation's
                from uuid import UUID

                from prefect.client.orchestration import get_client
                from prefect.flow_engine import run_flow

                with get_client(sync_client=True) as client:
                    flow_run = client.read_flow_run(UUID(linked[silo_id]))
                run_flow(silo_agent, flow_run=flow_run, parameters=params)
            else:
                silo_agent(**params)
        except BaseException:  # noqa: BLE001 - reported below; the other silos of this host go on
            failures.append(silo_id)
            traceback.print_exc()

    threads = [threading.Thread(target=run, args=(s,), name=f"silo-{s}") for s in silos]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print(f"silo agent(s) failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


def import_stack() -> None:
    """What every host imports (the warm host once, for all of them): pandas, torch, ``torch._dynamo`` (torch.optim's
    first step imports it, ≈1 s of CPU), Prefect and the silo's flow."""
    import pandas  # noqa: F401
    import torch
    import torch._dynamo  # noqa: F401

    import fedrec.flows.silo_agent  # noqa: F401
    import fedrec.silo.prevalidation  # noqa: F401

    torch.set_num_threads(1)


if __name__ == "__main__":
    from fedrec.core.env import exit_now

    if sys.argv[1:] == ["--warm"]:  # the warm host (fedrec.orchestration.warm_host): forks the run's other hosts
        from fedrec.orchestration.warm_host import serve

        exit_now(serve(main, import_stack))
    exit_now(main())  # the atexit flushes (Prefect's logs and events), not the heap teardown
