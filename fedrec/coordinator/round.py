"""One round at the coordinator, in one place: ``run_round(state, coordinator, r, evaluate) -> (state', record)``.

    instructions ─► mask set ─► updates (deadline) ─► unmask ─► ciphertext sum ─► decryptor's mean (or its verdict)
    ─► strategy step ─► global(r) ─► [the silos' metric sums]

``state`` (:class:`~fedrec.coordinator.state.RunState`) is never changed: the round returns the next state and its
:class:`~fedrec.coordinator.report.RoundRecord`. The :class:`~fedrec.coordinator.coordinator.Coordinator` is the
coordinator's I/O: the run's exchange, its signing identity, the public HE context, the roster and who is gone.
The Prefect flow runs the two halves (:func:`fit_round`, :func:`evaluate_round`) as its ``round-r`` and
``evaluate-round-r`` tasks; :func:`run_round` is their composition.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from fedrec.coordinator import robust
from fedrec.coordinator.coordinator import Collected, Coordinator
from fedrec.coordinator.report import RoundRecord
from fedrec.coordinator.state import RunState
from fedrec.core.errors import FederationError

log = logging.getLogger(__name__)


def fit_round(state: RunState, coord: Coordinator, server_round: int, evaluate: bool) -> tuple[RunState, RoundRecord]:
    """Round ``server_round`` up to the new global model (``evaluate``: the instructions ask for metric sums)."""
    if server_round != state.round + 1:
        raise FederationError(f"round {server_round} cannot follow round {state.round}")
    start = time.perf_counter()
    coord.state = state
    silos = coord.start_round(server_round, evaluate)
    groups = coord.groups[server_round]  # federation.groups: one secure sum per group (one group: every silo)
    mask_sets = [coord.fix_mask_set(server_round, members, g) for g, members in enumerate(groups)]
    parts = [coord.collect_updates(server_round, mask_sets[g], members, g) for g, members in enumerate(groups)]
    collected = Collected([u for c in parts for u in c.updates], {s: r for c in parts for s, r in c.reports.items()},
                          {s: why for c in parts for s, why in c.failures.items()},
                          [s for c in parts for s in c.mask_set])
    # admitted silos no longer around are this round's failures too (dropouts are data)
    collected.failures.update({s: coord.why_gone(s) if s in coord.gone() else f"left out: {state.banned[s]}"
                               for s in coord.admission.silos if s not in silos})
    t_collect = time.perf_counter()
    aggregates = [coord.aggregate(server_round, c.updates, g) for g, c in enumerate(parts)]
    t_aggregate = time.perf_counter()
    if len(groups) == 1:
        opened = [coord.open_sum(server_round, aggregates[0], parts[0].updates)]
    else:  # each group's decryptor works at once (the waits are on the exchange)
        with ThreadPoolExecutor(len(groups)) as pool:
            opened = list(pool.map(lambda g: coord.open_sum(server_round, aggregates[g], parts[g].updates, g),
                                   range(len(groups))))
    t_mean = time.perf_counter()
    failures = collected.failures | {s: why for o in opened for s, why in o.failures.items()}
    fed = coord.cfg.federation
    # every silo of an opened group took part (and evaluates the round); the robust rule may still leave a group's
    # mean out of the model (krum, norm_filter, vetted): ``kept`` names whose updates are in it
    opened_silos = {s for o in opened if o.result is not None for s in o.result.contributors}
    vetting: dict[str, float] = {}
    vetted: list = []  # the group results the vetting's candidates were made of
    if fed.robust_rule == "vetted":  # the silos score each candidate on their validation users first
        result, vetting, vetted = coord.vet(server_round, [o.result for o in opened], sorted(opened_silos))
    else:
        result = robust.combine([o.result for o in opened], fed.robust_rule, fed.norm_filter, fed.outlier_ratio)
    t_vet = time.perf_counter()
    coord.step(server_round, result, failures)
    reports = {s: r for s, r in collected.reports.items() if s in opened_silos}
    kept = sorted(result.contributors) if result is not None else []
    n = sum(r.n_samples for r in reports.values())
    record = RoundRecord(
        round=server_round, task=coord.cfg.task,
        loss=sum(r.loss * r.n_samples for r in reports.values()) / max(n, 1),
        contributors=sorted(reports), failures=failures, attempts=sum(o.attempts for o in opened),
        base_round=state.round if state.base_round < 0 else state.base_round,
        kept=kept if kept != sorted(reports) else [],
        bytes_per_silo={s: r.bytes_sent for s, r in collected.reports.items()},
        seconds_per_silo={s: {"train": r.seconds_train, "encrypt": r.seconds_encrypt}
                          for s, r in collected.reports.items()},
        plaintext_bytes=next(iter(collected.reports.values())).plaintext_bytes if collected.reports else 0,
        seconds={"train": sum(r.seconds_train for r in collected.reports.values()),
                 "train_cpu": sum(r.cpu_train for r in collected.reports.values()),
                 "encrypt": sum(r.seconds_encrypt for r in collected.reports.values()),
                 "wait_updates": t_collect - start, "aggregate": t_aggregate - t_collect,
                 "decrypt": t_mean - t_aggregate, "round": time.perf_counter() - start}
        | ({"vet": t_vet - t_mean} if vetting else {}),
        vetting=vetting,
        vet_groups=[sorted(r.contributors) for r in vetted] if vetting else [],
        groups=[sorted(o.result.contributors) for o in opened if o.result is not None] if len(groups) > 1 else [],
    )
    after = coord.state.replace(history=state.history + (record,))
    if fed.robust_rule in ("outlier", "vetted") and fed.outlier_ban_rounds > 0:  # group testing across rounds
        culprits = robust.repeated_outliers(after.history, fed.outlier_ban_rounds, recent=fed.outlier_ban_recent)
        if fed.robust_rule == "vetted" and fed.vet_ban_z > 0:  # and the harm each silo's presence did, estimated
            culprits |= robust.harmful_silos(after.history, fed.vet_drop, fed.vet_ban_z, fed.outlier_ban_rounds)
        culprits = {s: why for s, why in culprits.items() if s not in after.banned}
        if culprits:
            log.warning("round %d: left out from now on: %s", server_round, "; ".join(
                f"silo {s} ({why})" for s, why in culprits.items()))
            after = after.replace(banned={**after.banned, **{s: f"round {server_round}: {why}"
                                                              for s, why in culprits.items()}})
    coord.state = after
    return after, record


def evaluate_round(state: RunState, coord: Coordinator, record: RoundRecord) -> tuple[RunState, RoundRecord]:
    """The silos' metric sums for round ``record.round``'s global model; the wait counts towards the round's time.
    Returns the state with the evaluated record in place of the plain one."""
    if not state.history or state.history[-1].round != record.round:
        raise FederationError(f"round {record.round} is not the last round of this state (round {state.round})")
    start = time.perf_counter()
    reports, _ = coord.collect_metrics(record.round, record.contributors)
    evaluated = record.with_evaluation(reports, coord.cfg.evaluation.k)
    fed = coord.cfg.federation
    if fed.guard_drop > 0:  # the silos' guard: more than guard_quorum of them refuse -> the round is rolled back
        refused = sorted(r.silo_id for r in reports if r.refuse)
        rolled = bool(reports) and len(refused) > fed.guard_quorum * len(reports)
        if rolled:
            coord.roll_back(record.base_round)
            state = state.replace(global_state=coord.state.global_state, base_round=record.base_round)
        evaluated = dataclasses.replace(evaluated, refused=refused, rolled_back=rolled)
    spent = time.perf_counter() - start
    evaluated = dataclasses.replace(evaluated, seconds=evaluated.seconds | {
        "evaluate": spent, "round": evaluated.seconds["round"] + spent})
    after = state.replace(history=state.history[:-1] + (evaluated,))
    coord.state = after
    return after, evaluated


def run_round(state: RunState, coord: Coordinator, server_round: int, evaluate: bool) -> tuple[RunState, RoundRecord]:
    """One whole round: :func:`fit_round`, then (``evaluate``) :func:`evaluate_round`."""
    state, record = fit_round(state, coord, server_round, evaluate)
    if evaluate:
        state, record = evaluate_round(state, coord, record)
    return state, record
