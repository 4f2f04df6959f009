"""What SecAgg double masking (issue #17) costs and what it withstands, on ML-100K region silos (11, NeuMF defaults).

1. ``no_dropout`` and ``one_dropout``: two whole ``fedrec run`` (CKKS, masks on, R rounds, evaluation after the last
   round only), measured like ``make bench``'s fedrec_he row (bench/harness.py). In ``one_dropout`` an outsider with
   write access to the exchange pre-writes one silo's report for every round (the audit's attack): that silo's update
   arrives but is dropped, the survivors reveal its mask key, and its self-mask stays on. Bytes per silo per round:
   the update (as before) plus the new round mask keys (sealed shares) and reveals, read off the exchange.
2. ``differencing``: the audit's attack on one such round, in one process with real agents (tests/roundkit.py): the
   key holder decrypts the sum with the dropped silo's update and the survivors' sum, removes the dropped silo's
   pair masks with its revealed key, and correlates what is left with that silo's true update.

    .venv/bin/python bench/secagg_cost.py [--rounds 10] [--seed 0]     -> results/secagg.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from benchkit import (
    RESULTS,
    ROOT,
    ROW_TIMEOUT_S,
    Workspace,
    init_store,
    machine,
    provision_data,
    run_fedrec_summary,
    run_figures,
)

WORK = RESULTS / "tmp" / "secagg"


def forge_reports(exchange: Path, silo: str, rounds: int) -> None:
    """Pre-write ``silo``'s report of every round, signed by an outsider's fresh key."""
    from fedrec.wire.exchange import fit_report_key
    from fedrec.wire.messages import FitReport
    from fedrec.wire.trust import Identity, seal_envelope

    mallory = Identity.generate(silo)
    for r in range(1, rounds + 1):
        key = fit_report_key(r, silo)
        path = exchange / key
        path.parent.mkdir(parents=True, exist_ok=True)
        body = FitReport(silo_id=silo, round=r, n_samples=1, loss=0.0, seconds_train=0.0, seconds_encrypt=0.0,
                         bytes_sent=0, plaintext_bytes=0).to_json()
        path.write_bytes(seal_envelope(body, run_id=exchange.name, key=key, author=mallory))


def protocol_bytes(exchange: Path) -> dict[str, float]:
    """Mean bytes per silo per round of the round mask keys and of the reveals on a run's exchange."""
    out = {}
    for kind in ("masks", "reveals"):
        sizes = [p.stat().st_size for p in exchange.glob(f"round-*/{kind}/*.json")]
        rounds = len(list(exchange.glob("round-*")))
        silos = len({p.name for p in exchange.glob(f"round-*/{kind}/*.json")})
        out[f"{kind}_bytes_per_silo_round"] = sum(sizes) / max(rounds * silos, 1)
    return out


def run_row(name: str, rounds: int, ws: Workspace, sets: list[str], drop: str | None) -> dict:
    row_dir = WORK / name
    state = row_dir / "state"
    run_id = f"secagg-{name}"
    if drop:
        forge_reports(state / "exchange" / run_id, drop, rounds)
    summary, measured = run_fedrec_summary(rounds, True, ws.with_state(state), sets, row_dir, ROW_TIMEOUT_S,
                                           extra_args=["--run-id", run_id])
    figures = run_figures(summary, measured)
    exchange = state / "exchange" / run_id
    return {"name": name, "dropped_silo": drop, **figures, **protocol_bytes(exchange),
            "seconds_per_phase": summary["seconds_per_phase"],
            "failures": {r: sorted(f) for r, f in summary.get("failures", {}).items()},
            "contributors_per_round": [len(h["contributors"]) for h in summary["history"]],
            "test_hr@10": summary.get("hr@10"), "test_ndcg@10": summary.get("ndcg@10")}


