"""`federated_training`: the coordinator's flow.

    launch silo agents ─► admit (their GE verdicts) ─► public context + global(0) ─►
      round r: instructions ─► mask set ─► encrypted updates ─► unmask (survivors reveal) ─► ciphertext sum ─►
               decryptor's mean (another decryptor if it is gone; a verdict skips the round) ─► strategy ─► global(r)
               [─► silos' metric sums] ─► MLflow metrics + the round's Prefect table artifact (`fedrec-round-NNNN`)
    ─► stop ─► select the best round on validation ─► plots (MLflow + <reports_dir>/<run id>/) ─► register the
       global item tower ─► summary artifact (`fedrec-summary`)

The coordinator's process holds the public HE context, the global model and the strategy's state only; the
silos run their own `silo_agent` flow runs (flows/silo_agent.py) in their own processes or machines.
"""

from __future__ import annotations

import contextvars
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from fedrec.coordinator.coordinator import Coordinator, checkpoint_extra
from fedrec.coordinator.report import RoundRecord, rounds_figure
from fedrec.coordinator.summary import better, evaluation_due, register_model, summarize
from fedrec.core import diagnostics as faults
from fedrec.core.config import Config, load_config
from fedrec.core.errors import ConfigError, FederationError
from fedrec.core.item_text import item_features
from fedrec.core.objectives import objective
from fedrec.core.progress import bar
from fedrec.flows.silo_agent import silo_agent
from fedrec.orchestration.launch import (
    DeploymentLauncher,
    LocalSiloHosts,
    local_server_yields_cpu,
    prefect_api,
)
from fedrec.orchestration.ops import plots
from fedrec.orchestration.tracking import mlflow_run, warm_up
from fedrec.protocol.reads import load_global
from fedrec.silo import data as pipeline
from fedrec.silo import privacy
from fedrec.tasks.coordinator import (
    admit,
    close_run,
    collect_evaluation,
    federated_round,
    open_federation,
    open_run,
)


def _api_url() -> str | None:
    """The Prefect API this flow reports to (prefect_api's own local server included), for the silo hosts."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def _federation_name() -> str:
    """The federated run's Prefect name: ``federation-[<run id>-]<UTC time>``; its silo runs, MLflow run and
    reports carry it."""
    given = (flow_run.get_parameters() or {}).get("run_id")
    return f"federation-{given + '-' if given else ''}{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def _current_federation(run_id: str) -> str:
    """This flow run's name (:func:`_federation_name`), or a stand-in outside a flow run."""
    return flow_run.get_name() or f"federation-{run_id}"


def _launcher(cfg: Config, run_id: str, silos: list[str], params_path: str, overrides: dict | None,
              sizes: dict[str, int] | None, validation_in_train: bool):
    federation = _current_federation(run_id)
    if validation_in_train:
        federation += "-refit"
    if cfg.federation.launcher == "deployments":
        return DeploymentLauncher(cfg, run_id, silos, validation_in_train=validation_in_train,
                                  federation=federation).start()
    return LocalSiloHosts(cfg, run_id, silos, params_path=params_path, overrides=overrides, api_url=_api_url(),
                          validation_in_train=validation_in_train, sizes=sizes, federation=federation,
                          silo_flow=silo_agent).start()


class RoundReporter:
    """``on_round(record)`` (MLflow metrics, the round's table artifact, the log line, the progress bar) on one
    thread of its own, in the flow run's context, while the next round runs: the silos no longer wait for it (≈40 ms
    a round here, with nothing to do). One report at a time, in order; a report's error is raised at the next
    :meth:`report` or at :meth:`close`."""

    def __init__(self, on_round) -> None:
        self.on_round = on_round
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fedrec-round-report") if on_round else None
        self._pending: Future | None = None

    def _settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def report(self, record: RoundRecord) -> None:
        if self._pool is None:
            return
        self._settle()
        self._pending = self._pool.submit(contextvars.copy_context().run, self.on_round, record)

    def close(self, wait: bool = True) -> None:
        """Wait for the last report (``wait``: and raise its error) and stop the thread."""
        if self._pool is None:
            return
        try:
            if wait:
                self._settle()
        finally:
            self._pool.shutdown(wait=True)
            self._pool = None


