"""The whole DFQ pipeline, each step switchable."""
from .absorption import absorb_high_bias
from .activations import replace_relu6
from .batchnorm import fold_batchnorm
from .bias_correction import correct_bias
from .equalization import equalize
from .quantize import quantize


def dfq(model, w_bits=8, a_bits=8, *, relu6_to_relu=True, cle=True, absorb=True, bias_correction="analytic",
        absorb_n_std=3.0, data=None, input_mean=0.0, input_std=1.0, **quantize_kwargs):
    """Data-free quantization of ``model`` (not changed): fold BN, replace
    ReLU6 with ReLU, equalize, absorb high biases, quantize, correct biases.

    bias_correction: "analytic" (data-free), "empirical" (on ``data``) or None.
    Other keywords go to ``quantize`` (per_channel, symmetric, bias_bits,
    act_range, n_std, input_range, calib_data, float_layers).
    Returns the fake-quant GraphModule; ``qm.meta["dfq"]`` holds each step's report.
    """
    gm = fold_batchnorm(model)
    reports = {}
    if relu6_to_relu:
        replace_relu6(gm)
    if cle:
        reports["equalize"] = equalize(gm)
    if absorb:
        reports["absorb"] = absorb_high_bias(gm, absorb_n_std)
    qm = quantize(gm, w_bits, a_bits, **quantize_kwargs)
    if bias_correction == "analytic":
        reports["bias_correction"] = correct_bias(qm, gm, input_mean=input_mean, input_std=input_std)
    elif bias_correction == "empirical":
        if data is None:
            raise ValueError("bias_correction='empirical' needs data")
        reports["bias_correction"] = correct_bias(qm, gm, data)
    elif bias_correction:
        raise ValueError(f"bias_correction must be 'analytic', 'empirical' or None, not {bias_correction!r}")
    qm.meta["dfq"] = reports
    return qm
