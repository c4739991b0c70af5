import math

import pytest
import torch
import torch.nn as nn

import quant
from conftest import with_realistic_bn
from nets import ConvBNReLUConv, Zoo


def test_asymmetric_grid_values_and_clamping():
    scale, zero_point, q_min, q_max = quant.quantization_parameters(torch.tensor(-1.0), torch.tensor(3.0), bits=8)
    assert (q_min, q_max) == (0, 255)
    assert scale.item() == pytest.approx(4.0 / 255)
    x = torch.linspace(-3, 5, 1001)
    x_hat = quant.quantize_to_grid(x, scale, zero_point, q_min, q_max)
    q = torch.round(x_hat / scale) + zero_point
    assert torch.allclose(x_hat, (q - zero_point) * scale, atol=1e-6)      # on the grid
    assert q.min() == 0 and q.max() == 255 and len(q.unique()) == 256       # clamped to it
    inside = (x > -0.99) & (x < 2.99)
    assert (x_hat - x)[inside].abs().max() <= scale / 2 + 1e-6             # round to nearest


@pytest.mark.parametrize("symmetric", [False, True])
def test_zero_is_exactly_representable(symmetric):
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        lo, hi = -torch.rand(1, generator=gen) * 3, torch.rand(1, generator=gen) * 7
        params = quant.quantization_parameters(lo, hi, bits=8, symmetric=symmetric)
        assert quant.quantize_to_grid(torch.zeros(1), *params).item() == 0.0


def test_symmetric_grids():
    scale, zero_point, q_min, q_max = quant.quantization_parameters(torch.tensor(-2.0), torch.tensor(1.0), 8, symmetric=True)
    assert (q_min, q_max, zero_point.item()) == (-128, 127, 0) and scale.item() == pytest.approx(2.0 / 127)
    _, zero_point, q_min, q_max = quant.quantization_parameters(torch.tensor(0.0), torch.tensor(6.0), 8, symmetric=True)
    assert (q_min, q_max, zero_point.item()) == (0, 255, 0)  # nonnegative tensors use the unsigned grid


def test_range_is_widened_to_contain_zero():
    scale, zero_point, q_min, q_max = quant.quantization_parameters(torch.tensor(2.0), torch.tensor(4.0), 8)
    assert zero_point.item() == 0 and scale.item() == pytest.approx(4.0 / 255)


def test_per_tensor_means_one_scale_per_tensor():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    with torch.no_grad():
        conv.weight.mul_(torch.logspace(-3, 0, 32).view(-1, 1, 1, 1))
    per_tensor = quant.quantized_layer(conv, w_bits=8, per_channel=False)
    per_channel = quant.quantized_layer(conv, w_bits=8, per_channel=True)
    assert per_tensor.weight_scale.numel() == 1 and per_channel.weight_scale.numel() == 32
    assert len(per_tensor.weight.unique()) <= 256
    assert len(per_channel.weight.unique()) > 256
    assert all(len(w.unique()) <= 256 for w in per_channel.weight)
    assert torch.equal(per_tensor.float_weight, conv.weight)
    # the small channels of a per-tensor weight are mostly rounded to zero: it really is per tensor
    assert (per_tensor.weight[0] == 0).float().mean() > 0.5 and (per_channel.weight[0] == 0).float().mean() < 0.1


def test_weights_are_quantized_once():
    layer = quant.quantized_layer(nn.Linear(8, 4), w_bits=4)
    weight = layer.weight.clone()
    layer(torch.randn(3, 8))
    assert torch.equal(layer.weight, weight) and len(layer.weight.unique()) <= 16


def test_bias_bits():
    linear = nn.Linear(8, 64)
    with torch.no_grad():
        linear.bias.copy_(torch.linspace(-1, 1, 64))
    assert torch.equal(quant.quantized_layer(linear, bias_bits=32).bias, linear.bias)
    assert len(quant.quantized_layer(linear, bias_bits=4).bias.unique()) <= 16


