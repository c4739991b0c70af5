"""Data-free per-channel statistics of every tensor in the graph.

After BN folding, the output of a folded layer is taken as N(beta_i, gamma_i^2)
per channel. From there, each op maps (mean, variance, lo, hi) per channel:
    ReLU / ReLU6 / clip to [a, b]:  moments of the clipped normal; [lo, hi] clipped
    leaky ReLU, PReLU:  relu(z) - a relu(-z), from the same moments
    identity, dropout, flatten, pooling:  unchanged (zero padding adds 0 to [lo, hi])
    add:  means and variances add (the branches taken as independent); the range
          is mean +- n std, kept inside the sum of the branches' ranges
    concat along channels:  the channels' statistics side by side
Anything else (a layer without BN, hardswish, a multiply) has no data-free
statistics, and nor has anything computed from it.

These are what the paper's activation ranges (beta +- n gamma, clipped by the
activation) and analytic bias correction (E[x] of a layer's input) need, and
they stay valid past residual adds and concats, where reading "the preceding
BN" would take a stale or wrong one.
"""
import math
from dataclasses import dataclass

import torch

from . import activations as A
from .batchnorm import layer_statistics
from .tracing import layer_of


@dataclass
class ChannelStats:
    """Per-channel mean, variance and range [lo, hi] of a tensor (1-D tensors;
    length 1 means the same for every channel)."""
    mean: torch.Tensor
    var: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor


def _phi(x):
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x):
    return torch.special.ndtr(x)


def clipped_normal_moments(mu, sigma, a=0.0, b=math.inf):
    """Mean and variance of clip(z, a, b) for z ~ N(mu, sigma^2).

    With alpha = (a - mu)/sigma and beta = (b - mu)/sigma,
        E = a Phi(alpha) + b (1 - Phi(beta)) + mu (Phi(beta) - Phi(alpha)) + sigma (phi(alpha) - phi(beta)),
    which for ReLU (a = 0, b = inf) is sigma phi(mu/sigma) + mu Phi(mu/sigma);
        E[clip^2] = a^2 Phi(alpha) + b^2 (1 - Phi(beta)) + (mu^2 + sigma^2)(Phi(beta) - Phi(alpha))
                    + 2 mu sigma (phi(alpha) - phi(beta)) - sigma^2 (beta phi(beta) - alpha phi(alpha)).
    """
    mu, sigma = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(sigma, dtype=torch.float64).clamp_min(1e-12)
    alpha = (a - mu) / sigma
    beta = (b - mu) / sigma
    p_in = _Phi(beta) - _Phi(alpha)
    # The tails' terms vanish for infinite bounds; written out to avoid inf * 0.
    low = a * _Phi(alpha) if math.isfinite(a) else torch.zeros_like(mu)
    high = b * (1 - _Phi(beta)) if math.isfinite(b) else torch.zeros_like(mu)
    low2 = a * a * _Phi(alpha) if math.isfinite(a) else torch.zeros_like(mu)
    high2 = b * b * (1 - _Phi(beta)) if math.isfinite(b) else torch.zeros_like(mu)
    a_phi = alpha * _phi(alpha) if math.isfinite(a) else torch.zeros_like(mu)
    b_phi = beta * _phi(beta) if math.isfinite(b) else torch.zeros_like(mu)
    mean = low + high + mu * p_in + sigma * (_phi(alpha) - _phi(beta))
    second = low2 + high2 + (mu * mu + sigma * sigma) * p_in + 2 * mu * sigma * (_phi(alpha) - _phi(beta)) - sigma * sigma * (b_phi - a_phi)
    return mean, (second - mean * mean).clamp_min(0)


def _input_stats(mean, std, value_range):
    vec = lambda v: torch.as_tensor(v, dtype=torch.float64).reshape(-1)
    lo, hi = value_range if value_range is not None else (-math.inf, math.inf)
    return ChannelStats(vec(mean), vec(std) ** 2, vec(lo), vec(hi))


def propagate_statistics(gm, n_std, input_mean=0.0, input_std=1.0, input_range=None):
    """Returns {node name: ChannelStats or None} for every node of ``gm``.

    ``n_std`` sets the range of a folded layer's output: beta +- n_std |gamma|.
    The network input is taken as normalized images: mean ``input_mean`` and
    standard deviation ``input_std`` per channel (scalars or per channel),
    within ``input_range`` = (lo, hi).
    """
    stats = {}
    for node in gm.graph.nodes:
        stats[node.name] = _node_stats(gm, node, stats, n_std, (input_mean, input_std, input_range))
    return stats


def _node_stats(gm, node, stats, n_std, input_spec):
    if node.op == "placeholder":
        return _input_stats(*input_spec)
    layer = layer_of(gm, node)
    if layer is not None:
        bn = layer_statistics(layer)
        if bn is None:
            return None
        beta, gamma = bn[0].double(), bn[1].double()
        return ChannelStats(beta, gamma ** 2, beta - n_std * gamma, beta + n_std * gamma)
    kind, bounds = A.op_kind(gm, node)
    if kind == A.CAT:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        parts = [stats.get(getattr(p, "name", None)) for p in node.args[0]]
        if dim != 1 or any(p is None or len(p.mean) == 1 for p in parts):
            return None
        return ChannelStats(*(torch.cat([getattr(p, f) for p in parts]) for f in ("mean", "var", "lo", "hi")))
    inputs = [a for a in node.args if hasattr(a, "name")]
    if not inputs or any(stats.get(a.name) is None for a in inputs):
        return None
    s = stats[inputs[0].name]
    if kind == A.RELU:
        a, b = bounds
        mean, var = clipped_normal_moments(s.mean, s.var.sqrt(), a, b)
        return ChannelStats(mean, var, s.lo.clamp(a, b), s.hi.clamp(a, b))
    if kind == A.LEAKY:
        # f(z) = relu(z) - a relu(-z): the two parts never overlap
        a = torch.as_tensor(bounds, dtype=torch.float64)
        sigma = s.var.sqrt()
        m_pos, v_pos = clipped_normal_moments(s.mean, sigma)
        m_neg, v_neg = clipped_normal_moments(-s.mean, sigma)
        mean = m_pos - a * m_neg
        var = (v_pos + m_pos ** 2 + a * a * (v_neg + m_neg ** 2) - mean ** 2).clamp_min(0)
        leaky = lambda v: torch.where(v >= 0, v, a * v)
        return ChannelStats(mean, var, leaky(s.lo), leaky(s.hi))
    if kind in (A.IDENTITY, A.FLATTEN, A.POOL):
        return s
    if kind == A.PAD:
        return ChannelStats(s.mean, s.var, s.lo.clamp(max=0), s.hi.clamp(min=0))
    if kind == A.ADD and len(inputs) == 2:
        t = stats[inputs[1].name]
        mean, var = s.mean + t.mean, s.var + t.var
        spread = n_std * var.sqrt()
        lo = torch.maximum(s.lo + t.lo, mean - spread)
        hi = torch.minimum(s.hi + t.hi, mean + spread)
        return ChannelStats(mean, var, lo, hi)
    return None
