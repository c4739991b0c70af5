"""Turning a (folded, equalized) float graph into a fake-quantized one.

Weights: every conv and linear layer becomes a QuantLayer.
Activations: quantized wherever an integer kernel would read an 8-bit tensor:
  - the network input;
  - the output of every conv/linear layer, add, concat and pooling op, taken
    after the ReLU/ReLU6 that directly follows it (an integer kernel fuses
    the activation and writes the clipped result);
  - and, whatever produced it, the input of every conv and linear layer.
The network's output (the logits) stays in float.
"""
import copy
import math

import torch

from . import activations as A
from .modules import QuantAct, quantized_layer
from .statistics import propagate_statistics
from .tracing import layer_nodes, layer_of

# Data-free activation ranges are beta +- n |gamma| (then clipped by the
# activation). A small n clips the tails real activations have; a large n
# spends the 256 levels on values that never occur. On torchvision's
# MobileNetV2 (ImageNet subset, W8A8 DFQ: main.py --dataset imagenet --n-std n)
# 94.6, 96.2, 95.6, 95.0 and 94.7% of FP32's predictions are kept for
# n = 3, 4, 5, 6 and 8: n = 4.
DEFAULT_N_STD = 4.0

_PRODUCERS = {A.ADD, A.CAT, A.POOL}
_PASS_THROUGH = {A.IDENTITY, A.FLATTEN, A.PAD}


def _group_output(gm, node):
    """The node an integer kernel would write for ``node``: the node itself,
    or the ReLU-type activation that is its only user."""
    users = list(node.users)
    if len(users) == 1 and A.op_kind(gm, users[0])[0] == A.RELU:
        return users[0]
    return node


def activation_points(gm):
    """Names of the nodes whose outputs are quantized, in graph order."""
    points = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            points.add(node)
        elif layer_of(gm, node) is not None or A.op_kind(gm, node)[0] in _PRODUCERS:
            points.add(_group_output(gm, node))
    for node in layer_nodes(gm):
        source = node.args[0]
        while source not in points and A.op_kind(gm, source)[0] in _PASS_THROUGH:
            source = source.args[0]
        if source not in points:
            points.add(node.args[0])
    outputs = {n for n in gm.graph.nodes if n.op == "output"}
    return [n.name for n in gm.graph.nodes if n in points and not (set(n.users) <= outputs)]


def quantize(gm, w_bits=8, a_bits=8, per_channel=False, symmetric=False, bias_bits=32, act_range="bn",
             n_std=DEFAULT_N_STD, input_range=None, calib_data=None, float_layers=()):
    """Returns a fake-quantized copy of ``gm`` (a graph from ``fold_batchnorm``).

    w_bits / a_bits / bias_bits: None or 0 leaves that part in float.
    per_channel, symmetric: the weight quantizer (activations are per tensor;
        ``symmetric`` applies to them too).
    act_range: "bn" for data-free ranges from the folded BN statistics
        (beta +- n_std |gamma|, clipped by the activation, carried through
        adds, concats and pools); "calib" for the min/max seen on
        ``calib_data`` (a tensor of inputs or an iterable of batches).
    input_range: (lo, hi) of the network input, needed by "bn" (normalized
        images: (min(-mean/std), max((1-mean)/std))).
    float_layers: names of conv/linear layers whose weights stay in float.
    ``qm.meta["act_quantizers"]`` maps the name of each quantized tensor's
    node in ``gm`` to its QuantAct.
    """
    if act_range not in ("bn", "calib"):
        raise ValueError(f"act_range must be 'bn' or 'calib', not {act_range!r}")
    qm = copy.deepcopy(gm)
    for node in layer_nodes(qm):
        parent, _, name = node.target.rpartition(".")
        bits = None if node.target in float_layers else w_bits
        layer = quantized_layer(qm.get_submodule(node.target), bits, per_channel, symmetric, bias_bits)
        setattr(qm.get_submodule(parent) if parent else qm, name, layer)
    qm.meta["act_quantizers"] = {}
    if a_bits:
        quantizers = _insert_activation_quantizers(qm, a_bits, symmetric)
        qm.meta["act_quantizers"] = {name: q for name, q in quantizers.items()}
        if act_range == "bn":
            _set_bn_ranges(gm, quantizers, n_std, input_range)
        else:
            calibrate(qm, quantizers, calib_data)
        _drop_redundant_relus(qm)
    return qm


def _drop_redundant_relus(qm):
    """Removes each ReLU (or ReLU6) whose only user is a quantizer with the grid
    [0, hi], hi inside the clip: the quantizer's clamp does the same (round(x/s)
    <= 0 for x < 0), so the output is unchanged and one pass over the tensor is
    saved, as an integer kernel with a fused activation saves it."""
    for node in list(qm.graph.nodes):
        kind, bounds = A.op_kind(qm, node)
        users = list(node.users)
        if kind != A.RELU or len(users) != 1 or users[0].op != "call_module":
            continue
        act = qm.get_submodule(users[0].target)
        if isinstance(act, QuantAct) and bounds[0] == 0.0 and act.q_min == 0 and act.zero_point.item() == 0 and act.hi.item() <= bounds[1]:
            users[0].replace_input_with(node, node.args[0])
            qm.graph.erase_node(node)
    qm.graph.lint()
    qm.recompile()


def _insert_activation_quantizers(qm, bits, symmetric):
    """Inserts a QuantAct after each activation point; returns {node name: QuantAct}."""
    by_name = {n.name: n for n in qm.graph.nodes}
    quantizers = {}
    for i, name in enumerate(activation_points(qm)):
        node = by_name[name]
        module = QuantAct(bits, symmetric)
        target = f"act_quant_{i}"
        qm.add_module(target, module)
        with qm.graph.inserting_after(node):
            q = qm.graph.call_module(target, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
        quantizers[name] = module
    qm.graph.lint()
    qm.recompile()
    return quantizers


def _set_bn_ranges(gm, quantizers, n_std, input_range):
    has_input = any(n.op == "placeholder" for n in gm.graph.nodes if n.name in quantizers)
    if input_range is None and has_input:
        raise ValueError("act_range='bn' needs input_range=(lo, hi) for the network input, which has no BN statistics "
                         "(for normalized images: the normalized values of pixels 0 and 1)")
    stats = propagate_statistics(gm, n_std, input_range=input_range)
    missing = [name for name in quantizers if stats.get(name) is None or not math.isfinite(stats[name].hi.max())]
    if missing:
        raise ValueError(f"no data-free range for {', '.join(missing[:5])}: no folded BN describes "
                         f"{'them' if len(missing) > 1 else 'it'}; use act_range='calib'")
    for name, quantizer in quantizers.items():
        quantizer.set_range(stats[name].lo.min().item(), stats[name].hi.max().item())


def batches_of(data):
    """Yields input tensors from a tensor (one batch), or an iterable of
    tensors or (input, label) pairs."""
    if isinstance(data, torch.Tensor):
        yield data
        return
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def calibrate(qm, quantizers, data):
    """Sets each activation quantizer's range to the min/max it sees on
    ``data`` (with the weights already quantized)."""
    if data is None:
        raise ValueError("act_range='calib' needs calib_data: a tensor of inputs or an iterable of batches")
    for q in quantizers.values():
        q.observing = True
    qm.eval()
    seen = 0
    for x in batches_of(data):
        qm(x)
        seen += len(x)
    if not seen:
        raise ValueError("calib_data holds no inputs")
    for q in quantizers.values():
        q.observing = False
        q.set_range(q.lo.item(), q.hi.item())