def test_activations_quantized_where_integer_kernels_read_them():
    gm = quant.fold_batchnorm(with_realistic_bn(Zoo(), (4, 3, 32, 32)))
    qm = quant.quantize(gm, input_range=(-3.0, 3.0))
    quantized = set(qm.meta["act_quantizers"])
    assert "x" in quantized                              # the network input
    assert "relu_2" in quantized                         # conv -> BN -> ReLU: after the fused ReLU
    assert "add" not in quantized and "relu_5" in quantized  # the add, after its ReLU
    assert "cat" in quantized                            # concat output
    assert "max_pool2d" in quantized and "flatten" not in quantized  # pools, but nothing already on a grid
    # every layer reads a quantized tensor (possibly through flatten)
    for node in qm.graph.nodes:
        if node.op == "call_module" and isinstance(qm.get_submodule(node.target), quant.QuantLayer):
            source = node.args[0]
            while source.op == "call_function" and source.target is torch.flatten:
                source = source.args[0]
            assert isinstance(qm.get_submodule(source.target), quant.QuantAct), node.target
    # the logits stay in float
    output = next(n for n in qm.graph.nodes if n.op == "output")
    assert not isinstance(qm.get_submodule(output.args[0].target), quant.QuantAct)


def test_bn_activation_ranges():
    gm = quant.fold_batchnorm(with_realistic_bn(ConvBNReLUConv(), (8, 8, 16, 16)))
    qm = quant.quantize(gm, n_std=4.0, input_range=(-2.0, 2.5))
    act = qm.meta["act_quantizers"]
    assert (act["x"].lo.item(), act["x"].hi.item()) == (-2.0, 2.5)
    beta, gamma = gm.conv1.bn_beta, gm.conv1.bn_gamma
    assert act["relu"].lo.item() == 0.0                                   # clipped by the ReLU
    assert act["relu"].hi.item() == pytest.approx((beta + 4 * gamma).max().item(), rel=1e-5)


def test_bn_ranges_refuse_tensors_without_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))  # no BN anywhere
    with pytest.raises(ValueError, match="act_range='calib'"):
        quant.quantize(quant.fold_batchnorm(model), input_range=(-1, 1))
    qm = quant.quantize(quant.fold_batchnorm(model), act_range="calib", calib_data=torch.randn(4, 3, 8, 8))
    ranges = [m for m in qm.modules() if isinstance(m, quant.QuantAct)]
    assert len(ranges) == 2 and all(math.isfinite(q.hi.item()) and q.hi > q.lo for q in ranges)


def test_fake_quant_model_is_close_but_not_equal():
    torch.manual_seed(0)
    model = with_realistic_bn(Zoo(), (16, 3, 32, 32))
    x = torch.randn(16, 3, 32, 32)
    gm = quant.fold_batchnorm(model)
    with torch.no_grad():
        ref, out8, out4 = gm(x), quant.quantize(gm, input_range=(-4, 4))(x), quant.quantize(gm, w_bits=4, a_bits=4, input_range=(-4, 4))(x)
    err8, err4 = ((out8 - ref).norm() / ref.norm()).item(), ((out4 - ref).norm() / ref.norm()).item()
    assert 1e-4 < err8 < 0.2 and err4 > 2 * err8


def test_relu_before_a_zero_based_quantizer_is_dropped_exactly():
    gm = quant.fold_batchnorm(with_realistic_bn(ConvBNReLUConv(), (8, 8, 16, 16)))
    qm = quant.quantize(gm, input_range=(-3.0, 3.0))
    assert not any(n.target is torch.nn.functional.relu for n in qm.graph.nodes)
    act = qm.meta["act_quantizers"]
    x = torch.randn(4, 8, 16, 16) * 2
    with torch.no_grad():
        by_hand = qm.conv2(act["relu"](torch.relu(qm.conv1(act["x"](x)))))
        assert torch.equal(qm(x), by_hand)
