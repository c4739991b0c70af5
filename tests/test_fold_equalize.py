import pytest
import torch
import torch.nn as nn
import torchvision

import models
import quant
from conftest import relative_error, with_realistic_bn
from nets import MLP, ConvBNReLUConv, SameConv2d, Zoo
from quant.channels import input_channel_range, output_channel_range

# float32 rounding through torchvision's MobileNetV2 differs by CPU (AVX2 kernels: 1.01e-5);
# a folding or equalization bug shows as 1e-2 or more
TOL = 5e-5


def fp32_models():
    torch.manual_seed(0)
    return {
        "cifar-mobilenetv2": (models.build_model("mobilenetv2", "cifar10"), (4, 3, 32, 32)),
        "cifar-resnet18": (models.build_model("resnet18", "cifar10"), (4, 3, 32, 32)),
        "torchvision-mobilenet_v2": (torchvision.models.mobilenet_v2(), (2, 3, 96, 96)),
        "torchvision-resnet18": (torchvision.models.resnet18(), (2, 3, 96, 96)),
        "zoo": (Zoo(), (4, 3, 32, 32)),
        "mlp": (MLP(), (8, 3, 32, 32)),
    }


MODELS = fp32_models()


@pytest.mark.parametrize("name", MODELS)
def test_fold_and_equalize_keep_the_function(name):
    model, shape = MODELS[name]
    model = with_realistic_bn(model, shape)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
        gm = quant.fold_batchnorm(model)
        assert relative_error(gm(x), reference) < TOL
        assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules()), "a BN after a conv was not folded"
        assert torch.equal(model(x), reference), "fold_batchnorm changed its input model"
        folded = gm(x)
        report = quant.equalize(gm)
        assert report.chains, "nothing was equalized"
        assert relative_error(gm(x), folded) < TOL


def test_fold_keeps_bn_statistics_on_the_layer():
    model = with_realistic_bn(ConvBNReLUConv(), (8, 8, 16, 16))
    gm = quant.fold_batchnorm(model)
    assert torch.allclose(gm.conv1.bn_beta, model.bn1.bias)
    assert torch.allclose(gm.conv1.bn_gamma, model.bn1.weight.abs())
    assert (gm.conv1.bn_gamma >= 0).all() and (model.bn1.weight < 0).any()
    # the folded output really is distributed as N(beta, gamma^2) on the data the BN saw
    with torch.no_grad():
        y = gm.conv1(torch.randn(64, 8, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(y.mean((0, 2, 3)), gm.conv1.bn_beta, atol=0.1)
    assert torch.allclose(y.std((0, 2, 3)), gm.conv1.bn_gamma, rtol=0.1)


def test_bn_not_after_a_layer_stays():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    gm = quant.fold_batchnorm(with_realistic_bn(model, (4, 3, 16, 16)))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in gm.modules()) == 1


def test_zoo_chains_and_skips():
    gm = quant.fold_batchnorm(with_realistic_bn(Zoo(), (4, 3, 32, 32)))
    quant.replace_relu6(gm)
    report = quant.equalize(gm)
    chains = [tuple(c) for c in report.chains]
    assert ("stem.0", "dw.0", "pw.0", "grouped.0") in chains      # depthwise, grouped, leaky ReLU
    assert ("res_a.0", "res_b.0") in chains                       # the Conv2d subclass joins
    assert ("merge.0", "six.0", "last.0", "fc") in chains         # ReLU6 replaced; pool + flatten into the linear
    reasons = {s.layer: s.reason for s in report.skipped}
    assert reasons["grouped.0"].startswith("fan-out")  # through leaky ReLU and max-pool into the residual fork
    assert reasons["res_b.0"].startswith("residual add")
    assert reasons["left.0"].startswith("concat") and reasons["right.0"].startswith("concat")


def test_relu6_stops_chains_until_replaced():
    gm = quant.fold_batchnorm(with_realistic_bn(Zoo(), (4, 3, 32, 32)))
    report = quant.equalize(gm)
    assert "ReLU6" in {s.layer: s.reason for s in report.skipped}["merge.0"]
    assert not any("merge.0" in c for c in report.chains)


def test_replace_relu6_covers_all_forms():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6(), nn.Conv2d(4, 4, 1), nn.Hardtanh(0.0, 6.0))
    gm = quant.replace_relu6(quant.fold_batchnorm(model))
    assert not any(isinstance(m, (nn.ReLU6, nn.Hardtanh)) for m in gm.modules())
    x = torch.randn(2, 3, 4, 4) * 50
    assert gm(x).max() > 6  # nothing clips at 6 any more
    zoo = quant.replace_relu6(quant.fold_batchnorm(Zoo()))
    targets = {getattr(n.target, "__name__", n.target) for n in zoo.graph.nodes}
    assert "relu6" not in targets and "hardtanh" not in targets


