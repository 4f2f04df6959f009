"""`fedrec ...`: the command-line entry point (Typer + Rich progress on stderr)."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from fedrec.cli import items as cli_items
from fedrec.cli import ops as cli_ops
from fedrec.cli import sources as cli_sources
from fedrec.cli.options import (
    ParamsOpt,
    SetOpt,
    check_data,
    command_config,
    emit,
    err,
    fail,
    load_params,
    merged_overrides,
    out,
    progress_bar,
    user_errors,
)
from fedrec.core import audit, env
from fedrec.core.config import Config
from fedrec.core.objectives import objective
from fedrec.orchestration.local_server import spawn_early
from fedrec.orchestration.warm_host import warm_start

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Federated recommendation with encrypted aggregation.",
                  epilog="Every command that reads params.yaml takes -S key=value overrides; `fedrec config` shows the "
                         "effective values and their sources, `fedrec config --schema` (docs/config.md) every key.")


@app.callback()
def _on_command() -> None:
    """Runs before every command (never at import): fedrec's offline, project-local defaults (PREFECT_HOME under the
    working directory, analytics off; the user's own settings win), which Prefect reads when it is first imported;
    the optional open-audit hook (FEDREC_AUDIT_OPENS); and the clean-up after a `fedrec ui` that was killed outright
    (its profile setting and servers; nothing without one)."""
    env.apply_defaults()
    audit.install_from_env()
    from fedrec.orchestration.ops.ui import reap_stale

    reap_stale()
@app.command()
def prepare(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Load MovieLens-100K (or synthesize) into data/prepared and data/catalogue."""
    from fedrec.silo import data as pipeline

    with user_errors():
        ds = pipeline.prepare(command_config(params, set_, data=True))
    err.print(f"prepared {len(ds.interactions)} interactions, {len(ds.users)} users, {len(ds.items)} items")


