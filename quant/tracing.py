"""Tracing a model with torch.fx so that its layers stay whole.

Every step of DFQ works on the traced graph: a pattern (conv -> BN, conv ->
ReLU -> conv) is a path of nodes, found the same way in any traceable model.
"""
import copy

import torch.fx as fx
import torch.nn as nn

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


class TraceError(Exception):
    """torch.fx could not trace the model."""


class LeafTracer(fx.Tracer):
    """Keeps convolutions, linear layers and batch norms as single modules,
    subclasses included: models often subclass ``nn.Conv2d`` (for 'same'
    padding, weight standardization, ...) and fx would otherwise trace into
    their forward and lose the layer."""

    def is_leaf_module(self, m, qualname):
        if isinstance(m, LAYER_TYPES + BATCHNORM_TYPES):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model):
    """Returns an ``fx.GraphModule`` of a deep copy of ``model``."""
    if isinstance(model, fx.GraphModule):
        return copy.deepcopy(model)
    model = copy.deepcopy(model)
    try:
        graph = LeafTracer().trace(model)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: {first_line}. "
            "DFQ needs a static graph: move data-dependent control flow out of forward() or mark that submodule as a leaf"
        ) from None
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def module_of(gm, node):
    """The submodule a ``call_module`` node calls, else None."""
    if node.op == "call_module":
        return gm.get_submodule(node.target)
    return None


def layer_of(gm, node):
    """The conv or linear layer a node calls, else None."""
    m = module_of(gm, node)
    return m if isinstance(m, LAYER_TYPES) else None


def layer_nodes(gm):
    """``call_module`` nodes of conv and linear layers, in execution order."""
    return [n for n in gm.graph.nodes if layer_of(gm, n) is not None]


def call_counts(gm):
    """How many times each submodule is called: a layer called twice shares
    its weights between two places, and rescaling it for one breaks the other."""
    counts = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            counts[n.target] = counts.get(n.target, 0) + 1
    return counts


def describe(gm, node):
    """A short human name for a node: its module path and type, or its function."""
    m = module_of(gm, node)
    if m is not None:
        return f"{node.target} ({type(m).__name__})"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f".{node.target}()"
    return f"{node.op} {node.target}"
