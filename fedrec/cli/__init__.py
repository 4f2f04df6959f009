"""The ``fedrec`` command: ``app`` (federated runs, data steps, silos), ``items``, ``ops``, ``sources`` command
modules over the shared ``options`` module; :func:`main` is the console script."""

from __future__ import annotations

import sys

#: commands that federate on this machine's own Prefect server unless one is configured: it starts first
EARLY_SERVER_COMMANDS = ("run", "coordinate")


def main() -> None:  # pragma: no cover - console entry (`fedrec`, `python -m fedrec`, bin/fedrec)
    """``fedrec ...``. For ``run`` and ``coordinate`` the run's local Prefect server (where no Prefect API is
    configured) is started before anything else, so that its ≈5 s start-up runs beside the CLI's imports
    (fedrec.orchestration.local_server); a command that then fails stops it on exit. Every command leaves
    without the interpreter's heap teardown (fedrec.core.env.exit_now)."""
    args = sys.argv[1:]
    if args[:1] and args[0] in EARLY_SERVER_COMMANDS and not {"-h", "--help"} & set(args):
        from fedrec.core import env
        from fedrec.orchestration.local_server import spawn_early

        env.apply_defaults()  # PREFECT_HOME under the working directory, as every command has it
        spawn_early()
    from fedrec.cli.app import main as app_main
    from fedrec.core.env import exit_now

    try:
        app_main()
    except SystemExit as exc:  # typer's way out, also on success
        exit_now(exc.code)
    exit_now(0)
