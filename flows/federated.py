"""`federated_training`: validate silos, then rounds of local training -> CKKS encryption ->
ciphertext aggregation -> decryption at a key holder, with local evaluation, MLflow tracking and
a Prefect artifact per round.

    prepare-silos ─► validate ×K ─► setup_keys ─► init_global ─►
      round r: train_local ×K ─► encrypt ×K ─► aggregate ─► decrypt ─► evaluate_local ×K ─► log
"""

from __future__ import annotations

from fedrec import env

env.apply_defaults()

import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import asdict  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, get_run_logger, unmapped  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from fedrec.config import Config, load_config  # noqa: E402
from fedrec.errors import FederationError  # noqa: E402
from fedrec.federation.report import RoundRecord, rounds_figure  # noqa: E402
from fedrec.federation.rounds import Federation  # noqa: E402
from fedrec.federation.strategy import build_strategy  # noqa: E402
from fedrec.metrics import selection_value  # noqa: E402
from fedrec.tracking import mlflow_run  # noqa: E402
from tasks.coordinator import aggregate, decrypt_and_step, init_global, setup_keys  # noqa: E402
from tasks.data import prepare_silos, validate_silo  # noqa: E402
from tasks.silo import encrypt_update, evaluate_local, train_local  # noqa: E402


def _settle(futures: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Results of the futures that completed, and the failure reason of those that did not."""
    done, failed = {}, {}
    for silo_id, fut in futures.items():
        fut.wait()
        if fut.state.is_completed():
            done[silo_id] = fut.result()
        else:
            failed[silo_id] = str(fut.state.message or fut.state.name)[:300]
    return done, failed


def _round_progress(enabled: bool):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("federated rounds"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=Console(stderr=True))


def run_round(fed: Federation, strategy, silos: list[str], key_holder: str, r: int, last_round: int) -> RoundRecord:
    cfg = fed.cfg
    start = time.perf_counter()
    instructions = strategy.configure_fit(r, silos)
    trains = {s: train_local.submit(fed, s, r, instructions[s]) for s in silos}
    encrypts = {s: encrypt_update.submit(fed, s, r, wait_for=[trains[s]]) for s in silos}
    trained, failed = _settle(trains)
    encrypted, enc_failed = _settle(encrypts)
    failed |= {s: why for s, why in enc_failed.items() if s not in failed}
    agg = aggregate.submit(fed, r, sorted(encrypted)).result()
    failed |= dict(agg.failures)
    dec = decrypt_and_step.submit(fed, key_holder, r, strategy, sorted(failed.items())).result()
    record = RoundRecord(
        round=r,
        loss=sum(t.loss * t.n_samples for t in trained.values()) / max(sum(t.n_samples for t in trained.values()), 1),
        contributors=list(agg.contributors), failures=failed,
        bytes_per_silo={s: e.bytes_sent for s, e in encrypted.items()},
        plaintext_bytes=next(iter(encrypted.values())).plaintext_bytes if encrypted else 0,
        seconds={"train": sum(t.seconds for t in trained.values()),
                 "encrypt": sum(e.seconds for e in encrypted.values()),
                 "aggregate": agg.seconds, "decrypt": dec.seconds},
    )
    if (r % cfg.federation.eval_every == 0 and not fed.validation_in_train) or r == last_round:
        eval_start = time.perf_counter()
        outcomes, _ = _settle({s: evaluate_local.submit(fed, s, r) for s in silos})
        record.add_evaluation(list(outcomes.values()), cfg.evaluation.k)
        record.seconds["evaluate"] = time.perf_counter() - eval_start
    record.seconds["round"] = time.perf_counter() - start
    return record


@flow(name="federated_training", task_runner=ThreadPoolTaskRunner(max_workers=2))
def federated_training(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                       show_progress: bool = False) -> dict[str, Any]:
    """Train one recommender across silos with encrypted aggregation; returns the run's summary."""
    logger = get_run_logger()
    cfg: Config = load_config(params_path, overrides)
    fed = Federation(cfg, run_id=str(flow_run.get_id() or uuid.uuid4()))
    k = cfg.evaluation.k

    all_silos = prepare_silos(cfg)
    reports = {r.silo_id: r for r in validate_silo.map(unmapped(cfg), all_silos).result()}
    silos = sorted(s for s, r in reports.items() if r.success)
    excluded = {s: "; ".join(r.summary()) for s, r in reports.items() if not r.success}
    for silo_id, why in excluded.items():
        logger.warning("silo %s left out of the federation: %s", silo_id, why)
    if len(silos) < cfg.federation.min_silos:
        raise FederationError(f"only {len(silos)} silo(s) passed validation but federation.min_silos="
                              f"{cfg.federation.min_silos}; left out: {excluded}")
    context_id = setup_keys(fed, silos)
    n_params = init_global(fed)
    strategy = build_strategy(cfg.federation)
    key_holder = silos[0]

    history: list[RoundRecord] = []
    best: RoundRecord | None = None
    with mlflow_run(cfg, f"federated-{cfg.model.name}-{'he' if cfg.federation.he else 'plain'}",
                    {"kind": "federated", "model": cfg.model.name, "prefect_flow_run": fed.run_id}) as run, \
            _round_progress(show_progress) as progress:
        run.log_config(cfg)
        run.log_params({"silos": ",".join(silos), "silos_excluded": ",".join(excluded) or "-",
                        "he_context_id": context_id, "shared_parameters": n_params, "key_holder": key_holder})
        run.log_dict({"excluded": excluded, "validation": {s: asdict(r) for s, r in reports.items()}},
                     "validation.json")
        bar = progress.add_task("rounds", total=cfg.federation.rounds, status="") if progress else None
        for r in range(1, cfg.federation.rounds + 1):
            record = run_round(fed, strategy, silos, key_holder, r, cfg.federation.rounds)
            history.append(record)
            run.log_metrics(record.mlflow_metrics(), step=r)
            create_markdown_artifact(record.markdown(k), key="fedrec-round", description=f"round {r}")
            if record.val and (best is None or selection_value(record.val, cfg.evaluation.selection_metric, k)
                               > selection_value(best.val, cfg.evaluation.selection_metric, k)):
                best = record
            status = f"loss {record.loss:.4f}" + (f" hr@{k} {record.val[f'hr@{k}']:.4f} (val)" if record.val else "")
            logger.info("round %d: %s", r, status)
            if progress:
                progress.update(bar, advance=1, status=status)
        run.log_figure(rounds_figure(history, k), "hr_ndcg_per_round.png")
        final_fed, final_round, final_test = fed, best.round, best.test
        if cfg.training.refit:
            final_fed = Federation(cfg, run_id=f"{fed.run_id}-refit", validation_in_train=True)
            final_test = _refit(final_fed, strategy, silos, key_holder, best.round, progress, logger)
            run.log_metrics({f"refit_test_{m}": v for m, v in final_test.items()})
        summary = _summary(cfg, fed, silos, excluded, history, best)
        summary |= {m: v for m, v in final_test.items()}
        summary["refit"] = cfg.training.refit
        run.log_metrics({f"selected_test_{m}": v for m, v in final_test.items()} | {"selected_round": best.round})
        run.log_dict(summary, "summary.json")
        summary["model_uri"] = _register_model(final_fed, final_round, run)
        summary["mlflow_run_id"] = run.run_id
    return summary


def _refit(fed: Federation, strategy, silos: list[str], key_holder: str, rounds: int, progress, logger) -> dict:
    """Re-run the federation for the selected number of rounds with validation items in training."""
    setup_keys(fed, silos)
    init_global(fed)
    bar = progress.add_task("refit", total=rounds, status="") if progress else None
    record = None
    for r in range(1, rounds + 1):
        record = run_round(fed, strategy, silos, key_holder, r, rounds)
        if progress:
            progress.update(bar, advance=1, status=f"refit loss {record.loss:.4f}")
    logger.info("refit on train+validation for %d rounds: test %s", rounds, record.test)
    return record.test


def _summary(cfg: Config, fed: Federation, silos, excluded, history: list[RoundRecord], best: RoundRecord) -> dict:
    import statistics

    k = cfg.evaluation.k
    bytes_mean = {s: statistics.fmean(h.bytes_per_silo.get(s, 0) for h in history) for s in silos}
    return {
        "run_id": fed.run_id, "model": cfg.model.name, "he": cfg.federation.he,
        "strategy": cfg.federation.strategy, "rounds": cfg.federation.rounds,
        "local_epochs": cfg.federation.local_epochs, "silos": silos, "excluded": excluded,
        "selection_metric": f"val_{cfg.evaluation.selection_metric}@{k}", "selected_round": best.round,
        **{m: v for m, v in best.test.items()},
        "val": best.val, "per_silo_test": best.per_silo_test,
        "seconds_per_round": statistics.fmean(h.seconds["round"] for h in history),
        "seconds_per_phase": {p: statistics.fmean(h.seconds.get(p, 0.0) for h in history)
                              for p in ("train", "encrypt", "aggregate", "decrypt", "evaluate")},
        "bytes_per_round": bytes_mean,
        "bytes_per_round_mean": statistics.fmean(bytes_mean.values()),
        "plaintext_fp32_bytes": history[-1].plaintext_bytes,
        "history": [{"round": h.round, "loss": h.loss, **{f"val_{m}": v for m, v in h.val.items()},
                     **{f"test_{m}": v for m, v in h.test.items()}} for h in history],
    }


def _register_model(fed: Federation, server_round: int, run) -> str:
    """Log and register the selected round's global item tower (no user embeddings: those stay in the silos)."""
    from fedrec import pipeline
    from fedrec.training import model_config
    from models import build_model

    model = build_model(model_config(fed.cfg.model, 1, len(pipeline.catalogue_ids(fed.cfg))))
    model.load_shared_state(fed.load_global(server_round))
    return run.log_torch_model(model.items, "global_item_tower", registered_model_name=fed.cfg.tracking.registered_model)


def run_federation(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                   show_progress: bool = False) -> dict[str, Any]:
    """Run `federated_training` with as many silos in parallel as ``federation.max_parallel_silos``."""
    cfg = load_config(params_path, overrides)
    runner = ThreadPoolTaskRunner(max_workers=cfg.federation.max_parallel_silos)
    return federated_training.with_options(task_runner=runner)(
        params_path=params_path, overrides=overrides, show_progress=show_progress)
