"""High-bias absorption, section 4.1.2 of the paper.

After CLE some channels carry large biases, which widen the activation range
of the whole tensor. Where a ReLU sits between layers 1 and 2 and channel i
of layer 1's output is distributed as N(beta_i, gamma_i^2), the part
    c_i = max(0, beta_i - n |gamma_i|)
is (almost) always passed through the ReLU unchanged: ReLU(x - c) = ReLU(x) - c
whenever x >= c. So it can move into layer 2:
    b1 <- b1 - c,    b2 <- b2 + W2 c   (W2 summed over its kernel).
Exact for inputs matching the BN statistics, except at the border of a
zero-padded layer 2: its padded zeros were never shifted by c, yet b2 + W2 c
compensates for the shift there too. On small feature maps the border is most
of the map (on 7x7, 24 of 49 positions under a 3x3 kernel), so pairs whose
layer 2 zero-pads are left alone unless ``padded=True``.
"""
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from . import activations as A
from .batchnorm import layer_statistics, set_layer_statistics
from .channels import response_to_constant
from .pairs import find_pairs


@dataclass
class AbsorptionReport:
    pairs: list = field(default_factory=list)  # (layer 1, layer 2, channels absorbed, largest c)


def _zero_pads(layer, pair):
    """True where layer 2 reads zeros that are not shifted by c: zero padding,
    by the layer itself or by an op between the two layers."""
    padding = getattr(layer, "padding", (0,))
    pads = padding == "same" or (not isinstance(padding, str) and any(p > 0 for p in padding))
    return (pads and getattr(layer, "padding_mode", "zeros") == "zeros") or any(kind == A.PAD for kind, _ in pair.ops)


@torch.no_grad()
def absorb_high_bias(gm, n_std=3.0, padded=False):
    """High-bias absorption on every layer pair of ``gm`` joined through a
    ReLU, in place. Layer 1 needs its folded BN statistics. Returns an
    AbsorptionReport."""
    report = AbsorptionReport()
    pairs, _ = find_pairs(gm)
    for pair in pairs:
        first, second = gm.get_submodule(pair.first), gm.get_submodule(pair.second)
        stats = layer_statistics(first)
        if not pair.relu_between or stats is None or (not padded and _zero_pads(second, pair)):
            continue
        beta, gamma = stats
        c = (beta - n_std * gamma).clamp_min(0)
        if not bool((c > 0).any()):
            continue
        first.bias.sub_(c)
        set_layer_statistics(first, beta - c, gamma)
        shift = response_to_constant(second.weight, second, c)
        if second.bias is None:
            second.bias = nn.Parameter(shift.clone())
        else:
            second.bias.add_(shift)
        report.pairs.append((pair.first, pair.second, int((c > 0).sum()), c.max().item()))
    return report