def federate(cfg: Config, run_id: str, roster: list[str], rounds: int, *, params_path: str, overrides: dict | None,
             sizes: dict[str, int] | None = None, refit: bool = False, on_round=None, launcher=None,
             checkpoint: dict | None = None):
    """Launch the silo agents (unless ``launcher`` already did), admit them, run ``rounds`` rounds, stop them.
    After each round the coordinator's state is checkpointed (with ``checkpoint``, e.g. the MLflow run id); a run
    that has a checkpoint resumes after its last checkpointed round instead. ``on_round(record)`` reports each round
    beside the next one (:class:`RoundReporter`); a resumed run first hands it every restored round again, since
    the crash may have cut the last one's report short: it skips what it already reported. Returns (coordinator, history).
    The silo agents are told to stop either way; a ``launcher`` passed in is joined by its owner (so that their
    processes wind down while the coordinator logs the run), one launched here before this returns."""
    own = launcher is None
    launcher = launcher or _launcher(cfg, run_id, roster, params_path, overrides, sizes, refit)
    coord = Coordinator(cfg, run_id, len(pipeline.catalogue_ids(cfg)), gone=launcher.gone)
    open_run(coord)
    finished = False
    reporter = RoundReporter(on_round)
    try:
        restored = coord.restore()
        if restored is None:
            admit(run_id, roster)
            open_federation(run_id)
        else:
            get_run_logger().info("run %s resumes after round %d (its checkpoint)", run_id, restored[0].round)
            for record in coord.state.history:  # the last round's report may have been cut short by the crash
                reporter.report(record)
        local_server_yields_cpu()
        for r in range(coord.state.round + 1, rounds + 1):
            evaluate = evaluation_due(cfg, r, rounds, refit)
            record = federated_round(run_id, r, evaluate)
            if evaluate:
                record = collect_evaluation(run_id, r)
            reporter.report(record)
            coord.save_checkpoint(checkpoint)  # the run's state after round r: what a resumed run starts from
            faults.crash_point("coordinator-after-round", r)
        reporter.close()
        finished = True
    finally:
        reporter.close(wait=finished)
        coord.stop("finished" if finished else "the coordinator stopped early",
                   coord.state.round if coord.state is not None else 0)
        close_run(run_id)
        if own:
            _join(launcher)
    return coord, list(coord.state.history)


def _join(launcher) -> None:
    failed = launcher.join()
    if failed:
        get_run_logger().warning("silo agents that did not finish cleanly: %s", failed)


@flow(name="federated_training", flow_run_name=_federation_name)
def federated_training(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                       silos: list[str] | None = None, silo_sizes: dict[str, int] | None = None,
                       show_progress: bool = False, run_id: str | None = None) -> dict[str, Any]:
    """Train one recommender across the silos with encrypted aggregation; returns the run's summary. ``run_id``:
    the federation run (default: this flow run's id); one that has a checkpoint resumes after its last round."""
    cfg = load_config(params_path, overrides)
    run_id = run_id or str(flow_run.get_id() or uuid.uuid4())
    roster = list(silos or cfg.federation.silos)
    if not roster:
        raise ConfigError("no silos to federate: list them in federation.silos (or run `fedrec run`)")
    # the silo agents start (imports, validation) while MLflow opens its store
    launcher = _launcher(cfg, run_id, roster, params_path, overrides, silo_sizes, False)
    try:
        return _train_and_track(cfg, run_id, roster, launcher, params_path, overrides, silo_sizes, show_progress)
    finally:  # whatever happened, no silo agent is left waiting
        Coordinator(cfg, run_id, 0).stop("the coordinator's flow ended", 0)
        _join(launcher)


