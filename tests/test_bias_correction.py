import math

import pytest
import torch

import quant
from conftest import with_realistic_bn
from nets import ConvBNReLUConv


@pytest.mark.parametrize("mu,sigma,a,b", [(0.3, 1.0, 0.0, math.inf), (-1.0, 0.5, 0.0, math.inf), (4.0, 2.0, 0.0, 6.0),
                                          (7.0, 1.5, 0.0, 6.0), (0.0, 3.0, -1.0, 2.0)])
def test_clipped_normal_moments_match_monte_carlo(mu, sigma, a, b):
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigma + mu
    clipped = z.clamp(a, b)
    mean, var = quant.clipped_normal_moments(torch.tensor([mu]), torch.tensor([sigma]), a, b)
    assert mean.item() == pytest.approx(clipped.mean().item(), abs=3e-3 * sigma)
    assert var.item() == pytest.approx(clipped.var().item(), rel=1e-2, abs=1e-4)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = with_realistic_bn(ConvBNReLUConv(8, 32, 16), (64, 8, 16, 16), seed=seed)
    gm = quant.fold_batchnorm(model)
    x = torch.randn(64, 8, 16, 16, generator=torch.Generator().manual_seed(seed + 100))  # the inputs BN saw
    return gm, x


def _mean_output_error(qm, gm, x):
    """Mean over channels of |E[y_q - y]| at conv2's output (before its BN statistics apply)."""
    outputs = {}
    hooks = [m.get_submodule("conv2").register_forward_hook(lambda mod, i, y, key=key: outputs.__setitem__(key, y))
             for key, m in (("q", qm), ("f", gm))]
    with torch.no_grad():
        qm(x), gm(x)
    for h in hooks:
        h.remove()
    return (outputs["q"] - outputs["f"]).mean((0, 2, 3)).abs().mean().item()


@pytest.mark.parametrize("data", ["analytic", "empirical"])
def test_bias_correction_lowers_mean_output_error(data):
    gm, x = _setup()
    qm = quant.quantize(gm, w_bits=4, a_bits=None)  # coarse weights: a visible bias
    before = _mean_output_error(qm, gm, x)
    report = quant.correct_bias(qm, gm, data=None if data == "analytic" else x[:32])
    after = _mean_output_error(qm, gm, x)
    assert {name for name, _ in report.corrected} == {"conv1", "conv2"}
    assert after < 0.5 * before


def test_bias_correction_uses_quantized_minus_float_weights():
    """With weights left in float there is nothing to correct."""
    gm, x = _setup()
    qm = quant.quantize(gm, w_bits=None, a_bits=None)
    bias = qm.conv2.bias.clone()
    quant.correct_bias(qm, gm)
    assert torch.equal(qm.conv2.bias, bias)


def test_an_8_bit_bias_undoes_the_correction():
    """At 8-bit weights the corrections are smaller than an 8-bit bias grid's
    step: rounding the bias throws them away."""
    gm, x = _setup()
    errors = {}
    for bits in (32, 8):
        qm = quant.quantize(gm, w_bits=8, a_bits=None, bias_bits=bits)
        before = _mean_output_error(qm, gm, x)
        quant.correct_bias(qm, gm)
        errors[bits] = _mean_output_error(qm, gm, x) / before
    assert errors[32] < 0.3 and errors[8] > 0.7


def test_dfq_pipeline_switches():
    gm, x = _setup()
    model = ConvBNReLUConv(8, 32, 16)
    model.load_state_dict({k: v for k, v in with_realistic_bn(ConvBNReLUConv(8, 32, 16), (64, 8, 16, 16)).state_dict().items()})
    qm = quant.dfq(model, w_bits=6, a_bits=8, input_range=(-4, 4))
    reports = qm.meta["dfq"]
    assert set(reports) == {"equalize", "absorb", "bias_correction"}
    assert reports["equalize"].chains == [["conv1", "conv2"]]
    bare = quant.dfq(model, cle=False, absorb=False, bias_correction=None, input_range=(-4, 4))
    assert set(bare.meta["dfq"]) == set()
    with pytest.raises(ValueError, match="needs data"):
        quant.dfq(model, bias_correction="empirical", input_range=(-4, 4))
