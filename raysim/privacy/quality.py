"""Reconstruction quality: PSNR and SSIM from scikit-image, and batch matching.

Images are float arrays in ``[0, 1]`` shaped ``(H, W)`` or ``(C, H, W)``; reconstructions are
clipped to ``[0, 1]`` before scoring (``data_range = 1``). PSNR is ``inf`` for identical images.
"""

from __future__ import annotations

import numpy as np


def image_quality(original: np.ndarray, reconstruction: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, SSIM) of ``reconstruction`` against ``original`` (scikit-image's metrics)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a = np.asarray(original, dtype=np.float64)
    b = np.clip(np.asarray(reconstruction, dtype=np.float64), 0.0, 1.0)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 3 and a.shape[0] == 1:
        a, b = a[0], b[0]
    channel_axis = 0 if a.ndim == 3 else None
    spatial = a.shape[1:] if a.ndim == 3 else a.shape
    win = min(7, *spatial)
    win = win if win % 2 == 1 else win - 1
    if win < 3:
        raise ValueError(f"images of spatial size {spatial} are too small for SSIM")
    with np.errstate(divide="ignore"):
        psnr = float(peak_signal_noise_ratio(a, b, data_range=1.0))
    ssim = float(structural_similarity(a, b, data_range=1.0, win_size=win, channel_axis=channel_axis))
    return psnr, ssim


def match_batch(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """For a batch, the permutation ``p`` pairing original ``k`` with reconstruction ``p[k]`` that
    maximises total PSNR (a reconstructed batch comes back in any order)."""
    from scipy.optimize import linear_sum_assignment

    n = len(originals)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    cost = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            cost[i, j] = -min(image_quality(originals[i], reconstructions[j])[0], 200.0)
    rows, cols = linear_sum_assignment(cost)
    return cols[np.argsort(rows)].astype(np.int64)
