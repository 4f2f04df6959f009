"""A whole federated ML-100K run with the silos' training on the GPU, against the same run on the CPU (issue #22).

For each device (default: cuda, then cpu) one `fedrec run` (11 region silos, CKKS + masks, the defaults of
params.yaml; `training.device` set per row, so a silo large enough picks the GPU batch by itself:
fedrec.core.training.for_device) with --rounds rounds; reports the median round, the mean seconds of each phase
(train, encrypt, wait for updates, aggregate, decrypt, evaluate) and HR@10 / NDCG@10 at the selected round. A device
that is not there is reported as such, never measured. Writes results/gpu_federated.json.

    FEDREC_DATA_DIR=../shared/datasets/ml-100k .venv/bin/python bench/gpu_federated.py [--rounds 10] [--devices cuda,cpu]

On a lent GPU machine: `make install` there (torch==2.13.0 is the CUDA build outside this CPU machine), carry the
data directory, run this script once, and copy results/gpu_federated.json back.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from fedrec.core import env


def main() -> None:
    env.apply_defaults()
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--devices", default="cuda,cpu")
    ap.add_argument("--out", default="results/gpu_federated.json")
    args = ap.parse_args()
    import torch

    from fedrec.flows.federated import run_demo

    rows = {}
    for device in [d for d in args.devices.split(",") if d]:
        if device.startswith("cuda") and not torch.cuda.is_available():
            rows[device] = {"measured": False, "why": "no CUDA device on this machine"}
            print(json.dumps({"device": device, **rows[device]}), flush=True)
            continue
        summary = run_demo(params_path=args.params, overrides={"training.device": device,
                                                               "federation.rounds": args.rounds})
        rows[device] = {"measured": True, "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                        "seconds_per_round_median": summary["seconds_per_round_median"],
                        "seconds_per_phase": summary["seconds_per_phase"], "selected_round": summary["selected_round"],
                        "hr@10": summary["hr@10"], "ndcg@10": summary["ndcg@10"], "run_id": summary["run_id"]}
        print(json.dumps({"device": device, **rows[device]}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": platform.node(), "rounds": args.rounds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