def test_equalized_pairs_have_equal_ranges():
    gm = quant.fold_batchnorm(with_realistic_bn(Zoo(), (4, 3, 32, 32)))
    quant.replace_relu6(gm)
    report = quant.equalize(gm, tol=1e-6)
    assert all(s < 100 for s in report.sweeps)
    for chain in report.chains:
        for first, second in zip(chain, chain[1:]):
            a, b = gm.get_submodule(first), gm.get_submodule(second)
            r1 = output_channel_range(a.weight)
            r2 = input_channel_range(b, a.weight.shape[0])
            assert torch.allclose(r1, r2, rtol=1e-4), (first, second)


def test_equalization_scales_bn_statistics():
    gm = quant.fold_batchnorm(with_realistic_bn(ConvBNReLUConv(), (8, 8, 16, 16)))
    beta, gamma = gm.conv1.bn_beta.clone(), gm.conv1.bn_gamma.clone()
    s = quant.equalize_pair(gm.conv1, gm.conv2)
    assert torch.allclose(gm.conv1.bn_beta, beta / s) and torch.allclose(gm.conv1.bn_gamma, gamma / s)


def test_dead_channels_do_not_blow_up():
    gm = quant.fold_batchnorm(with_realistic_bn(ConvBNReLUConv(), (8, 8, 16, 16)))
    with torch.no_grad():
        gm.conv1.weight[3] = 0.0          # dead output channel
        gm.conv1.weight[5] *= 1e-9        # nearly dead
        gm.conv2.weight[:, 7] = 0.0       # input channel nobody reads
    quant.equalize(gm)
    for t in (gm.conv1.weight, gm.conv1.bias, gm.conv2.weight, gm.conv1.bn_beta):
        assert torch.isfinite(t).all() and t.abs().max() < 1e4


def test_cle_lowers_per_tensor_weight_quantization_error():
    """The paper's case: channel i of layer 1 scaled by s_i and input
    channel i of layer 2 by 1/s_i (same function through the ReLU), s over
    three decades. Per-tensor 8-bit weights lose the small channels of layer
    1, whose large columns in layer 2 then amplify the error; CLE undoes it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 1))
    s = torch.logspace(-2, 1, 32)[torch.randperm(32)]
    with torch.no_grad():
        model[0].weight.mul_(s.view(-1, 1, 1, 1))
        model[0].bias.mul_(s)
        model[2].weight.div_(s.view(1, -1, 1, 1))
    x = torch.randn(16, 8, 16, 16)

    def weight_quantized_error(gm):
        qm = quant.quantize(gm, w_bits=8, a_bits=None)
        with torch.no_grad():
            return relative_error(qm(x), gm(x))

    gm = quant.fold_batchnorm(model)
    before = weight_quantized_error(gm)
    quant.equalize(gm)
    after = weight_quantized_error(gm)
    assert after < 0.2 * before


def test_absorption_shrinks_biases_and_keeps_outputs():
    model = with_realistic_bn(ConvBNReLUConv(), (32, 8, 16, 16))
    with torch.no_grad():
        model.bn1.bias.add_(4.0)  # large positive pre-activation means: absorbable
    gm = quant.fold_batchnorm(model)
    x = torch.randn(32, 8, 16, 16, generator=torch.Generator().manual_seed(3))  # the BN statistics' inputs
    with torch.no_grad():
        before = gm(x)
        bias_before = gm.conv1.bias.clone()
        beta_before = gm.conv1.bn_beta.clone()
        report = quant.absorb_high_bias(gm, n_std=3.0)
        after = gm(x)
    assert report.pairs and report.pairs[0][:2] == ("conv1", "conv2")
    absorbed = bias_before - gm.conv1.bias
    assert torch.allclose(absorbed, (beta_before - 3.0 * gm.conv1.bn_gamma).clamp_min(0), atol=1e-5)
    assert (absorbed > 0).all() and absorbed.mean() > 0.5
    # only the zero-padded border and rare inputs below beta - 3 gamma move
    assert relative_error(after, before) < 0.02
    assert torch.allclose(gm.conv1.bn_beta, beta_before - absorbed, atol=1e-5)  # statistics follow the bias


def test_untraceable_model_gives_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            if x.sum() > 0:
                return self.conv(x)
            return x

    with pytest.raises(quant.TraceError, match="cannot trace Branchy"):
        quant.fold_batchnorm(Branchy())


def test_conv_subclass_is_kept_whole():
    gm = quant.fold_batchnorm(with_realistic_bn(Zoo(), (4, 3, 32, 32)))
    assert isinstance(gm.get_submodule("res_b.0"), SameConv2d)
