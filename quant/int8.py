"""Real int8: the fake-quant model on PyTorch's integer kernels.

``export_int8(qm)`` rebuilds the graph of a model from ``quantize``/``dfq``
with torch.ao's quantized modules (x86 backend), reusing exactly the scales
and zero points DFQ chose, so that it computes what the fake-quant model
simulates:
  - a layer whose output goes (through a ReLU) into an activation quantizer
    becomes a quantized Conv/ConvReLU/Linear/LinearReLU writing that
    quantizer's grid;
  - an add or concat followed by a quantizer becomes a quantized add
    (add_relu) or cat;
  - pooling, flatten and dropout run on the quantized tensor as they are;
  - anything else (the logits layer, ops without an integer kernel) runs in
    float between a dequantize and, where a quantizer follows, a quantize.
Weights keep their values exactly; ``_quantized_weight`` says how their
grid is laid on qint8.
"""
import copy
import operator
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from . import activations as A
from .files import atomic_write
from .modules import QuantAct, QuantLayer

_ADD = {operator.add, operator.iadd, torch.add}


@dataclass
class ExportReport:
    integer: list = field(default_factory=list)  # layers and ops on integer kernels
    float: list = field(default_factory=list)    # (node, why it stays in float)


class ExportError(Exception):
    """A fake-quant model the integer kernels cannot reproduce."""


def _qparams(act):
    """(scale, zero point, dtype) of a QuantAct as torch's quint8 grid."""
    offset = -act.q_min  # a signed symmetric grid [-128, 127] is quint8 with zero point 128
    return act.scale.item(), act.zero_point.item() + offset, torch.quint8


def _quantized_weight(layer):
    """The layer's fake-quant weights as a qint8 tensor with the same values.

    Weight k on the grid is s (q - z). Any qint8 zero point z' represents it as
    q' = (q - z) + z', so z' is free within [-128 - min(q - z), 127 - max(q - z)].
    It is chosen as close to 0 as that allows, keeping |q'| small: x86 kernels
    multiply uint8 activations by int8 weights in pairs summed into int16, which
    saturates when adjacent |q'| are large (the grid [0, 255] shifted to
    [-128, 127], as a 4-bit grid [0, 15] would be, has every |q'| near 128).
    """
    w = layer.weight.detach()  # already on the grid: quantizing it again is exact
    per_channel = layer.per_channel
    scale = layer.weight_scale.double()
    steps = torch.round(w.double() / (scale.view(-1, *[1] * (w.dim() - 1)) if per_channel else scale))
    flat = steps.reshape(w.shape[0] if per_channel else 1, -1)
    zero_point = torch.zeros(flat.shape[0], dtype=torch.float64).clamp(-128 - flat.amin(1), 127 - flat.amax(1)).long()
    if per_channel:
        if bool((zero_point != 0).any()):
            # Seen here: depthwise convs off by up to 15 steps from the first layer on.
            raise ExportError(f"{layer.w_bits}-bit per-channel asymmetric weights need per-channel zero points, which the x86 "
                              "int8 kernels get wrong; quantize per-channel weights with symmetric=True (--symmetric), or per tensor")
        return torch.quantize_per_channel(w, scale, zero_point, 0, torch.qint8)
    return torch.quantize_per_tensor(w, scale.item(), zero_point.item(), torch.qint8)


def _integer_layer(layer, relu, scale, zero_point):
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    if isinstance(layer, nn.Linear):
        q = (nniq.LinearReLU if relu else nnq.Linear)(layer.in_features, layer.out_features)
    elif isinstance(layer, nn.Conv2d):
        cls = nniq.ConvReLU2d if relu else nnq.Conv2d
        q = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                layer.dilation, layer.groups, True, layer.padding_mode)
    else:
        return None
    q.set_weight_bias(_quantized_weight(layer), layer.bias.detach().float())
    q.scale, q.zero_point = float(scale), int(zero_point)
    return q


def _attribute(module, path):
    for part in path.split("."):
        module = getattr(module, part)
    return module