def _train_and_track(cfg: Config, run_id: str, roster: list[str], launcher, params_path: str,
                     overrides: dict | None, silo_sizes: dict | None, show_progress: bool) -> dict[str, Any]:
    logger = get_run_logger()
    k = cfg.evaluation.k
    resumed = checkpoint_extra(cfg, run_id)  # a crashed run continues its own MLflow run
    name = _current_federation(run_id)
    with mlflow_run(cfg, f"{name}-{cfg.model.name}-{'he' if cfg.federation.he else 'plain'}",
                    {"kind": "federated", "model": cfg.model.name, "prefect_flow_run": run_id},
                    run_id=resumed.get("mlflow_run_id") if resumed else None) as run, \
            _round_progress(show_progress, cfg.federation.rounds) as progress:
        if resumed is None:
            run.log_config(cfg)
        elif progress:
            progress.update(progress.task_ids[0], advance=resumed["rounds_done"])

        sigma = privacy.noise_multiplier(cfg.privacy, cfg.federation.rounds) if cfg.privacy.enabled else 0.0

        # a resumed run: the rounds whose report reached MLflow (the report's last step) are not reported again
        reported = run.logged_steps("train_loss") if resumed else set()

        def on_round(record: RoundRecord) -> None:
            if record.round in reported:
                return
            dp = ({"dp_epsilon": privacy.epsilon(sigma, cfg.privacy.user_sample_rate, record.round, cfg.privacy.delta)}
                  if cfg.privacy.enabled else {})
            create_table_artifact(record.table(k), key=round_artifact_key(record.round), description=record.headline())
            shown = objective(cfg.task).headline(k)  # hr@k | rmse (task: rating)
            status = f"loss {record.loss:.4f}" + (f" {shown} {record.val[shown]:.4f} (val)" if record.val else "")
            logger.info("round %d: %s%s", record.round, status, f"; failed: {record.failures}" if record.failures else "")
            if progress and record.round > (resumed or {}).get("rounds_done", 0):
                progress.update(progress.task_ids[0], advance=1, status=status)
            run.log_metrics(record.mlflow_metrics() | dp, step=record.round)  # last: it marks the round reported

        coord, history = federate(cfg, run_id, roster, cfg.federation.rounds, params_path=params_path,
                                  overrides=overrides, sizes=silo_sizes, on_round=on_round, launcher=launcher,
                                  checkpoint={"mlflow_run_id": run.run_id})
        best: RoundRecord | None = None
        for record in history:  # restored rounds of a resumed run included
            best = record if better(cfg, record, best) else best
        if best is None:
            raise FederationError("no round was evaluated: no silo returned metric sums")
        adm = coord.admission
        run.log_params({"silos": ",".join(adm.silos), "silos_excluded": ",".join(adm.excluded) or "-",
                        "he_context_id": coord.codec.context_id, "key_holder": adm.key_holder,
                        "shared_parameters": sum(t.numel() for t in coord.global_state.values())})
        run.log_dict({"excluded": adm.excluded}, "validation.json")
        if coord.data_versions:  # which data each silo trained on (a resumed run logged them at its start)
            run.set_tags({f"data_version.{s}": v for s, v in coord.data_versions.items()})
        report_dir = Path(cfg.operations.reports_dir) / run_id
        figures = plots.figures(history, k, best.round) | {"hr_ndcg_per_round.png": rounds_figure(history, k)}
        for figure_name, figure in figures.items():  # rendered once: the reports' PNG is the MLflow artifact
            run.log_saved_figure(figure, plots.save(figure, report_dir / figure_name))
        # the run's description (the top of MLflow's default Overview): the training curves, then what was selected
        run.set_tags({"mlflow.note.content": (
            f"![training curves](get-artifact?path=training_curves.png&run_uuid={run.run_id})\n\n"
            f"Federation `{name}`: round {best.round} of {len(history)} selected on the validation item; plots "
            f"under `{report_dir}/`.")})
        summary = summarize(cfg, run_id, adm, history, best)
        summary["reports"] = str(report_dir)
        summary["data_versions"] = dict(coord.data_versions)
        final_test = best.test
        if cfg.training.refit:
            _, refit_history = federate(cfg, f"{run_id}-refit", adm.silos, best.round, params_path=params_path,
                                        overrides=overrides, sizes=silo_sizes, refit=True)
            final_test = refit_history[-1].test
            summary |= {f"cold_{m}": v for m, v in refit_history[-1].cold.items()}  # cold-start items, refit model
            run.log_metrics({f"refit_test_{m}": v for m, v in final_test.items()})
            summary |= final_test
        summary["refit"] = cfg.training.refit
        if cfg.privacy.enabled:  # user-level DP inside each silo (fedrec.silo.privacy), Opacus' RDP accountant
            summary["privacy"] = {
                "unit": "user within a silo", "noise_multiplier": sigma, "clip_norm": cfg.privacy.clip_norm,
                "user_sample_rate": cfg.privacy.user_sample_rate, "delta": cfg.privacy.delta,
                "rounds": len(history), "epsilon": privacy.epsilon(sigma, cfg.privacy.user_sample_rate, len(history),
                                                                   cfg.privacy.delta)}
            run.log_params({"dp_noise_multiplier": sigma})
        summary["coordinator_can_decrypt"] = bool(getattr(coord.codec, "can_decrypt", False)) and cfg.federation.he
        summary["he_context_id"] = coord.codec.context_id  # which key the run's ciphertexts were made under
        run.log_metrics({f"selected_test_{m}": v for m, v in final_test.items()} | {"selected_round": best.round})
        run.log_dict(summary, "summary.json")
        summary["model_uri"] = register_model(cfg, coord.n_items, load_global(coord.exchange, best.round, coord.identity.public), run)
        summary["mlflow_run_id"] = run.run_id
        summary["federation"] = name
        summary["mlflow_experiment_id"] = run.experiment_id
        summary["prefect_flow_run_id"] = str(flow_run.get_id() or run_id)
    create_markdown_artifact(_summary_markdown(summary, k), key="fedrec-summary",
                             description=f"federation {run_id}: the selected round and where its records are")
    return summary


