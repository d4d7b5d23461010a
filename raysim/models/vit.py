"""A small vision transformer (``vit-tiny``) whose self-attention Q/K/V projections are explicit
``nn.Linear`` layers, so that pFedHT (paper 003, eq. 11-13) can personalise exactly them.

Architecture (Dosovitskiy et al. 2021, pre-norm): the image is cut into a 4x4 grid of
non-overlapping patches (patch side = H/4: 7 for 28x28 Fashion-MNIST/MNIST, 8 for 32x32 CIFAR,
2 for 8x8 digits), each patch is linearly embedded (a strided convolution), a learned class
token and learned position embeddings are added, then ``depth`` blocks of

    h = h + proj(Attention(Q, K, V)),  Q = LN(h) W_Q, K = LN(h) W_K, V = LN(h) W_V   (eq. 12)
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V                                   (eq. 13)
    h = h + MLP(LN(h))

and a classification head on the final-normalised class token. The module is an
``nn.Sequential`` (embedding, blocks, pooling, head), so ``Trainer.embed`` (the penultimate
activation, ``module[:-1]``) works on it as on the CNNs.

Parameter names in the flat layout: ``{block}.attn.q.weight``, ``.q.bias``, ``.k.*``, ``.v.*``
are the *personal* parameters (``personal_mask``); every other parameter is *shared*.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from torch import nn

from raysim.models.flat import ParamLayout

GRID = 4  # patches per side: 16 patches + 1 class token
# the names of the Q/K/V projection parameters (eq. 11: W^i = [W_Q^i, W_K^i, W_V^i])
PERSONAL_NAME = re.compile(r"(^|\.)attn\.(q|k|v)\.(weight|bias)$")


class PatchEmbed(nn.Module):
    """Patches -> tokens, plus the class token and position embeddings: (B, C, H, W) -> (B, T, D)."""

    def __init__(self, channels: int, patch: int, dim: int, num_patches: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)  # (B, P, D)
        cls = self.cls.expand(t.shape[0], -1, -1)
        return torch.cat([cls, t], dim=1) + self.pos


class Attention(nn.Module):
    """Multi-head self-attention with separate Q, K, V projections (eq. 12-13)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"vit: dim={dim} must be a multiple of heads={heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        dh = d // self.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, t, self.heads, dh).transpose(1, 2)  # (B, heads, T, dh)

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dh), dim=-1)  # eq. (13)
        out = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block: attention and an MLP, each with a residual connection."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class ClassToken(nn.Module):
    """The final LayerNorm applied to the class token: (B, T, D) -> (B, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h[:, 0])


def vit(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    dim: int = 32,
    depth: int = 2,
    heads: int = 2,
    mlp_ratio: int = 2,
) -> nn.Module:
    """A vision transformer over a 4x4 patch grid (see the module docstring)."""
    if len(input_shape) != 3:
        raise ValueError(
            f"model 'vit-tiny' needs image input (C, H, W), got input_shape={input_shape}; "
            "use model 'mlp' for vector data such as 'synthetic'"
        )
    c, h, w = input_shape
    if h % GRID or w % GRID:
        raise ValueError(
            f"model 'vit-tiny' cuts images into a {GRID}x{GRID} grid: H and W must be multiples of {GRID}, got {h}x{w}"
        )
    if h != w:
        raise ValueError(f"model 'vit-tiny' needs square images, got {h}x{w}")
    patch = h // GRID
    layers: list[nn.Module] = [PatchEmbed(c, patch, dim, GRID * GRID)]
    layers += [Block(dim, heads, mlp_ratio) for _ in range(depth)]
    layers += [ClassToken(dim), nn.Linear(dim, num_classes)]
    return nn.Sequential(*layers)


def vit_tiny(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """``vit-tiny``: dim 32, 2 blocks, 2 heads, MLP ratio 2 (about 20k parameters)."""
    return vit(input_shape, num_classes)


def is_personal(name: str) -> bool:
    """True for a Q/K/V projection weight or bias (the parameters pFedHT personalises)."""
    return PERSONAL_NAME.search(name) is not None


def personal_mask(layout: ParamLayout) -> np.ndarray:
    """Boolean mask over the flat parameter vector: True on the Q/K/V projections (personal),
    False on every other parameter (shared). Raises ValueError for a model without them."""
    mask = np.zeros(layout.size, dtype=bool)
    for i, name in enumerate(layout.names):
        if is_personal(name):
            mask[layout.slice(i)] = True
    if not mask.any():
        raise ValueError(
            "this model has no self-attention Q/K/V projections (parameters named '*.attn.q|k|v.*'); "
            "use model 'vit-tiny'"
        )
    return mask


def personal_blocks(layout: ParamLayout) -> list[tuple[str, tuple[int, ...], slice]]:
    """The personal parameters in layout order: (name, shape, slice of the flat vector)."""
    return [
        (name, layout.shapes[i], layout.slice(i)) for i, name in enumerate(layout.names) if is_personal(name)
    ]
