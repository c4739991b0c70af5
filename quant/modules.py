"""Fake-quantized layers: float modules whose weights, biases and activations
hold exactly the values an integer kernel would use.

Weights are rounded once, when the layer is made (and again by
``requantize`` after bias correction changes the float bias), not on every
forward: ``weight`` holds the quantized values, ``float_weight`` the
originals. The forward pass is the float layer's own, so a fake-quant model
runs at float speed plus the activation quantizers.
"""
import torch
import torch.nn as nn

from .quantizers import quantization_parameters, quantize_to_grid, weight_parameters

EXACT_BIAS_BITS = 24  # float32 holds 24 significant bits: a wider bias grid is the float bias itself


class QuantLayer:
    """Mixin for conv and linear layers with quantized weights and bias."""

    def setup_quantization(self, w_bits, per_channel, symmetric, bias_bits):
        self.w_bits, self.per_channel, self.symmetric, self.bias_bits = w_bits, per_channel, symmetric, bias_bits
        self.register_buffer("float_weight", self.weight.detach().clone())
        if self.bias is None:  # bias correction needs somewhere to put its correction
            self.bias = nn.Parameter(torch.zeros(self.weight.shape[0], dtype=self.weight.dtype, device=self.weight.device))
        self.register_buffer("float_bias", self.bias.detach().clone())
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        self.requantize()

    @torch.no_grad()
    def requantize(self):
        """Rounds ``float_weight`` and ``float_bias`` onto their grids."""
        if self.w_bits:
            scale, zero_point, q_min, q_max = weight_parameters(self.float_weight, self.w_bits, self.per_channel, self.symmetric)
            axis = 0 if self.per_channel else None
            self.weight.copy_(quantize_to_grid(self.float_weight, scale, zero_point, q_min, q_max, axis))
            self.weight_scale, self.weight_zero_point = scale, zero_point
        else:
            self.weight.copy_(self.float_weight)
        if self.bias_bits and self.bias_bits < EXACT_BIAS_BITS:
            amax = self.float_bias.abs().max()
            scale, zero_point, q_min, q_max = quantization_parameters(-amax, amax, self.bias_bits, symmetric=True)
            self.bias.copy_(quantize_to_grid(self.float_bias, scale, zero_point, q_min, q_max))
        else:
            self.bias.copy_(self.float_bias)

    def extra_repr(self):
        w = f"w_bits={self.w_bits}, {'per-channel' if self.per_channel else 'per-tensor'}, {'symmetric' if self.symmetric else 'asymmetric'}"
        return f"{super().extra_repr()}, {w}, bias_bits={self.bias_bits}"


class QuantConv1d(QuantLayer, nn.Conv1d):
    pass


class QuantConv2d(QuantLayer, nn.Conv2d):
    pass


class QuantConv3d(QuantLayer, nn.Conv3d):
    pass


class QuantLinear(QuantLayer, nn.Linear):
    pass


_QUANT_CLASSES = {nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Conv3d: QuantConv3d, nn.Linear: QuantLinear}


def quantized_layer(layer, w_bits=8, per_channel=False, symmetric=False, bias_bits=32):
    """The fake-quant version of a conv or linear layer (a new module; a
    subclass of ``nn.Conv2d`` keeps its own forward)."""
    import copy

    q = copy.deepcopy(layer)
    base = type(layer)
    q.__class__ = _QUANT_CLASSES.get(base) or type(f"Quant{base.__name__}", (QuantLayer, base), {})
    q.setup_quantization(w_bits, per_channel, symmetric, bias_bits)
    return q


class QuantAct(nn.Module):
    """Per-tensor activation quantizer with a fixed range [lo, hi].

    While ``observing`` it passes tensors through and widens [lo, hi] to
    their min and max (calibration); ``set_range`` fixes the grid.
    """

    def __init__(self, bits=8, symmetric=False):
        super().__init__()
        self.bits, self.symmetric, self.observing = bits, symmetric, False
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.q_min, self.q_max = 0, 2 ** bits - 1

    @torch.no_grad()
    def set_range(self, lo, hi):
        self.lo.fill_(float(lo))
        self.hi.fill_(float(hi))
        scale, zero_point, self.q_min, self.q_max = quantization_parameters(self.lo, self.hi, self.bits, self.symmetric)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)

    def forward(self, x):
        if self.observing:
            self.lo.fill_(min(self.lo.item(), x.min().item()))
            self.hi.fill_(max(self.hi.item(), x.max().item()))
            return x
        # clamp(round(x / scale) + z, q_min, q_max) - z, written so that it
        # takes one new tensor and three in-place passes: several times
        # faster than torch.fake_quantize_per_tensor_affine, which also
        # computes a gradient mask.
        scale, zero_point = self.scale.item(), self.zero_point.item()
        return (x * (1.0 / scale)).round_().clamp_(self.q_min - zero_point, self.q_max - zero_point).mul_(scale)

    def extra_repr(self):
        return f"bits={self.bits}, range=[{self.lo.item():.4g}, {self.hi.item():.4g}], scale={self.scale.item():.4g}, zero_point={self.zero_point.item()}"
