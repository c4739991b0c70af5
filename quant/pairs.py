"""Finding the layer pairs that CLE and high-bias absorption may touch.

A pair (layer 1, layer 2) is two conv/linear layers joined only through ops
with f(s x) = s f(x) per channel, where every tensor on the way has exactly
one user. Rescaling channel i of layer 1's output by 1/s_i and layer 2's
input channel i by s_i then leaves the network's function unchanged. Any
fan-out, residual add, concat, ReLU6 or other op ends the search: the other
branch (or the op) would see the rescaled tensor.
"""
from dataclasses import dataclass, field

import torch.nn as nn

from . import activations as A
from .tracing import call_counts, describe, layer_nodes, layer_of


@dataclass
class LayerPair:
    first: str                 # module name of layer 1
    second: str                # module name of layer 2
    ops: list = field(default_factory=list)  # (kind, clip bounds) of each op between them

    @property
    def relu_between(self):
        """True when exactly one ReLU (no upper clip) sits between the layers
        and every other op commutes with subtracting a per-channel constant,
        as high-bias absorption needs."""
        relus = [b for k, b in self.ops if k == A.RELU]
        others = {k for k, _ in self.ops if k != A.RELU}
        return len(relus) == 1 and relus[0] == (0.0, float("inf")) and others <= {A.IDENTITY, A.FLATTEN, A.POOL, A.PAD}


@dataclass
class Skipped:
    layer: str
    reason: str


def _follow(gm, start, calls):
    """Walks forward from layer node ``start``; returns (pair or None, reason)."""
    first = layer_of(gm, start)
    node, ops, flattened = start, [], False
    while True:
        users = list(node.users)
        if not users or any(u.op == "output" for u in users):
            return None, "its output is the network's output"
        if len(users) > 1:
            return None, f"fan-out: {node.name} feeds {len(users)} ops ({', '.join(describe(gm, u) for u in users[:3])})"
        user = users[0]
        second = layer_of(gm, user)
        if second is not None:
            if calls[user.target] != 1:
                return None, f"{user.target} is called more than once (shared weights)"
            if isinstance(second, nn.Linear) != (isinstance(first, nn.Linear) or flattened):
                return None, f"{user.target} does not read {start.target}'s channels as channels"
            channels = first.weight.shape[0]
            reads = second.weight.shape[1] * (1 if isinstance(second, nn.Linear) else second.groups)
            if reads % channels or (not flattened and reads != channels):
                return None, f"{user.target} reads {reads} channels, {start.target} writes {channels}"
            return LayerPair(start.target, user.target, ops), None
        kind, bounds = A.op_kind(gm, user)
        if kind == A.RELU and bounds != (0.0, float("inf")):
            name = "ReLU6" if A.is_relu6(bounds) else f"clip to {bounds}"
            return None, f"{name} at {describe(gm, user)} does not commute with scaling (run replace_relu6 first)"
        if kind not in A.SCALE_EQUIVARIANT and kind != A.RELU:
            what = {A.ADD: "residual add", A.CAT: "concat"}.get(kind, "op that does not commute with per-channel scaling")
            return None, f"{what}: {describe(gm, user)}"
        flattened |= kind == A.FLATTEN
        ops.append((kind, bounds))
        node = user


def find_pairs(gm):
    """Returns (pairs, skipped): every layer pair of ``gm``, and for each layer
    that starts no pair the reason why."""
    calls = call_counts(gm)
    pairs, skipped = [], []
    for node in layer_nodes(gm):
        if calls[node.target] != 1:
            skipped.append(Skipped(node.target, "called more than once (shared weights)"))
            continue
        pair, reason = _follow(gm, node, calls)
        if pair is None:
            skipped.append(Skipped(node.target, reason))
        else:
            pairs.append(pair)
    return pairs, skipped


def chains_of(pairs):
    """Groups pairs into chains L0 -> L1 -> ... -> Lk (lists of pairs). Each
    layer has one input tensor and one user, so the pairs link into paths."""
    by_first = {p.first: p for p in pairs}
    seconds = {p.second for p in pairs}
    chains = []
    for p in pairs:
        if p.first in seconds:
            continue
        chain = [p]
        while chain[-1].second in by_first:
            chain.append(by_first[chain[-1].second])
        chains.append(chain)
    return chains
