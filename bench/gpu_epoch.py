"""Seconds per training epoch and quality, by device and batch size: the project's centralized model (pooled silos'
splits, the same code as `fedrec centralized`), for the GPU-versus-CPU comparison of BENCHMARKS.md.

    python bench/gpu_epoch.py --data data --configs cpu:256:0.001 cuda:4096:0.004 --out results/gpu_epoch.json

Each config is device:batch_size:lr, or a device alone (auto | cpu | cuda): the project's defaults, i.e. on a GPU
the batch and learning rate `training.device: auto` picks by itself (fedrec.core.training.for_device); every run trains up to --epochs epochs with early stopping on the validation
item (patience 5) and reports the mean training seconds per epoch (evaluation excluded), the selected epoch and
the test metrics of that epoch. Needs only torch, numpy, pandas and pyyaml (no Prefect, MLflow or GE), so it runs
on a bare GPU machine with the data directory (data/split, data/catalogue) carried along.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pooled(data_dir: Path):
    import numpy as np
    import pandas as pd

    from fedrec.core.data.split import Split
    from fedrec.core.training import SiloData

    splits = [Split.load(p) for p in sorted((data_dir / "split").iterdir()) if (p / "holdout.parquet").exists()]
    union = Split(pd.concat([s.train for s in splits], ignore_index=True),
                  pd.concat([s.holdout for s in splits], ignore_index=True))
    catalogue = pd.read_parquet(data_dir / "catalogue" / "items.parquet")["item_id"].to_numpy(np.int64)
    return SiloData.from_split(union, catalogue), len(splits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="holds split/<silo>/ and catalogue/")
    parser.add_argument("--configs", nargs="+", default=["cpu:256:0.001"], help="device:batch_size:lr ...")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--model", default="neumf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_epoch.json")
    args = parser.parse_args()

    import torch

    from fedrec.core.config import from_dict
    from fedrec.core.training import for_device, resolve_device, train_centralized

    data, n_silos = pooled(args.data)
    rows = []
    for spec in args.configs:
        device, *pinned = spec.split(":")
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"{spec}: no CUDA device here, skipped", flush=True)
            continue
        training = {"device": device, "epochs": args.epochs, "seeds": [args.seed], "patience": 5}
        if pinned:  # this batch and lr, also on CUDA
            training |= {"batch_size": int(pinned[0]), "lr": float(pinned[1]), "cuda_batch_size": 0}
        cfg = from_dict({"model": {"name": args.model}, "training": training})
        chosen = for_device(cfg, resolve_device(device), data.n_train).training  # what training will use
        start = time.perf_counter()
        result = train_centralized(data, cfg, args.seed)
        row = {"config": spec, "device": device, "batch_size": chosen.batch_size, "lr": chosen.lr,
               "seconds_per_epoch": result.seconds_per_epoch, "epochs_run": len(result.history),
               "best_epoch": result.best_epoch, "wall_seconds": time.perf_counter() - start,
               "val": result.val, "test": result.test}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("config", "seconds_per_epoch", "best_epoch")}
                         | {f"test_{k}": round(v, 4) for k, v in result.test.items()}), flush=True)
    report = {"model": args.model, "seed": args.seed, "silos_pooled": n_silos, "users": data.n_users,
              "train_interactions": data.n_train, "torch": torch.__version__, "python": platform.python_version(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "cpu_threads": torch.get_num_threads(), "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