def differencing(ws: Workspace, sets: list[str], drop: str) -> dict:
    """The audit's differencing attack on one round with a forced dropout, real agents in one process."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fedrec.core.config import load_config
    from fedrec.core.state import flatten_state
    from fedrec.crypto import masking, secagg
    from fedrec.protocol.reads import gather_masks, load_global
    from fedrec.silo.agent import SiloAgent
    from fedrec.wire.exchange import unmask_key, update_key
    from fedrec.wire.messages import Unmask
    from fedrec.wire.payload import EncryptedUpdate
    from fedrec.wire.trust import peek_envelope

    import roundkit

    overrides = dict(s.split("=", 1) for s in sets) | {
        "data.work_dir": str(ws.data), "federation.state_dir": str(WORK / "attack" / "state"),
        "federation.exchange_url": str(WORK / "attack" / "state" / "exchange"),
        "tracking.uri": f"sqlite:///{ws.mlflow_db}"}
    cfg = load_config(str(ROOT / "params.yaml"), overrides)
    silos = sorted(p.name for p in (Path(cfg.data.work_dir) / "silos").iterdir() if p.is_dir())

    class KeepsItsSeed(SiloAgent):
        def announce(self, ins):
            super().announce(ins)
            self.kept_seed = self._masks.secrets.seed

    coord, agents = roundkit.opened(cfg, "attack", tuple(silos), agent_cls={drop: KeepsItsSeed})
    start = flatten_state(load_global(coord.exchange, 0))
    forge_reports(Path(cfg.federation.exchange_url) / "attack", drop, 1)
    records, errors = roundkit.run_rounds(coord, agents, 1)
    exchange, holder = coord.exchange, agents[coord.admission.key_holder]
    updates = {s: EncryptedUpdate.from_bytes(peek_envelope(exchange.get(update_key(1, s)))[1]) for s in silos}
    slots = masking.n_slots(sum(int(np.prod(t.shape)) for t in updates[drop].layout), cfg.crypto.pack)
    bits, modulus = cfg.crypto.mask_bits, np.uint64(2 ** cfg.crypto.mask_bits - 1)

    def residues(names):
        total = holder.codec.decrypt(holder.codec.add([list(updates[s].chunks) for s in names]), slots)
        return masking.residues(total, len(names), bits)

    survivors = [s for s in silos if s != drop]
    unmask = Unmask.from_json(peek_envelope(exchange.get(unmask_key(1)))[1])
    masks = gather_masks(exchange, coord.roster, "attack", unmask, secagg.share_points(silos), time.monotonic() + 30,
                         0.01)
    left = (residues(silos) - residues(survivors)
            - secagg.pairwise_mask(masks.dropped[drop][0], drop, masks.survivors, masks.info, slots, bits)) & modulus
    victim = agents[drop]
    truth = masking.pack_lanes(masking.quantize_share(flatten_state(victim.model.shared_state()) - start,
                                                      victim.data.n_train, updates[drop].total_samples,
                                                      cfg.crypto.quantization_bits), cfg.crypto.pack,
                               cfg.crypto.lane_bits)
    seen = masking.center(left, bits)
    exact = masking.center((left - masking.keystream(victim.kept_seed, slots, bits)) & modulus, bits)
    return {"silos": len(silos), "dropped_silo": drop, "slots": slots, "agent_errors": sorted(errors),
            "round_contributors": records[0].contributors, "corr_with_true_update": float(np.corrcoef(seen, truth)[0, 1]),
            "std_of_what_is_left_over_2^38": float(np.std(seen) / 2 ** bits),
            "control_exact_if_the_self_mask_were_known": bool(np.array_equal(exact, truth))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drop", default="", help="the silo made a dropout (default: the second silo by name)")
    ap.add_argument("--skip-runs", action="store_true", help="only the differencing attack")
    args = ap.parse_args(argv)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    ws = Workspace.under(WORK)
    sets = ["data.source=movielens", "partition.scheme=region", "model.name=neumf", f"federation.seed={args.seed}",
            f"partition.seed={args.seed}"]
    init_store(ws.mlflow_db, WORK / "provision" / "mlflow")
    provision_data(ws, sets, WORK / "provision")
    drop = args.drop or sorted(p.name for p in (ws.data / "silos").iterdir() if p.is_dir())[1]
    result = {"command": "python bench/secagg_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "rounds": args.rounds, "rows": []}
    if not args.skip_runs:
        for name, dropped in (("no_dropout", None), ("one_dropout", drop)):
            print(f"[secagg] {name}", flush=True)
            result["rows"].append(run_row(name, args.rounds, ws, sets, dropped))
            print(json.dumps(result["rows"][-1], indent=1), flush=True)
    print("[secagg] differencing attack", flush=True)
    result["differencing"] = differencing(ws, sets, drop)
    print(json.dumps(result["differencing"], indent=1), flush=True)
    out = RESULTS / "secagg.json"
    out.write_text(json.dumps(result, indent=2))
    for row in result["rows"]:
        print(f"{row['name']}: median round {row['median_round_s']:.2f} s, update {row['bytes_per_silo_round']:.0f} B"
              f" + mask keys {row['masks_bytes_per_silo_round']:.0f} B + reveals {row['reveals_bytes_per_silo_round']:.0f}"
              f" B per silo per round, contributors {statistics.mean(row['contributors_per_round']):.1f}")
    print(f"[secagg] wrote {out}")
    shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
