"""Data-Free Quantization (Nagel et al., ICCV 2019) on torch.fx.

    gm = fold_batchnorm(model)        # new GraphModule; BN statistics kept on the layers
    replace_relu6(gm)                 # ReLU6 -> ReLU, so that CLE keeps the function
    equalize(gm)                      # cross-layer equalization
    absorb_high_bias(gm)              # move c = max(0, beta - 3|gamma|) into the next layer
    qm = quantize(gm, w_bits=8, a_bits=8, input_range=(lo, hi))
    correct_bias(qm, gm)              # analytic bias correction
or all at once: ``qm = dfq(model, input_range=(lo, hi))``.
"""
from .absorption import AbsorptionReport, absorb_high_bias
from .activations import replace_relu6
from .batchnorm import fold_batchnorm
from .bias_correction import BiasCorrectionReport, correct_bias
from .equalization import EqualizationReport, equalize, equalize_pair
from .files import atomic_write
from .int8 import ExportError, ExportReport, export_int8, load_int8, save_int8
from .modules import QuantAct, QuantConv1d, QuantConv2d, QuantConv3d, QuantLayer, QuantLinear, quantized_layer
from .pairs import find_pairs
from .pipeline import dfq
from .quantize import DEFAULT_N_STD, activation_points, calibrate, quantize
from .quantizers import quantization_parameters, quantize_to_grid, weight_parameters
from .statistics import clipped_normal_moments, propagate_statistics
from .tracing import TraceError, trace

__all__ = [
    "DEFAULT_N_STD", "atomic_write", "ExportError", "ExportReport", "export_int8", "load_int8", "save_int8", "AbsorptionReport", "BiasCorrectionReport", "EqualizationReport", "QuantAct", "QuantConv1d", "QuantConv2d",
    "QuantConv3d", "QuantLayer", "QuantLinear", "TraceError", "absorb_high_bias", "activation_points", "calibrate",
    "clipped_normal_moments", "correct_bias", "dfq", "equalize", "equalize_pair", "find_pairs", "fold_batchnorm",
    "propagate_statistics", "quantization_parameters", "quantize", "quantize_to_grid", "quantized_layer",
    "replace_relu6", "trace", "weight_parameters",
]
