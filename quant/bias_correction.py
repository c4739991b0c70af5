"""Bias correction, section 4.2 of the paper.

Quantizing W adds an error eps = W_q - W, which shifts the mean of the
layer's output by eps E[x]: y_q = y + eps x. Subtracting the expected shift
from the bias removes it:
    b <- b - eps E[x]   (eps summed over the kernel).
Analytic (data-free): E[x] of each layer's input from the folded BN
statistics, through ReLU (rectified normal), ReLU6 (clipped normal), adds and
pools (``statistics.propagate_statistics``).
Empirical: with data, the mean output error of each layer is measured
directly and subtracted, layer by layer in network order, so each layer is
corrected for what the corrected layers before it feed it.
"""
from dataclasses import dataclass, field

import torch

from .channels import response_to_constant
from .modules import QuantLayer
from .quantize import batches_of
from .statistics import propagate_statistics
from .tracing import layer_nodes


@dataclass
class BiasCorrectionReport:
    corrected: list = field(default_factory=list)  # (layer, largest |correction|)
    skipped: list = field(default_factory=list)    # (layer, reason)


def _quant_layers(qm, gm):
    for node in layer_nodes(gm):
        layer = qm.get_submodule(node.target)
        if isinstance(layer, QuantLayer) and layer.w_bits:
            yield node, layer


@torch.no_grad()
def correct_bias(qm, gm, data=None, input_mean=0.0, input_std=1.0):
    """Corrects the biases of the fake-quant model ``qm`` (made by
    ``quantize(gm)``) in place; returns a BiasCorrectionReport.

    ``data=None``: analytic, from the BN statistics of ``gm``; the network
    input is taken to have mean ``input_mean`` and std ``input_std`` per
    channel (normalized images: 0 and 1).
    ``data``: empirical, on a tensor of inputs or an iterable of batches
    (the batches are joined, so keep them to a few hundred images).
    """
    if data is None:
        return _correct_analytic(qm, gm, input_mean, input_std)
    return _correct_empirical(qm, gm, torch.cat(list(batches_of(data))))


def _correct_analytic(qm, gm, input_mean, input_std):
    report = BiasCorrectionReport()
    stats = propagate_statistics(gm, n_std=0.0, input_mean=input_mean, input_std=input_std)
    for node, layer in _quant_layers(qm, gm):
        source = stats[node.args[0].name]
        if source is None:
            report.skipped.append((node.target, "no BN statistics describe its input"))
            continue
        expected_x = source.mean
        if len(expected_x) == 1:  # the same for every channel (the network input)
            expected_x = expected_x.expand(layer.weight.shape[1] * getattr(layer, "groups", 1))
        shift = response_to_constant(layer.weight - layer.float_weight, layer, expected_x)
        layer.float_bias.sub_(shift.to(layer.float_bias.dtype))
        layer.requantize()
        report.corrected.append((node.target, shift.abs().max().item()))
    return report


def _channel_mean(y):
    return y.transpose(0, 1).reshape(y.shape[1], -1).mean(1)


def _correct_empirical(qm, gm, x):
    report = BiasCorrectionReport()
    targets = [node.target for node, _ in _quant_layers(qm, gm)]
    float_means = {}
    hooks = [gm.get_submodule(t).register_forward_hook(
        lambda m, i, y, t=t: float_means.__setitem__(t, _channel_mean(y))) for t in targets]
    try:
        gm.eval()(x)
    finally:
        for h in hooks:
            h.remove()

    def correct(layer, inputs, y, target):
        # Runs in network order during one forward pass: each layer sees the
        # output of the already corrected layers before it.
        delta = _channel_mean(y) - float_means[target]
        old_bias = layer.bias.clone()
        layer.float_bias.sub_(delta)
        layer.requantize()
        report.corrected.append((target, delta.abs().max().item()))
        return y + (layer.bias - old_bias).view(1, -1, *[1] * (y.dim() - 2))

    hooks = [qm.get_submodule(t).register_forward_hook(lambda m, i, y, t=t: correct(m, i, y, t)) for t in targets]
    try:
        qm.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return report
