"""Folding batch normalization into the layer before it.

A BatchNorm after a conv computes, per output channel i,
    y_i = gamma_i (z_i - mean_i) / sqrt(var_i + eps) + beta_i,
which is affine in z, so it folds into the conv:
    W'_i = W_i gamma_i / sqrt(var_i + eps),
    b'_i = (b_i - mean_i) gamma_i / sqrt(var_i + eps) + beta_i.
The folded layer's output is then distributed roughly as N(beta_i, gamma_i^2)
per channel. DFQ needs those statistics later (high-bias absorption,
activation ranges, bias correction), so they stay on the layer as the buffers
``bn_beta`` and ``bn_gamma`` (= |gamma|: gamma may be negative, a standard
deviation may not).
"""
import torch
import torch.nn as nn

from .tracing import BATCHNORM_TYPES, call_counts, layer_of, module_of, trace


def layer_statistics(layer):
    """(beta, |gamma|) of a folded layer's output, or None if it had no BN."""
    beta = getattr(layer, "bn_beta", None)
    return None if beta is None else (beta, layer.bn_gamma)


def set_layer_statistics(layer, beta, gamma):
    for name, value in (("bn_beta", beta), ("bn_gamma", gamma)):
        value = value.detach().to(layer.weight.dtype).clone()
        if hasattr(layer, name):
            getattr(layer, name).copy_(value)
        else:
            layer.register_buffer(name, value)


@torch.no_grad()
def fold_into(layer, bn):
    """Folds ``bn`` into ``layer`` (conv or linear) in place."""
    if bn.running_mean is None:
        raise ValueError("a BatchNorm without running statistics cannot be folded")
    weight = layer.weight.double()
    gamma = bn.weight.double() if bn.affine else torch.ones_like(bn.running_var, dtype=torch.float64)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(bn.running_mean, dtype=torch.float64)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
    layer.weight.copy_((weight * scale.view(-1, *[1] * (weight.dim() - 1))).float())
    new_bias = ((bias - bn.running_mean.double()) * scale + beta).to(layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)
    set_layer_statistics(layer, beta, gamma.abs())


def fold_batchnorm(model):
    """Returns a new ``fx.GraphModule`` in which every BatchNorm that directly
    follows a conv or linear layer, and is that layer's only user, is folded
    into it (grouped and depthwise convs, with or without bias, Linear ->
    BatchNorm1d). Other BatchNorms stay. ``model`` is not changed.
    """
    gm = trace(model)
    gm.eval()
    calls = call_counts(gm)
    for node in list(gm.graph.nodes):
        bn = module_of(gm, node)
        if not isinstance(bn, BATCHNORM_TYPES) or bn.running_mean is None:
            continue
        source = node.args[0]
        layer = layer_of(gm, source)
        if layer is None or len(source.users) != 1 or layer.weight.shape[0] != bn.num_features:
            continue
        if calls[source.target] != 1 or calls[node.target] != 1:
            continue  # shared weights: folding would change the layer's other call too
        fold_into(layer, bn)
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
    gm.graph.lint()
    gm.recompile()
    return gm
