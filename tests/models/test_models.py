import numpy as np
import pytest
import torch

from raysim.models import MODELS, FlatModel, ParamLayout, build_model, count_flops, count_params, init_params


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("cnn-small", (1, 28, 28), (1 * 16 * 9 + 16) + (16 * 32 * 9 + 32) + (32 * 7 * 7 * 10 + 10)),
        ("cnn-mcmahan", (1, 28, 28), (25 * 32 + 32) + (25 * 32 * 64 + 64) + (64 * 7 * 7 * 512 + 512) + 5130),
        ("cnn-cifar", (3, 32, 32), 550_570),  # the genetic notebook's Keras summary
        ("mlp", (60,), 60 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10),
    ],
)
def test_parameter_counts(name, shape, expected):
    assert count_params(build_model(name, shape, 10)) == expected


def test_unknown_model_and_wrong_input_are_clear():
    with pytest.raises(ValueError, match="valid names: cnn-bn, cnn-cifar, cnn-mcmahan, cnn-small, mlp"):
        build_model("resnet", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="use model 'mlp'"):
        build_model("cnn-small", (60,), 10)


def test_flat_model_round_trip_and_gradient_views():
    fm = FlatModel(build_model("cnn-small", (1, 28, 28), 10))
    v = np.arange(fm.layout.size, dtype=np.float32) / fm.layout.size
    fm.load(v)
    np.testing.assert_array_equal(fm.read(), v)
    # module parameters are views into the flat buffer, in layout order
    first = next(fm.module.parameters())
    assert first.data_ptr() == fm.flat.data_ptr()
    fm.module(torch.randn(2, 1, 28, 28)).sum().backward()
    assert fm.grads_are_views() and fm.grad.abs().sum() > 0
    fm.zero_grad()
    assert fm.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="model needs"):
        fm.load(np.zeros(3, np.float32))


def test_layout_blocks_group_weight_and_bias():
    layout = ParamLayout.of(build_model("cnn-small", (1, 28, 28), 10))
    assert [(name, s.stop - s.start) for name, s in layout.module_blocks()] == [
        ("0", 160),
        ("3", 4640),
        ("7", 15690),
    ]
    assert layout.size == 20490


def test_init_params_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = init_params("cnn-small", (1, 28, 28), 10, seed=1)
    after = torch.rand(1)
    assert torch.equal(before, after)
    np.testing.assert_array_equal(a, init_params("cnn-small", (1, 28, 28), 10, seed=1))
    assert not np.array_equal(a, init_params("cnn-small", (1, 28, 28), 10, seed=2))


def test_flops_counter_counts_the_small_cnn():
    # conv1: 2*9*1*16*28*28, conv2: 2*9*16*32*14*14, fc: 2*1568*10
    expected = 2 * 9 * 16 * 784 + 2 * 9 * 16 * 32 * 196 + 2 * 1568 * 10
    assert count_flops(build_model("cnn-small", (1, 28, 28), 10), (1, 28, 28)) == expected
    assert set(MODELS) == {"mlp", "cnn-small", "cnn-bn", "cnn-mcmahan", "cnn-cifar", "vit-tiny"}


def test_model_structure_reports_buffers_and_names_for_config_checks():
    from torch import nn

    from raysim.models.registry import model_structure

    for name in MODELS:
        layout, has_buffers = model_structure(name)
        module = build_model(name, (1, 28, 28), 10) if name != "mlp" else build_model(name, (60,), 10)
        assert layout.names == tuple(n for n, _ in module.named_parameters())
        assert has_buffers == any(isinstance(m, nn.BatchNorm2d) for m in module.modules()), name
    assert model_structure("cnn-bn")[1] and not model_structure("vit-tiny")[1]
