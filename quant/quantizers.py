"""Uniform quantization: the grid, its parameters, and rounding onto it.

A b-bit affine quantizer with scale Delta and integer zero point z maps
    q = clamp(round(x / Delta) + z, q_min, q_max),   x_hat = Delta (q - z).
Asymmetric: q in [0, 2^b - 1], Delta = (hi - lo) / (2^b - 1), z = round(-lo / Delta),
with the range widened to contain 0 so that 0 is exactly representable
(zero padding and ReLU produce exact zeros).
Symmetric: z = 0 and q in [-2^(b-1), 2^(b-1) - 1], Delta = max(|lo|, |hi|) / (2^(b-1) - 1);
a tensor with lo >= 0 uses the unsigned grid [0, 2^b - 1] instead.
"""
import torch

MIN_SCALE = 1e-12


def quantization_parameters(lo, hi, bits, symmetric=False):
    """(scale, zero_point, q_min, q_max) for the range [lo, hi]. ``lo`` and
    ``hi`` are tensors: one value (per tensor) or one per channel."""
    lo = torch.as_tensor(lo, dtype=torch.float64).clamp(max=0.0)
    hi = torch.as_tensor(hi, dtype=torch.float64).clamp(min=0.0)
    levels = 2 ** bits - 1
    if symmetric and bool((lo < 0).any()):
        q_min, q_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = (torch.maximum(-lo, hi) / q_max).clamp_min(MIN_SCALE)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    elif symmetric:
        q_min, q_max = 0, levels
        scale = (hi / levels).clamp_min(MIN_SCALE)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        q_min, q_max = 0, levels
        scale = ((hi - lo) / levels).clamp_min(MIN_SCALE)
        zero_point = torch.round(-lo / scale).clamp(q_min, q_max).to(torch.int32)
    return scale.float(), zero_point, q_min, q_max


def quantize_to_grid(x, scale, zero_point, q_min, q_max, axis=None):
    """x_hat: ``x`` rounded onto the grid (and clamped to it), in float.
    ``axis`` is the channel axis of per-channel parameters, else None."""
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, zero_point = scale.view(shape), zero_point.view(shape)
    q = torch.clamp(torch.round(x / scale) + zero_point, q_min, q_max)
    return ((q - zero_point) * scale).to(x.dtype)


def weight_parameters(weight, bits, per_channel=False, symmetric=False):
    """Quantization parameters of a weight tensor from its min and max: one
    scale and zero point for the whole tensor, or one per output channel."""
    if per_channel:
        flat = weight.detach().reshape(weight.shape[0], -1)
        return quantization_parameters(flat.amin(1), flat.amax(1), bits, symmetric)
    return quantization_parameters(weight.detach().min(), weight.detach().max(), bits, symmetric)
