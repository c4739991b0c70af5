"""Cross-layer equalization (CLE), section 4.1 of the paper.

For a pair y = f(W2 f(W1 x + b1) + b2) with f(s x) = s f(x), scaling output
channel i of layer 1 by 1/s_i and input channel i of layer 2 by s_i changes
nothing. With r1_i the range of output channel i of W1 and r2_i the range of
input channel i of W2, the choice
    s_i = sqrt(r1_i r2_i) / r2_i
makes both ranges sqrt(r1_i r2_i), which maximizes the total precision of
per-tensor quantization of the two weights. In a chain of three or more
layers the pairs share layers, so the pairs are swept until the scales stop
changing.
"""
from dataclasses import dataclass, field

import torch

from .batchnorm import layer_statistics, set_layer_statistics
from .channels import input_channel_range, output_channel_range, scale_input_channels, scale_output_channels
from .pairs import chains_of, find_pairs

DEAD_RANGE = 1e-8  # a channel with all weights within this of each other carries nothing to equalize


@dataclass
class EqualizationReport:
    chains: list = field(default_factory=list)   # each a list of layer names, in order
    sweeps: list = field(default_factory=list)   # sweeps each chain took to converge
    skipped: list = field(default_factory=list)  # pairs.Skipped: layers that start no pair, and why


def equalization_scale(r1, r2, max_scale=1e3):
    """s_i = sqrt(r1_i r2_i) / r2_i, with s_i = 1 for dead channels (r ~ 0)
    and s clamped to [1/max_scale, max_scale]: dividing a near-dead channel's
    bias by a tiny s would turn it into a huge activation."""
    dead = (r1 < DEAD_RANGE) | (r2 < DEAD_RANGE)
    s = torch.sqrt(r1 * r2) / r2.clamp_min(DEAD_RANGE)
    return torch.where(dead, torch.ones_like(s), s).clamp(1.0 / max_scale, max_scale)


@torch.no_grad()
def equalize_pair(first, second, max_scale=1e3):
    """Equalizes layer ``first`` and the layer ``second`` that reads it, in
    place; returns s. The BN statistics of layer 1's output scale along:
    beta_i / s_i, |gamma_i| / s_i."""
    channels = first.weight.shape[0]
    s = equalization_scale(output_channel_range(first.weight), input_channel_range(second, channels), max_scale)
    scale_output_channels(first, s)
    scale_input_channels(second, s)
    stats = layer_statistics(first)
    if stats is not None:
        set_layer_statistics(first, stats[0] / s, stats[1] / s)
    return s


def equalize(gm, max_sweeps=100, tol=1e-4, max_scale=1e3):
    """Cross-layer equalization of every chain in ``gm``, in place.

    A chain is equalized pair by pair, sweeping until every scale of a sweep
    is within ``tol`` of 1 (or ``max_sweeps``). Returns an EqualizationReport.
    Run ``replace_relu6`` first: chains stop at ReLU6.
    """
    pairs, skipped = find_pairs(gm)
    report = EqualizationReport(skipped=skipped)
    for chain in chains_of(pairs):
        layers = [(gm.get_submodule(p.first), gm.get_submodule(p.second)) for p in chain]
        for sweep in range(1, max_sweeps + 1):
            change = max((equalize_pair(a, b, max_scale) - 1).abs().max().item() for a, b in layers)
            if change < tol:
                break
        report.chains.append([chain[0].first] + [p.second for p in chain])
        report.sweeps.append(sweep)
    return report
