"""fedrec.core.training.for_device: the GPU's batch size and learning rate replace the CPU's only on CUDA."""

from __future__ import annotations

import torch

from fedrec.core.config import from_dict
from fedrec.core.training import for_device


def test_cuda_gets_its_batch_and_lr_and_the_cpu_keeps_its_own():
    cfg = from_dict({"training": {"batch_size": 256, "lr": 0.001, "n_negatives": 4}})
    pooled = 98_114  # ML-100K's pooled training rows: 490,570 samples an epoch, 60 batches of 8192

    on_cpu = for_device(cfg, torch.device("cpu"), pooled)
    on_gpu = for_device(cfg, torch.device("cuda", 0), pooled)
    small_silo = for_device(cfg, torch.device("cuda"), 9_000)  # 45,000 samples: 5 batches of 8192
    pinned = for_device(cfg.replace(**{"training.cuda_batch_size": 0}), torch.device("cuda"), pooled)

    assert (on_cpu.training.batch_size, on_cpu.training.lr) == (256, 0.001)
    assert (on_gpu.training.batch_size, on_gpu.training.lr) == (8192, 0.006)
    assert (small_silo.training.batch_size, small_silo.training.lr) == (256, 0.001)
    assert (pinned.training.batch_size, pinned.training.lr) == (256, 0.001)
