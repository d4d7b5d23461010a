"""Pure aggregation functions (no Ray, no torch), tested on literal arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raysim.algorithms.base import LinearSum


def weighted_mean(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_i w_i v_i / sum_i w_i in float64, returned as float32 (FedAvg's eq. in McMahan 2017)."""
    if len(vectors) == 0:
        raise ValueError("weighted_mean of no vectors")
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError(f"weights must sum to a positive number, got {w.tolist()}")
    acc = np.zeros_like(vectors[0], dtype=np.float64)
    for wi, v in zip(w, vectors, strict=True):
        acc += wi * v
    return (acc / w.sum()).astype(np.float32)


def mean_delta(total: LinearSum) -> np.ndarray:
    """The example-weighted mean update of a summed cohort, float64."""
    if total.num_examples <= 0:
        raise ValueError("cannot average a cohort with no examples")
    return total.weighted_delta / total.num_examples


def fedavg_step(params: np.ndarray, total: LinearSum | None, central_lr: float = 1.0) -> np.ndarray:
    """x <- x + eta_g * sum_i n_i delta_i / sum_i n_i. No results: x unchanged."""
    if total is None or total.num_clients == 0:
        return params
    return (params.astype(np.float64) + central_lr * mean_delta(total)).astype(np.float32)


def scaffold_control_step(
    control: np.ndarray, delta_control_sum: np.ndarray, num_clients_total: int
) -> np.ndarray:
    """SCAFFOLD server control update: c <- c + (1/N) sum_{i in S} (c_i+ - c_i) (Karimireddy 2020, Alg. 1)."""
    return (control.astype(np.float64) + delta_control_sum / num_clients_total).astype(np.float32)
