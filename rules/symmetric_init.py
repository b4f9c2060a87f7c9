"""IL106 symmetric-init."""

from __future__ import annotations

import math

import networkx as nx

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import Activation, ConvParams, Op, OpKind
from initlint.patterns import CARRIERS, is_norm, sig
from initlint.registry import rule

# What lies between a hidden layer and the next weight layer: ops that keep units apart or only rescale them,
# norms, and concatenation (the tied units stay tied inside the wider tensor).
_THROUGH = CARRIERS | {OpKind.NORM, OpKind.CONCAT}
_NEXT = frozenset({OpKind.LINEAR, OpKind.CONV, OpKind.RECURRENT})
_RELU_LIKE = frozenset({Activation.RELU, Activation.RELU6, Activation.LEAKY_RELU, Activation.PRELU,
                        Activation.RRELU, Activation.GELU, Activation.SILU, Activation.MISH, Activation.ELU,
                        Activation.CELU, Activation.HARDSWISH})
_GAINS = {"relu": math.sqrt(2.0), "tanh": 5.0 / 3.0, "selu": 0.75, "linear": 1.0}


@rule("IL106", "symmetric-init", applies_to={OpKind.LINEAR, OpKind.CONV}, severity=Severity.WARNING)
def symmetric_init(op: Op, graph: ModelGraph) -> Issue | None:
    """
    ## What it does
    Finds hidden layers (linear or conv layers whose output feeds another weight layer) whose trainable
    weight is constant: every element equal, zero included.

    Deliberate zero and constant inits are not hidden layers and are not reported: the last layer of a
    residual branch (its output meets the skip in an add: Fixup, ControlNet's zero convs, LoRA's `B`), an
    output head, a gate or modulation (its output multiplies another signal: adaLN-Zero), biases, LayerScale
    and ReZero factors, and norm weights (ones by design). Frozen constant filters (a box blur kept as a
    buffer or with `requires_grad=False`) are not reported either.

    ## Why is this bad?
    With equal weights, and equal biases, all units of the layer compute the same value: the layer's output
    has rank one, whatever its width. If every weight layer it feeds also has equal weights (the
    `nn.init.constant_` everywhere mistake) the units also receive equal gradients and stay identical for
    ever: the network has one unit per layer, and the finding is an error. If the next layer is random, its
    different columns hand the units different gradients and they separate after the first step, from a
    degenerate start (warning); measured on a 16-32-32-1 tanh MLP, a constant first layer followed by random
    ones reaches full rank after training, a constant stack with constant biases never does.

    An all-zero hidden layer outputs only its bias and passes no gradient back: the layers before it get
    none until it has grown, and its own first update is a sum of outer products of one gradient with the
    batch's inputs.

    A norm after the layer does not help: normalizing identical units leaves them identical (or zero).

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.weight, 0.1)
            nn.init.zeros_(m.bias)
    example_inputs = torch.randn(8, 16)
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=nn.init.calculate_gain("tanh"))
            nn.init.zeros_(m.bias)
    nn.init.zeros_(model[4].weight)  # a zero output head is fine: it is not a hidden layer
    example_inputs = torch.randn(8, 16)
    ```

    ## References
    - Goodfellow, Bengio & Courville 2016, "Deep Learning", section 8.4 (breaking symmetry)
    - Zhang, Dauphin & Ma 2019, "Fixup Initialization" (deliberate zero init of residual branches)
    """
    w = op.weight
    if w is None or w.tensor is None or not w.constant or not w.trainable:
        return None
    stops, path = _next_layers(graph, op)
    following = [s for s in stops if s.kind in _NEXT]
    if not following:
        return None  # an output head, the end of a residual branch, a gate: not a hidden layer
    units, groups = _units(op)
    per_group = units // groups
    value = w.mean
    bias_tied = op.bias is None or op.bias.constant
    if not w.zero and per_group < 2:
        return None  # one unit per group (depthwise): a constant filter ties nothing

    name = op.module or w.name
    feeds = ", ".join(f"`{s.module or s.name}`" for s in following[:3]) + (" ..." if len(following) > 3 else "")
    if groups == 1:
        who = f"its {units} units"
    elif per_group == 1:
        who = f"its {units} channels (one per group)"
    else:
        who = f"the {per_group} units of each of its {groups} groups"
    if w.zero:
        fact = f"`{w.name}` is all zeros and `{name}` feeds {feeds}"
        if bias_tied:
            tied_text = f"{who} all output {'zero' if op.bias is None else 'the same bias value'}"
        else:
            tied_text = f"{who} output only their bias"
        consequence = f"{tied_text}, and no gradient flows through it to the layers before"
    else:
        fact = f"every weight of `{name}` equals {sig(value)} and `{name}` feeds {feeds}"
        consequence = (f"{who} compute the same value" if bias_tied
                       else f"{who} compute the same weighted sum, differing only by their bias")
    permanent = bias_tied and per_group >= 2 and all(_symmetric(s) for s in following) and not any(
        graph.op(n).kind is OpKind.DROPOUT and graph.op(n).params is not None and graph.op(n).params.active
        and graph.op(n).params.p > 0 for n in path)
    if permanent:
        consequence += "; the layers it feeds have equal weights too, so the units get equal gradients and stay tied"
    nonlinearity = _nonlinearity_after(graph, op, path)
    std = _GAINS[nonlinearity] / math.sqrt(w.fan_in) if w.fan_in > 0 else 0.0
    fix = Fix(
        summary=f"Initialize `{w.name}` randomly, e.g. Kaiming normal for the {nonlinearity} that follows: std {sig(std)}",
        code=f'nn.init.normal_(model.get_parameter("{w.name}"), mean=0.0, std={sig(std)})  '
             f"# gain {sig(_GAINS[nonlinearity])} / sqrt(fan-in {_n(w.fan_in)})",
    )
    return Issue(
        message=f"{fact}: {consequence}",
        fix=fix,
        predicted={
            "units": units,
            "tied_units": per_group if bias_tied else 0,
            "distinct_outputs_per_group": 1 if bias_tied else per_group,
            "weight_value": value,
            "input_gradient": 0.0 if w.zero else None,
            "permanent": permanent,
        },
        severity=Severity.ERROR if permanent else None,
    )