class _Builder:
    """Walks the fake-quant graph in order and writes the integer graph. Each
    value is float or quantized with known (scale, zero point)."""

    def __init__(self, qm):
        self.qm, self.graph, self.modules, self.attributes = qm, fx.Graph(), {}, {}
        self.env, self.qparams, self.done = {}, {}, set()
        self.report = ExportReport()

    def add_module(self, name, module):
        """Adds ``module`` (a copy, if it comes from the fake-quant model) to the int8 model."""
        target = name.replace(".", "_")
        self.modules[target] = copy.deepcopy(module) if any(module is m for m in self.qm.modules()) else module
        return target

    def float_value(self, node):
        value = self.env[node]
        if node in self.qparams:
            return self.graph.call_method("dequantize", (value,))
        return value

    def set_quantized(self, node, value, qparams):
        self.env[node], self.qparams[node] = value, qparams

    def only_user(self, node, predicate):
        users = list(node.users)
        return users[0] if len(users) == 1 and predicate(users[0]) else None

    def act_after(self, node):
        """(relu node or None, QuantAct node) that ``node`` feeds directly, if any."""
        act = self.only_user(node, self.is_act)
        if act is not None:
            return None, act
        relu = self.only_user(node, lambda u: A.op_kind(self.qm, u)[0] == A.RELU)
        if relu is None:
            return None, None
        act = self.only_user(relu, self.is_act)
        if act is None:
            return None, None
        module, bounds = self.qm.get_submodule(act.target), A.op_kind(self.qm, relu)[1]
        # the quantizer's grid starts at 0 and ends inside the clip: it does the ReLU's work
        if _qparams(module)[1] != 0 or module.q_min != 0 or bounds[0] != 0.0 or module.hi.item() > bounds[1]:
            return None, None
        return relu, act

    def is_act(self, node):
        return node.op == "call_module" and isinstance(self.qm.get_submodule(node.target), QuantAct)

    def quantize_value(self, node, act_module):
        scale, zero_point, dtype = _qparams(act_module)
        source = node.args[0]
        if self.qparams.get(source) == (scale, zero_point):
            self.set_quantized(node, self.env[source], (scale, zero_point))
            return
        value = self.graph.call_function(torch.quantize_per_tensor, (self.float_value(source), scale, zero_point, dtype))
        self.set_quantized(node, value, (scale, zero_point))

    def fused(self, node, relu, act, make_value):
        """Emits an integer op writing ``act``'s grid; maps node, relu and act to it."""
        scale, zero_point, _ = _qparams(self.qm.get_submodule(act.target))
        value = make_value()
        for n in (node, relu, act):
            if n is not None:
                self.set_quantized(n, value, (scale, zero_point))
                self.done.add(n)

    def run_float(self, node, why):
        """Runs ``node`` as it is, on float inputs."""
        args = fx.node.map_arg(node.args, self.float_value)
        kwargs = fx.node.map_arg(node.kwargs, self.float_value)
        if node.op == "call_module":
            target = self.add_module(node.target, self.qm.get_submodule(node.target))
            self.env[node] = self.graph.call_module(target, args, kwargs)
        elif node.op == "get_attr":
            target = node.target.replace(".", "_")
            self.attributes[target] = _attribute(self.qm, node.target).detach().clone()
            self.env[node] = self.graph.get_attr(target)
        else:
            self.env[node] = self.graph.create_node(node.op, node.target, args, kwargs, node.name)
        if why:
            self.report.float.append((node.name, why))

    def build(self):
        for node in self.qm.graph.nodes:
            if node in self.done:
                continue
            self.visit(node)
        return fx.GraphModule(self._root(), self.graph, class_name="Int8Model")

    def _root(self):
        root = nn.Module()
        for name, module in self.modules.items():
            root.add_module(name, module)
        for name, value in self.attributes.items():
            root.register_buffer(name, value.detach())
        return root

    def visit(self, node):
        import torch.ao.nn.quantized as nnq

        if node.op == "placeholder":
            self.env[node] = self.graph.placeholder(node.name)
        elif node.op == "output":
            self.graph.output(fx.node.map_arg(node.args[0], self.float_value))
        elif self.is_act(node):
            self.quantize_value(node, self.qm.get_submodule(node.target))
        elif node.op == "call_module" and isinstance(self.qm.get_submodule(node.target), QuantLayer):
            layer = self.qm.get_submodule(node.target)
            relu, act = self.act_after(node)
            quantized_input = node.args[0] in self.qparams
            integer = None
            if act is not None and quantized_input and layer.w_bits and layer.w_bits <= 8:
                scale, zero_point, _ = _qparams(self.qm.get_submodule(act.target))
                integer = _integer_layer(layer, relu is not None, scale, zero_point)
            if integer is None:
                why = ("its output has no quantization range (the logits)" if act is None else
                       "float weights" if not layer.w_bits or layer.w_bits > 8 else
                       "its input is not quantized" if not quantized_input else "no integer kernel for this layer type")
                return self.run_float(node, why)
            target = self.add_module(node.target, integer)
            self.fused(node, relu, act, lambda: self.graph.call_module(target, (self.env[node.args[0]],)))
            self.report.integer.append(node.target)
        elif A.op_kind(self.qm, node)[0] in (A.ADD, A.CAT):
            self.visit_add_or_cat(node, nnq)
        elif A.op_kind(self.qm, node)[0] in (A.POOL, A.IDENTITY, A.FLATTEN) and node.args and node.args[0] in self.qparams:
            self.run_float_on_quantized(node)
        else:
            self.run_float(node, "" if node.op == "get_attr" else "no integer kernel")

    def run_float_on_quantized(self, node):
        """Pooling, flatten and dropout work on quantized tensors and keep their grid."""
        args = fx.node.map_arg(node.args, lambda n: self.env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.env[n])
        if node.op == "call_module":
            target = self.add_module(node.target, self.qm.get_submodule(node.target))
            value = self.graph.call_module(target, args, kwargs)
        else:
            value = self.graph.create_node(node.op, node.target, args, kwargs, node.name)
        self.set_quantized(node, value, self.qparams[node.args[0]])
        self.report.integer.append(node.name)

    def visit_add_or_cat(self, node, nnq):
        kind = A.op_kind(self.qm, node)[0]
        inputs = node.args[0] if kind == A.CAT else node.args[:2]
        relu, act = self.act_after(node)
        if act is None or not all(isinstance(i, fx.Node) and i in self.qparams for i in inputs):
            return self.run_float(node, "not followed by a quantizer" if act is None else "an input is not quantized")
        functional = nnq.QFunctional()
        scale, zero_point, _ = _qparams(self.qm.get_submodule(act.target))
        functional.scale, functional.zero_point = float(scale), int(zero_point)
        target = self.add_module(f"{node.name}_int8", functional)
        if kind == A.CAT:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            make = lambda: self.graph.call_method("cat", (self.graph.get_attr(target), [self.env[i] for i in inputs], dim))
        else:
            method = "add_relu" if relu is not None else "add"
            make = lambda: self.graph.call_method(method, (self.graph.get_attr(target), self.env[inputs[0]], self.env[inputs[1]]))
        self.fused(node, relu, act, make)
        self.report.integer.append(node.name)


