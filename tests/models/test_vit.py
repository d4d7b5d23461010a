"""vit-tiny: shapes, the attention of eq. (13), and the personal (Q/K/V) / shared split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysim.models import MODELS, FlatModel, ParamLayout, build_model, count_params, init_params
from raysim.models.vit import Attention, is_personal, personal_blocks, personal_mask

DIM, DEPTH = 32, 2  # vit-tiny's defaults
QKV_PER_BLOCK = 3 * (DIM * DIM + DIM)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_forward_shapes_and_penultimate_features(shape):
    model = build_model("vit-tiny", shape, 10)
    x = torch.randn(5, *shape)
    assert model(x).shape == (5, 10)
    assert model[:-1](x).shape == (5, DIM)  # what Trainer.embed reads


def test_parameter_count_by_hand():
    patch = 49 * DIM + DIM + DIM + 17 * DIM  # 7x7 patch conv, class token, 16 + 1 positions
    block = 2 * 2 * DIM + 4 * (DIM * DIM + DIM) + (DIM * 2 * DIM + 2 * DIM) + (2 * DIM * DIM + DIM)
    assert (
        count_params(build_model("vit-tiny", (1, 28, 28), 10))
        == patch + DEPTH * block + 2 * DIM + DIM * 10 + 10
    )
    assert "vit-tiny" in MODELS


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match="use model 'mlp'"):
        build_model("vit-tiny", (60,), 10)
    with pytest.raises(ValueError, match="multiples of 4"):
        build_model("vit-tiny", (1, 30, 30), 10)


def test_attention_is_softmax_qk_over_sqrt_d_times_v():
    torch.manual_seed(0)
    att = Attention(8, heads=2)
    h = torch.randn(3, 5, 8)
    q, k, v = (t.view(3, 5, 2, 4).transpose(1, 2) for t in (att.q(h), att.k(h), att.v(h)))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(3, 5, 8)
    torch.testing.assert_close(att(h), att.proj(ref))


def test_mask_covers_exactly_the_qkv_weights_and_biases():
    layout = ParamLayout.of(build_model("vit-tiny", (1, 28, 28), 10))
    mask = personal_mask(layout)
    assert mask.dtype == bool and mask.shape == (layout.size,)
    assert mask.sum() == DEPTH * QKV_PER_BLOCK
    expected = {f"{b}.attn.{p}.{w}" for b in range(1, DEPTH + 1) for p in "qkv" for w in ("weight", "bias")}
    assert {n for n in layout.names if is_personal(n)} == expected
    assert [name for name, _, _ in personal_blocks(layout)] == [n for n in layout.names if n in expected]
    # load the mask itself as parameters: exactly the Q/K/V tensors are all ones
    fm = FlatModel(build_model("vit-tiny", (1, 28, 28), 10))
    fm.load(mask.astype(np.float32))
    for name, p in fm.module.named_parameters():
        assert bool((p == 1).all()) == (name in expected) and bool((p == 0).all()) == (name not in expected)
    # the attention output projection, norms and head stay shared
    assert not is_personal("1.attn.proj.weight") and not is_personal("4.weight")


def test_models_without_qkv_have_no_mask():
    with pytest.raises(ValueError, match="use model 'vit-tiny'"):
        personal_mask(ParamLayout.of(build_model("cnn-small", (1, 28, 28), 10)))


def test_seeded_init_is_reproducible():
    a = init_params("vit-tiny", (1, 8, 8), 10, seed=4)
    b = init_params("vit-tiny", (1, 8, 8), 10, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, init_params("vit-tiny", (1, 8, 8), 10, seed=5))
