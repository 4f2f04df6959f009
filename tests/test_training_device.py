"""fedrec.training.for_device: the GPU's batch size and learning rate replace the CPU's only on CUDA."""

from __future__ import annotations

import torch

from fedrec.config import from_dict
from fedrec.training import for_device


def test_cuda_gets_its_batch_and_lr_and_the_cpu_keeps_its_own():
    cfg = from_dict({"training": {"batch_size": 256, "lr": 0.001}})

    on_cpu = for_device(cfg, torch.device("cpu"))
    on_gpu = for_device(cfg, torch.device("cuda", 0))
    pinned = for_device(cfg.replace(**{"training.cuda_batch_size": 0}), torch.device("cuda"))

    assert (on_cpu.training.batch_size, on_cpu.training.lr) == (256, 0.001)
    assert (on_gpu.training.batch_size, on_gpu.training.lr) == (8192, 0.006)
    assert (pinned.training.batch_size, pinned.training.lr) == (256, 0.001)
