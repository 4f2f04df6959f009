"""Pure aggregation math (no framework, no crypto): flatten/unflatten and weighted averages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def layout_size(layout: tuple[TensorSpec, ...]) -> int:
    return sum(t.size for t in layout)


def layout_of(state: dict[str, torch.Tensor]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(name, tuple(t.shape)) for name, t in state.items())


def flatten_state(state: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([t.detach().cpu().double().reshape(-1).numpy() for t in state.values()])


def unflatten_state(flat: np.ndarray, layout: tuple[TensorSpec, ...]) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for spec in layout:
        out[spec.name] = torch.tensor(np.asarray(flat[offset:offset + spec.size]), dtype=torch.float32).reshape(spec.shape)
        offset += spec.size
    return out


def weighted_average(vectors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """sum_k w_k x_k / sum_k w_k (the plaintext reference for the encrypted path)."""
    total = float(sum(weights))
    return sum(w * v for w, v in zip(weights, vectors)) / total


def state_delta(new: dict[str, torch.Tensor], old: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: new[k] - old[k] for k in old}