def _next_layers(graph: ModelGraph, op: Op) -> tuple[list[Op], set[str]]:
    """The first ops after ``op`` that are neither carriers, norms nor concatenations, and the ops on the way."""

    def through(n: str) -> bool:
        o = graph.ops[n]
        return n == op.name or o.kind in _THROUGH or is_norm(graph, o)

    view = nx.subgraph_view(graph.dag, filter_node=through)
    path = nx.descendants(view, op.name)
    reach = path | {op.name}
    stops = {s for n in reach for s in graph.dag.successors(n) if s not in reach}
    return [o for o in graph if o.name in stops], path


def _units(op: Op) -> tuple[int, int]:
    p = op.params
    if isinstance(p, ConvParams):
        return p.out_channels, max(p.groups, 1)
    return int(op.weight.shape[0]), 1


def _symmetric(op: Op) -> bool:
    """A following layer that treats all its input units alike: its weights are equal too."""
    return op.weight is not None and op.weight.constant


def _nonlinearity_after(graph: ModelGraph, op: Op, path: set[str]) -> str:
    acts = [o.params.fn for o in graph if o.name in path and o.kind is OpKind.ACTIVATION and o.params is not None]
    if not acts:
        return "linear"
    first = acts[0]
    if first in _RELU_LIKE:
        return "relu"
    if first is Activation.SELU:
        return "selu"
    if first in (Activation.TANH, Activation.HARDTANH, Activation.SOFTSIGN):
        return "tanh"
    return "linear"


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else sig(x)