@torch.no_grad()
def export_int8(qm, check=None, min_agreement=0.9):
    """Returns (int8 GraphModule, ExportReport) for a fake-quant model.

    ``check``: an input batch; the export is refused (ExportError) unless the
    int8 model's top-1 agrees with the fake-quant model's on at least
    ``min_agreement`` of it. Pass one for every configuration: that the
    integer kernels reproduce the grid is checked, not assumed. (They round
    a rare accumulator differently, by one step; in a deep network those
    steps add up to a few flipped predictions, never to nonsense.)
    """
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        builder = _Builder(qm)
        int8 = builder.build()
        if not builder.report.integer:
            raise ExportError("nothing runs on integer kernels: the model has no quantized activations or weights "
                              "(quantize with a_bits and w_bits of at most 8)")
        int8.eval()
        if check is not None:
            agreement = (int8(check).argmax(1) == qm(check).argmax(1)).float().mean().item()
            if agreement < min_agreement:
                raise ExportError(f"the int8 kernels agree with the fake-quant model on only {100 * agreement:.1f}% "
                                  f"of the check batch; this configuration cannot be exported exactly")
    return int8, builder.report


def save_int8(int8, path):
    """Saves the int8 model as TorchScript (loadable without this library),
    through a temporary file renamed into place."""
    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices
            torch.jit.save(torch.jit.script(int8), tmp)

    atomic_write(path, write)


def load_int8(path):
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(path).eval()
