"""What each graph op does to a tensor, as far as DFQ cares.

CLE may rescale channel i of a tensor by s_i > 0 only across ops with
f(s x) = s f(x) per channel: ReLU, leaky ReLU, PReLU, identity, dropout in
eval, zero padding, max and average pooling. ReLU6 is not one of them (it
clips at 6, which does not scale), hence ``replace_relu6``.
"""
import math
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tracing import module_of

RELU = "relu"            # clip to [lo, hi]: ReLU (0, inf), ReLU6 (0, 6), hardtanh
LEAKY = "leaky"          # leaky ReLU, PReLU: scale-equivariant, no clip
IDENTITY = "identity"    # identity, dropout (eval)
FLATTEN = "flatten"      # (N, C, H, W) -> (N, C*H*W): channel i becomes features [i*H*W, (i+1)*H*W)
POOL = "pool"            # max / average pooling
PAD = "pad"              # zero padding
ADD = "add"
CAT = "cat"
OTHER = "other"

# Ops through which channel i of the output is channel i of the input times a
# positive per-channel scale, for any such scale.
SCALE_EQUIVARIANT = {LEAKY, IDENTITY, FLATTEN, POOL, PAD}

_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                   F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                   F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
                   torch.max_pool2d, torch.avg_pool1d, torch.adaptive_avg_pool1d}
_IDENTITY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d}
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_CAT_FUNCTIONS = {torch.cat, torch.concat}


def _arg(node, index, name, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def op_kind(gm, node):
    """Returns (kind, detail): the clip bounds (lo, hi) for RELU, the negative
    slope (a number or, for PReLU, a per-channel tensor) for LEAKY, else None."""
    m = module_of(gm, node)
    if m is not None:
        if isinstance(m, nn.ReLU):
            return RELU, (0.0, math.inf)
        if isinstance(m, nn.ReLU6):
            return RELU, (0.0, 6.0)
        if isinstance(m, nn.Hardtanh):
            return RELU, (m.min_val, m.max_val)
        if isinstance(m, nn.LeakyReLU):
            return LEAKY, m.negative_slope
        if isinstance(m, nn.PReLU):
            return LEAKY, m.weight.detach()
        if isinstance(m, _IDENTITY_MODULES):
            return IDENTITY, None
        if isinstance(m, nn.Flatten):
            return FLATTEN, None
        if isinstance(m, _POOL_MODULES):
            return POOL, None
        if isinstance(m, nn.ZeroPad2d) or (isinstance(m, nn.modules.padding._ConstantPadNd) and m.value == 0):
            return PAD, None
        return OTHER, None
    if node.op == "call_function":
        f = node.target
        if f in _RELU_FUNCTIONS:
            return RELU, (0.0, math.inf)
        if f is F.relu6:
            return RELU, (0.0, 6.0)
        if f is F.hardtanh:
            return RELU, (float(_arg(node, 1, "min_val", -1.0)), float(_arg(node, 2, "max_val", 1.0)))
        if f is F.leaky_relu:
            return LEAKY, float(_arg(node, 1, "negative_slope", 0.01))
        if f in _IDENTITY_FUNCTIONS:
            return IDENTITY, None
        if f is torch.flatten:
            return FLATTEN, None
        if f in _POOL_FUNCTIONS:
            return POOL, None
        if f is F.pad and _arg(node, 2, "mode", "constant") == "constant" and not _arg(node, 3, "value", 0):
            return PAD, None
        if f in _ADD_FUNCTIONS:
            return ADD, None
        if f in _CAT_FUNCTIONS:
            return CAT, None
        return OTHER, None
    if node.op == "call_method":
        if node.target in ("relu", "relu_"):
            return RELU, (0.0, math.inf)
        if node.target == "contiguous":
            return IDENTITY, None
        if node.target == "flatten":
            return FLATTEN, None
        if node.target in ("add", "add_"):
            return ADD, None
    return OTHER, None


def is_relu6(bounds):
    return bounds is not None and bounds[0] == 0.0 and bounds[1] == 6.0


def replace_relu6(gm):
    """Replaces every ReLU6 (``nn.ReLU6``, ``F.relu6``, and hardtanh clipping
    to [0, 6]) with ReLU, in place, and returns ``gm``.

    Needed before CLE: ReLU6(s x) != s ReLU6(x), so equalizing across a
    ReLU6 changes the network's function. The FP32 accuracy cost is small
    (the paper: 71.72% -> 71.70% on MobileNetV2).
    """
    for node in list(gm.graph.nodes):
        kind, bounds = op_kind(gm, node)
        if kind != RELU or not is_relu6(bounds):
            continue
        if node.op == "call_module":
            parent, _, name = node.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, name, nn.ReLU())
        else:
            node.target = F.relu
            node.op = "call_function"
            node.args, node.kwargs = (node.args[0],), {}
    gm.recompile()
    return gm