def _summary_markdown(summary: dict[str, Any], k: int) -> str:
    keys = list(objective(summary.get("task", "ranking")).report_keys(k))
    lines = [f"## Federation {summary['run_id']}", "",
             f"round {summary['selected_round']} of {summary['rounds']} selected on {summary['selection_metric']}; "
             f"silos {', '.join(summary['silos'])}" + (f"; left out: {', '.join(summary['excluded'])}"
                                                      if summary["excluded"] else ""), "",
             "| " + " | ".join(f"test {m}" for m in keys) + " |", "|" + "---|" * len(keys),
             "| " + " | ".join(f"{summary[m]:.4f}" for m in keys) + " |", "",
             f"- MLflow run `{summary['mlflow_run_id']}`, model `{summary['model_uri']}`",
             f"- plots: `{summary['reports']}/`",
             f"- per-silo runs: this run's subflow runs `{summary['federation']}-silo-<silo>` (tag "
             f"`federation:{summary['run_id']}`)"]
    lines += [f"- data version of silo {s}: `{v}`" for s, v in sorted(summary.get("data_versions", {}).items())]
    history = summary.get("history") or []
    if history:  # the rounds in order (the Artifacts tab lists the round tables in no particular order)
        shown = [key for key in (f"val_{keys[0]}", f"test_{keys[0]}") if key in history[-1]]
        lines += ["", "| round | loss | " + " | ".join(shown) + " | silos |", "|---|---|" + "---|" * len(shown) + "---|"]
        for h in history:
            cells = [f"{h[key]:.4f}" if h.get(key) is not None else "" for key in shown]
            lines.append(f"| {h['round']} | {h['loss']:.4f} | " + " | ".join(cells) + f" | {len(h.get('contributors', []))} |")
    return "\n".join(lines)


def round_artifact_key(server_round: int) -> str:
    """Prefect artifact key of a round's table: zero-padded so that the Artifacts page lists them in round order."""
    return f"fedrec-round-{server_round:04d}"


def _round_progress(enabled: bool, total: int):
    """A bar on a terminal; one line per round elsewhere (a DVC stage's log)."""
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.console import Console

    progress = bar("federated rounds", Console(stderr=True))
    progress.add_task("federated rounds", total=total, status="starting silo agents")
    return progress


def run_federation(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                   silos: list[str] | None = None, silo_sizes: dict[str, int] | None = None,
                   show_progress: bool = False, run_id: str | None = None) -> dict[str, Any]:
    """Run `federated_training` against a Prefect API that the silo agents can reach too."""
    warm_up(load_config(params_path, overrides))  # MLflow's imports while the Prefect server starts
    with prefect_api():
        return federated_training(params_path=params_path, overrides=overrides, silos=silos, silo_sizes=silo_sizes,
                                  show_progress=show_progress, run_id=run_id)


def run_demo(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
             show_progress: bool = False, run_id: str | None = None) -> dict[str, Any]:
    """One machine, embedded defaults: provision the demo silos (the data owners' step), then federate them."""
    cfg = load_config(params_path, overrides)
    silos = pipeline.ensure_partitioned(cfg)
    if cfg.model.name == "hybrid":  # the public item text embeddings, once, before the silos read them
        item_features(cfg)
    if cfg.federation.silos:
        silos = [s for s in silos if s in cfg.federation.silos]
    return run_federation(params_path, overrides, silos, pipeline.silo_sizes(cfg), show_progress, run_id)