@app.command()
def partition(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Partition users into silos (data/silos/<silo>/)."""
    from fedrec.silo import data as pipeline

    with user_errors():
        manifest = pipeline.partition(command_config(params, set_, data=True))
    err.print(f"{len(manifest)} silos: " + ", ".join(f"{s}({m['users']} users)" for s, m in manifest.items()))


@app.command()
def validate(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
             strict: bool = typer.Option(False, help="exit non-zero if any silo fails")) -> None:
    """Run the Great Expectations suite on every silo; reports in data/validation/."""
    from fedrec.silo import data as pipeline

    with user_errors():
        reports = pipeline.validate_all(command_config(params, set_, data=True))
    for r in reports:
        mark = "[green]pass[/]" if r.success else "[red]FAIL[/] " + "; ".join(r.summary())
        err.print(f"silo {r.silo_id}: {r.n_rows} rows, {r.n_users} users: {mark}")
    if strict and not all(r.success for r in reports):
        raise typer.Exit(code=1)


@app.command()
def split(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Leave-one-out split + fixed negatives for every silo that passed validation."""
    from fedrec.silo import data as pipeline

    with user_errors():
        silos = pipeline.split_all(command_config(params, set_, data=True))
    err.print(f"split {len(silos)} silos: {', '.join(silos)}")


@app.command()
def centralized(
    model: str = typer.Option("neumf", "--model", "-m", help="pop | gmf | neumf | hybrid"),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="comma-separated, e.g. 0,1"),
    as_json: bool = typer.Option(False, "--json", help="emit one JSON object on stdout"),
    output: Optional[Path] = typer.Option(None, "--out", help="also write the JSON to this file"),
    params: Path = ParamsOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Train the centralized baseline on the pooled silos; test metrics of the validation-selected epoch."""
    from fedrec.orchestration.centralized import metric_keys, run_baseline

    if model not in ("pop", "gmf", "neumf", "hybrid"):
        fail(ValueError(f"--model must be pop, gmf, neumf or hybrid, not {model!r}"))
    with user_errors():
        cfg = command_config(params, set_, {"training.epochs": epochs,
                                     "training.seeds": f"[{seeds}]" if seeds else None}, data=True)
        with progress_bar() as progress:
            task = progress.add_task(f"{model}", total=cfg.training.epochs * len(cfg.training.seeds), status="")

            shown = objective(cfg.task).headline(cfg.evaluation.k)  # hr@k | rmse (task: rating)

            def on_epoch(seed, rec):
                progress.update(task, advance=1, status=f"seed {seed} epoch {rec.epoch} loss {rec.loss:.4f} "
                                f"val {shown} {rec.val[shown]:.4f}")

            report = run_baseline(cfg, model, on_epoch=on_epoch)
            progress.update(task, completed=progress.tasks[0].total)
    if emit(report.to_json(), output, as_json):
        return
    keys = metric_keys(cfg.evaluation.k, cfg.task)
    table = Table(title=f"centralized {model} (selected on {report.selection_metric}, test item)")
    table.add_column("seed")
    table.add_column("best epoch")
    for key in keys:
        table.add_column(key)
    for s in report.seeds:
        table.add_row(str(s.seed), str(s.best_epoch), *(f"{s.test[k]:.4f}" for k in keys))
    mean = report.mean()
    table.add_row("mean", "", *(f"{mean[k]:.4f}" for k in keys))
    for name, values in (report.baselines or {}).items():  # task: rating
        if isinstance(values, dict):
            table.add_row(f"baseline {name}", "", *(f"{values[k]:.4f}" for k in keys))
    out.print(table)


def _run_options(rounds, local_epochs, model, no_he) -> dict:
    return {"federation.rounds": rounds, "federation.local_epochs": local_epochs, "model.name": model,
            "federation.he": False if no_he else None}


def _print_summary(summary: dict, cfg: Config, output: Path | None, as_json: bool) -> None:
    if emit(summary, output, as_json):
        return
    from fedrec.coordinator.summary import closing_lines

    ops = cfg.operations
    for line in closing_lines(summary, cfg.evaluation.k, prefect_port=ops.prefect_port, mlflow_port=ops.mlflow_port):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


RoundsOpt = typer.Option(None, "--rounds", "-r")
EpochsOpt = typer.Option(None, "--local-epochs", "-E")
ModelOpt = typer.Option(None, "--model", "-m", help="gmf | neumf | hybrid")
NoHeOpt = typer.Option(False, "--no-he", help="aggregate the same payloads in plaintext (to measure HE cost)")
JsonOpt = typer.Option(False, "--json", help="emit one JSON object on stdout")
OutOpt = typer.Option(None, "--out", help="also write the JSON summary to this file")
RunIdOpt = typer.Option(None, "--run-id", help="name the federation run; a run with a checkpoint (it crashed) "
                                               "resumes after its last completed round")


@app.command()
def run(rounds: Optional[int] = RoundsOpt, local_epochs: Optional[int] = EpochsOpt, model: Optional[str] = ModelOpt,
        no_he: bool = NoHeOpt, as_json: bool = JsonOpt, output: Optional[Path] = OutOpt,
        params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt, run_id: Optional[str] = RunIdOpt) -> None:
    """One machine: provision the demo silos, then federate them (silo agents in host processes, CKKS by default)."""
    from fedrec.wire.exchange import check_run_id

    with user_errors():
        if run_id is not None:  # before anything turns it into a path (logs, checkpoint, exchange)
            check_run_id(run_id)
        overrides = merged_overrides(set_, _run_options(rounds, local_epochs, model, no_he))
        cfg = load_params(params, overrides)  # fail fast on a bad config, before Prefect starts
        spawn_early()  # the run's Prefect server starts on the other core while this process imports the flows
        # and the first silo host imports the training stack (the others are forked from it)
        with warm_start(cfg):
            check_data(cfg)  # and on a data directory that holds no MovieLens
            from fedrec.flows.federated import run_demo

            summary = run_demo(params_path=str(params), overrides=overrides, show_progress=True, run_id=run_id)
    _print_summary(summary, cfg, output, as_json)


@app.command()
def coordinate(silos: str = typer.Option(..., "--silos", help="comma-separated roster, e.g. 0,1,2"),
               rounds: Optional[int] = RoundsOpt, local_epochs: Optional[int] = EpochsOpt,
               model: Optional[str] = ModelOpt, no_he: bool = NoHeOpt, as_json: bool = JsonOpt,
               output: Optional[Path] = OutOpt, params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
               run_id: Optional[str] = RunIdOpt) -> None:
    """The coordinator only: start the silos' agents (their deployments, or local hosts) and run the rounds.

    Opens no silo's data or keys; needs the public item catalogue (data/catalogue) and the exchange."""
    from fedrec.wire.exchange import check_run_id, check_silo_id

    with user_errors():
        roster = [check_silo_id(s.strip()) for s in silos.split(",") if s.strip()]
        if run_id is not None:
            check_run_id(run_id)
        overrides = merged_overrides(set_, _run_options(rounds, local_epochs, model, no_he))
        cfg = load_params(params, overrides)
        spawn_early()
        with warm_start(cfg):
            from fedrec.coordinator.preflight import coordinator_ready

            for line in coordinator_ready(cfg, roster):  # fail fast, named, before any flow run starts
                err.print(f"ok  {line}", soft_wrap=True, markup=False, highlight=False)
            from fedrec.flows.federated import run_federation

            summary = run_federation(params_path=str(params), overrides=overrides, silos=roster,
                                     show_progress=not as_json, run_id=run_id)
    _print_summary(summary, cfg, output, as_json)
    from fedrec.core.audit import hold_for_inspection

    hold_for_inspection()  # only with FEDREC_AUDIT_HOLD set: a test searches this process's memory


silo_app = typer.Typer(no_args_is_help=True, help="What a silo's operator runs on the silo's own machine.")
app.add_typer(silo_app, name="silo")


@silo_app.command("serve")
def silo_serve(silo: str = typer.Option(..., "--silo", help="this silo's id"),
               params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
               poll: int = typer.Option(2, "--poll", help="seconds between looks for new runs")) -> None:
    """Serve this silo's `silo_agent/silo-<id>` deployment: the coordinator starts runs of it; they run here,
    next to this silo's data and keys, with this command's params and -S overrides (pinned: a run that asks for
    another silo id, params file or overrides is refused). Stops on Ctrl-C."""
    import os

    from fedrec.wire.exchange import check_silo_id

    with user_errors():
        check_silo_id(silo)
        overrides = merged_overrides(set_)
        cfg = load_params(params, overrides)
        from fedrec.silo.preflight import silo_ready

        for line in silo_ready(cfg, silo):  # fail fast, named: not when the first run comes
            err.print(f"ok  {line}", soft_wrap=True, markup=False, highlight=False)
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", str(poll))
    from prefect import serve

    from fedrec.flows.silo_agent import pin_serving, silo_agent

    pinned = pin_serving(silo, str(params.resolve()), overrides)  # the runs' processes inherit it
    deployment = silo_agent.to_deployment(name=f"silo-{silo}", parameters=pinned)
    err.print(f"serving silo_agent/silo-{silo} (Ctrl-C to stop)")
    serve(deployment, print_starting_message=False)


@silo_app.command("identity")
def silo_identity(silo: str = typer.Option(..., "--silo", help="this silo's id"), params: Path = ParamsOpt,
                  set_: Optional[list[str]] = SetOpt) -> None:
    """Print this silo's public identity (JSON), making its key pair on first use; the private keys stay in
    state/silos/<id>/identity. Send the output to the coordinator's operator for the roster."""
    from fedrec.silo.store import SiloStore
    from fedrec.wire.trust import Identity

    with user_errors():
        cfg = command_config(params, set_)
        store = SiloStore.of(cfg, silo, "_")
        store.private_dir(store.silo_dir)  # state/silos/<silo>: 0700 before the keys are made under it
        ident = Identity.load_or_create(store.identity_dir, silo)
    sys.stdout.write(json.dumps(ident.public.to_dict()) + "\n")
    err.print(f"silo {silo}: fingerprint {ident.public.fingerprint} (compare it over another channel)")


@silo_app.command("forget-keys")
def silo_forget_keys(silo: str = typer.Option(..., "--silo", help="this silo's id"),
                     run_id: Optional[str] = typer.Option(None, "--run-id", help="one finished run"),
                     all_runs: bool = typer.Option(False, "--all", help="every run of this silo"),
                     params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Delete the HE key material this silo keeps of finished federation runs (keys rotate per run)."""
    from fedrec.silo.store import SiloStore
    from fedrec.wire.exchange import check_run_id, check_silo_id

    with user_errors():
        cfg = command_config(params, set_)
        if not (run_id or all_runs):
            raise typer.BadParameter("name a run (--run-id) or --all")
        check_silo_id(silo)
        if run_id is not None:  # before it is joined to a path: never a directory outside this silo's store
            runs = [check_run_id(run_id)]
        else:
            runs = [store.root.name for store in SiloStore.runs_of(cfg, silo)]
        deleted = [r for r in runs if SiloStore.of(cfg, silo, r).forget_keys()]
    err.print(f"silo {silo}: deleted the HE keys of {len(deleted)} run(s)" + (f": {', '.join(deleted)}" if deleted else ""))


@app.command()
def identity(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Print the coordinator's public identity (JSON), making its key pair on first use."""
    from fedrec.wire.trust import COORDINATOR, Identity

    with user_errors():
        cfg = command_config(params, set_)
        ident = Identity.load_or_create(Path(cfg.federation.state_dir) / "coordinator" / "identity", COORDINATOR)
    sys.stdout.write(json.dumps(ident.public.to_dict()) + "\n")
    err.print(f"coordinator: fingerprint {ident.public.fingerprint}")


@app.command()
def roster(identities: list[Path] = typer.Argument(..., help="public identity files (fedrec identity / fedrec silo identity)"),
           output: Path = typer.Option(..., "--out", "-o", help="the roster to write (set federation.roster to it)")) -> None:
    """Pin the federation's parties: one roster JSON of the coordinator's and every silo's public keys, given
    to every party (federation.roster). Without one, keys are learnt on first use."""
    from fedrec.wire.trust import COORDINATOR, PublicIdentity, Roster, RosterError

    with user_errors():
        pinned = Roster()
        for path in identities:
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise RosterError(f"{path}: not a public identity file ({exc})") from exc
            ident = PublicIdentity.from_dict(raw, str(path))
            if ident.name in pinned:
                raise RosterError(f"{path}: {ident.name!r} is listed twice")
            pinned = pinned.with_party(ident)
        if COORDINATOR not in pinned:
            raise RosterError("the roster needs the coordinator's identity (fedrec identity)")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(pinned.to_json())
    err.print(f"wrote {output}: " + ", ".join(f"{n} {p.fingerprint}" for n, p in sorted(pinned.parties.items())))


@app.command()
def recommend(
    silo: str = typer.Option(..., "--silo", help="the silo that holds the user"),
    user: int = typer.Option(..., "--user", help="user id (as in the silo's data)"),
    k: int = typer.Option(10, "-k", "--k", min=1, help="how many items"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="federated run (default: the silo's latest)"),
    as_json: bool = typer.Option(False, "--json", help='{"silo", "user", "items": [{"item_id", "title", "score", "because"}]}'),
    params: Path = ParamsOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Top-K unseen items for one user, computed inside the user's silo (a new user: the silo's popular items)."""
    from fedrec.silo.recommend import recommend as top_k

    with user_errors():
        recs = top_k(command_config(params, set_), silo, user, k, run_id)
    if as_json:
        sys.stdout.write(json.dumps(recs.to_dict()) + "\n")
        return
    title = f"top-{k} for user {user} (silo {silo}, run {recs.run_id})"
    table = Table(title=title + (f"\n{recs.note}" if recs.note else ""))
    for col in ("rank", "item_id", "title", "score", "because you liked"):
        table.add_column(col)
    for rank, r in enumerate(recs.items, 1):
        table.add_row(str(rank), str(r.item_id), r.title, f"{r.score:.4g}", "; ".join(b.title for b in r.because))
    out.print(table)


@app.command()
def serve(silo: str = typer.Option(..., "--silo", help="this silo's id"),
          host: str = typer.Option("127.0.0.1", "--host", help="listen address (loopback by default)"),
          port: int = typer.Option(8000, "--port"),
          run_id: Optional[str] = typer.Option(None, "--run-id", help="pin a federated run (default: the latest)"),
          answer_cache: int = typer.Option(200_000, "--answer-cache", min=0,
                                           help="answers kept per model snapshot (0: score every request)"),
          params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Serve this silo's recommendations over HTTP: GET /recommend/{user}?k=10 (JSON). Ctrl-C stops it."""
    from fedrec.silo.http import make_app
    from fedrec.silo.serve_auth import check_exposure

    with user_errors():
        cfg = command_config(params, set_)
        check_exposure(cfg, silo, host)  # beyond loopback only with API keys
        app_ = make_app(cfg, silo, run_id, answer_cache=answer_cache)
    import torch
    import uvicorn

    torch.set_num_threads(1)  # one user's scores are a small product: threads only contend with the server's own work
    gc.collect()
    gc.freeze()  # the long-lived heap (torch, pandas, the app) leaves the collector: no 50-80 ms full collections

    err.print(f"silo {silo}: http://{host}:{port}/recommend/<user>?k=10 (Ctrl-C to stop)")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


serve_keys_app = typer.Typer(no_args_is_help=True, help="API keys of `fedrec serve` (hashed at rest, per client).")
app.add_typer(serve_keys_app, name="serve-keys")


@serve_keys_app.command("add")
def serve_keys_add(silo: str = typer.Option(..., "--silo"), client: str = typer.Option(..., "--client"),
                   params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """A new key for CLIENT, printed once (only its SHA-256 is kept, 0600 in the silo's state)."""
    from fedrec.silo.serve_auth import add_key

    with user_errors():
        token = add_key(command_config(params, set_), silo, client)
    sys.stdout.write(token + "\n")
    err.print(f"key for client {client!r} of silo {silo}: shown once, send it as 'Authorization: Bearer <key>'")


@serve_keys_app.command("revoke")
def serve_keys_revoke(silo: str = typer.Option(..., "--silo"), client: str = typer.Option(..., "--client"),
                      params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Revoke CLIENT's key (a running server refuses it from its next request)."""
    from fedrec.silo.serve_auth import revoke_key

    with user_errors():
        revoke_key(command_config(params, set_), silo, client)
    err.print(f"revoked client {client!r} of silo {silo}")


@serve_keys_app.command("list")
def serve_keys_list(silo: str = typer.Option(..., "--silo"), params: Path = ParamsOpt,
                    set_: Optional[list[str]] = SetOpt) -> None:
    """The clients with keys (never the keys): JSON."""
    from fedrec.silo.serve_auth import list_keys

    with user_errors():
        sys.stdout.write(json.dumps(list_keys(command_config(params, set_), silo)) + "\n")


@app.command()
def feedback(csv: Path = typer.Argument(..., help="CSV of user_id,item_id,rating[,timestamp] (timestamp: now)"),
             silo: str = typer.Option(..., "--silo", help="this silo's id"),
             as_json: bool = typer.Option(False, "--json"),
             params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Append new interactions to this silo's data: validated with the silo's Great Expectations suite (invalid
    feedback is refused whole, nothing appended), recorded as a new DVC data version; the next run trains on it."""
    from fedrec.silo.feedback import append_feedback, read_feedback

    with user_errors():
        result = append_feedback(command_config(params, set_), silo, read_feedback(csv))
    if as_json:
        sys.stdout.write(json.dumps({"silo": result.silo, "rows": result.rows, "batch": str(result.batch),
                                     "data_version": result.data_version, "dvc": result.dvc}) + "\n")
    err.print(f"silo {silo}: appended {result.rows} interaction(s) as {result.batch}; data version "
              f"{result.data_version}; {result.dvc}")


@app.command("config")
def config_cmd(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
               schema: bool = typer.Option(False, "--schema", help="the reference of every key (type, default, "
                                                                  "description, checks) instead of the values"),
               markdown: bool = typer.Option(False, "--markdown", help="with --schema: as Markdown (docs/config.md)"),
               as_json: bool = typer.Option(False, "--json", help="the effective values as JSON with their sources")) -> None:
    """Show the effective configuration, key by key, with where each value comes from (default, params.yaml, -S,
    environment); --schema: the reference of every key, generated from the typed config."""
    from fedrec.core import config_reference as ref

    if schema:
        sys.stdout.write((ref.schema_markdown() if markdown else ref.schema_text()) + "\n")
        return
    with user_errors():
        overrides = merged_overrides(set_)
        load_params(params, overrides)
        rows = ref.effective(params, overrides)
    if as_json:
        sys.stdout.write(json.dumps({k: {"value": v, "source": src} for k, v, src in rows}) + "\n")
        return
    table = Table(title=f"effective config ({params if params.exists() else 'built-in defaults'})")
    for col in ("key", "value", "source"):
        table.add_column(col)
    for key, value, source in rows:
        table.add_row(key, json.dumps(value) if not isinstance(value, str) else value,
                      source if source == "default" else f"[bold]{source}[/]")
    out.print(table)


cli_ops.register(app)
cli_sources.register(app)
cli_items.register(app)  # fedrec embed-items


def main() -> None:  # pragma: no cover - console entry (and `python -m fedrec`, bin/fedrec)
    app(prog_name="fedrec")


if __name__ == "__main__":  # pragma: no cover
    app()
