"""Per-channel views of conv and linear weights, vectorized.

A weight W of shape (out, cols, *kernel) reads input channel idx[o, j] through
column j of output channel o, where
    conv, g groups:      idx[o, j] = (o // (out / g)) * cols + j
    linear after a flatten of C channels into C*k features: idx[o, j] = j // k.
One index map serves the three places that need "what touches input channel
i": the CLE range r2_i, the CLE rescaling of W2, and the response of a layer
to a per-channel constant input (absorption's W2 c, bias correction's eps E[x]).
"""
import torch
import torch.nn as nn


def output_channel_range(weight):
    """r_i of output channel i: max - min over the channel's weights."""
    w = weight.reshape(weight.shape[0], -1)
    return w.amax(1) - w.amin(1)


def input_channel_index(layer, channels):
    """idx (out, cols): the input channel that each weight column reads."""
    out, cols = layer.weight.shape[:2]
    if isinstance(layer, nn.Linear):
        if cols % channels:
            raise ValueError(f"a linear layer with {cols} inputs cannot read a tensor of {channels} channels")
        return (torch.arange(cols) // (cols // channels)).expand(out, cols)
    if channels != layer.in_channels:
        raise ValueError(f"a conv with {layer.in_channels} input channels cannot read a tensor of {channels} channels")
    return (torch.arange(out) // (out // layer.groups))[:, None] * cols + torch.arange(cols)[None, :]


def _per_column(layer):
    out, cols = layer.weight.shape[:2]
    return layer.weight.reshape(out, cols, -1)


def input_channel_range(layer, channels):
    """r_i of input channel i: max - min over every weight that reads it."""
    w = _per_column(layer)
    groups = getattr(layer, "groups", 1)
    if groups == 1 and w.shape[1] == channels:  # dense: input channel i is column i
        w = w.transpose(0, 1).reshape(channels, -1)
        return w.amax(1) - w.amin(1)
    if groups == channels == w.shape[0]:  # depthwise: input channel i is output channel i
        return output_channel_range(layer.weight)
    idx = input_channel_index(layer, channels)[..., None].expand_as(w).reshape(-1)
    values = w.reshape(-1)
    hi = torch.full((channels,), float("-inf"), dtype=w.dtype).scatter_reduce(0, idx, values, "amax")
    lo = torch.full((channels,), float("inf"), dtype=w.dtype).scatter_reduce(0, idx, values, "amin")
    return hi - lo


@torch.no_grad()
def scale_input_channels(layer, s):
    """W[o, j] *= s[idx[o, j]], in place."""
    w, kernel = layer.weight, [1] * (layer.weight.dim() - 2)
    groups = getattr(layer, "groups", 1)
    if groups == 1:  # dense, or a linear layer reading k features per channel
        w.mul_(s.repeat_interleave(w.shape[1] // len(s)).view(1, -1, *kernel).to(w.dtype))
    elif groups == len(s) == w.shape[0]:  # depthwise
        w.mul_(s.view(-1, 1, *kernel).to(w.dtype))
    else:
        idx = input_channel_index(layer, len(s))
        w.mul_(s[idx].view(*idx.shape, *kernel).to(w.dtype))


@torch.no_grad()
def scale_output_channels(layer, s):
    """Divides output channel i (weights and bias) by s_i, in place."""
    layer.weight.div_(s.view(-1, *[1] * (layer.weight.dim() - 1)).to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.div_(s.to(layer.bias.dtype))


def response_to_constant(weight, layer, v):
    """The output shift, per output channel, of a layer with weights ``weight``
    (shaped like ``layer.weight``) to an input that is v_i on channel i
    everywhere: sum over j and the kernel of W[o, j, k] v[idx[o, j]]."""
    idx = input_channel_index(layer, len(v))
    out, cols = weight.shape[:2]
    return (weight.reshape(out, cols, -1).sum(-1) * v.to(weight.dtype)[idx]).sum(1)
