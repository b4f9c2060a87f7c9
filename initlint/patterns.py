"""Graph patterns more than one rule asks about: normalization, residual adds, repeated blocks, weight families.

Small pure functions of a :class:`~initlint.graph.ModelGraph` and an op, in the manner of networkx's
algorithms. They read only the typed records and the frozen ``dag``.

>>> from initlint.ops import Op, OpKind, NormKind, NormParams
>>> from initlint.graph import ModelGraph, Capture
>>> g = ModelGraph.build("m", Capture.FX, [
...     Op("x", OpKind.INPUT, "input"),
...     Op("f", OpKind.ACTIVATION, "relu", inputs=("x",)),
...     Op("add", OpKind.ADD, "add", inputs=("x", "f")),
...     Op("ln", OpKind.NORM, "layer_norm", inputs=("add",), params=NormParams(NormKind.LAYER)),
...     Op("out", OpKind.OUTPUT, "output", inputs=("ln",)),
... ])
>>> r = residual(g, g.op("add"))
>>> r.skip.name, r.branch.name
('x', 'f')
>>> [n.name for n in normalized_after(g, g.op("add"))]
['ln']
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .graph import ModelGraph
from .ops import Activation, NormKind, Op, OpKind, Reduction

# Ops that carry a tensor's scale forward without mixing in another signal or a learned layer: what lies
# between a layer and "the next thing that matters" (a norm, a weight layer, a merge).
CARRIERS = frozenset({
    OpKind.PASSTHROUGH, OpKind.DROPOUT, OpKind.ACTIVATION, OpKind.POOL, OpKind.SCALE, OpKind.MATH, OpKind.REDUCE,
})
WEIGHT_LAYERS = frozenset({OpKind.LINEAR, OpKind.CONV, OpKind.RECURRENT, OpKind.EMBEDDING})
# Norms that normalize each sample on its own: they remove a scale in training and in eval alike.
PER_SAMPLE_NORMS = frozenset({NormKind.LAYER, NormKind.RMS, NormKind.GROUP, NormKind.INSTANCE})
# Every norm that removes a scale (local response normalization only divides by a local energy).
SCALE_NORMS = PER_SAMPLE_NORMS | {NormKind.BATCH}

_STATISTICS = frozenset({Reduction.MEAN, Reduction.VAR, Reduction.STD, Reduction.NORM})


# -- normalization -----------------------------------------------------------------------------------------


def norm_kind(graph: ModelGraph, op: Op) -> NormKind | None:
    """The normalization ``op`` performs, or ``None``.

    A ``NORM`` op gives its own kind. A product or quotient of a tensor by a statistic of the same tensor is a
    hand-written norm, as T5 and Llama write RMSNorm (``x * rsqrt(mean(x**2) + eps)``) or as one writes
    LayerNorm (``(x - mean) / sqrt(var + eps)``): ``RMS`` without mean subtraction, ``LAYER`` with it.
    """
    if op.kind is OpKind.NORM:
        return op.params.kind if op.params is not None else None
    if op.kind not in (OpKind.MUL, OpKind.DIV) or len(op.inputs) != 2:
        return None
    a, b = op.inputs
    orders = ((a, b), (b, a)) if op.kind is OpKind.MUL else ((a, b),)
    for data, stat in orders:
        roots = _statistic_roots(graph, stat)
        if not roots:
            continue
        data_side = _walk_back(graph, data, {OpKind.PASSTHROUGH, OpKind.SUB, OpKind.SCALE})
        if roots & data_side:
            centred = any(graph.op(n).kind is OpKind.SUB for n in data_side)
            return NormKind.LAYER if centred else NormKind.RMS
    return None


def _statistic_roots(graph: ModelGraph, name: str) -> set[str]:
    """If ``name`` is a per-sample statistic (via scale/math/casts from a mean, var, std or norm reduction),
    the tensors it is a statistic of; else the empty set."""
    stats = _walk_back(graph, name, {OpKind.SCALE, OpKind.MATH, OpKind.PASSTHROUGH})
    reductions = [graph.op(n) for n in stats if graph.op(n).kind is OpKind.REDUCE]
    roots: set[str] = set()
    for r in reductions:
        if r.params is not None and r.params.kind in _STATISTICS:
            for src in r.inputs:
                roots |= _walk_back(graph, src, {OpKind.MATH, OpKind.PASSTHROUGH, OpKind.SUB, OpKind.SCALE})
    return roots


def _walk_back(graph: ModelGraph, start: str, through: set[OpKind]) -> set[str]:
    """``start`` and what it is computed from through ops of the kinds ``through`` (their producers included)."""
    seen, stack = set(), [start]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        op = graph.op(name)
        if op.kind in through:
            stack.extend(op.inputs)
    return seen


def is_norm(graph: ModelGraph, op: Op, kinds: Iterable[NormKind] = SCALE_NORMS) -> bool:
    kind = norm_kind(graph, op)
    return kind is not None and kind in frozenset(kinds)


def next_stops(graph: ModelGraph, op: Op, through: Iterable[OpKind] = CARRIERS) -> tuple[Op, ...]:
    """The first ops after ``op`` that are not of the kinds ``through``, in graph order.

    A hand-written norm's statistic (``pow``, ``mean``, ``rsqrt``) is of carrier kinds, so from a tensor feeding a
    hand-written RMSNorm both of its paths stop at the normalizing product.
    """
    # A walk of the carrier region only: networkx's descendants on a filtered view measures the view's length,
    # which filters every node of the graph, and made linting quadratic in depth (benchmarks/scale.py).
    kinds = frozenset(through)
    reach, stack, stops = {op.name}, [op.name], set()
    while stack:
        for nxt in graph.dag.successors(stack.pop()):
            if nxt in reach:
                continue
            if graph.ops[nxt].kind in kinds:
                reach.add(nxt)
                stack.append(nxt)
            else:
                stops.add(nxt)
    return tuple(graph.op(n) for n in sorted(stops - reach, key=graph.position))


def normalized_after(graph: ModelGraph, op: Op, kinds: Iterable[NormKind] = SCALE_NORMS) -> tuple[Op, ...]:
    """The norms that normalize ``op``'s output before it reaches anything else, or ``()``.

    "Anything else" is a weight layer, a merge with another signal (add, product, concat, attention) or the
    model's output. Every path from ``op`` must reach a norm of one of ``kinds`` first; then a scale that
    ``op`` gets wrong is gone before it matters (in training; for BatchNorm in eval too, since its running
    statistics are collected on the same forward).
    """
    stops = next_stops(graph, op)
    if stops and all(is_norm(graph, s, kinds) for s in stops):
        return stops
    return ()


def normalized_soon(graph: ModelGraph, op: Op, kinds: Iterable[NormKind] = SCALE_NORMS) -> tuple[Op, ...]:
    """The norms that remove a scale ``op``'s output gets wrong, directly (:func:`normalized_after`) or right
    after the linear or conv layers it feeds (``sum -> conv -> BatchNorm``), or ``()``."""
    found: list[Op] = []
    for stop in next_stops(graph, op):
        if is_norm(graph, stop, kinds):
            found.append(stop)
            continue
        norms = normalized_after(graph, stop, kinds) if stop.kind in (OpKind.LINEAR, OpKind.CONV) else ()
        if not norms:
            return ()
        found.extend(norms)
    return tuple(dict.fromkeys(found))


# -- residual adds -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Residual:
    """An add ``skip + branch`` whose branch is computed from the skip: ``x + f(x)``."""

    add: Op
    skip: Op  # the operand carrying the stream
    branch: Op  # the operand computed from it


_ALIASES = frozenset({OpKind.PASSTHROUGH, OpKind.DROPOUT})


def _aliases(graph: ModelGraph, name: str) -> set[str]:
    """``name`` and the tensors it is a reshaped, cast or dropped-out view of."""
    seen = {name}
    op = graph.op(name)
    while op.kind in _ALIASES and len(op.inputs) == 1:
        op = graph.op(op.inputs[0])
        seen.add(op.name)
    return seen


def residual(graph: ModelGraph, op: Op) -> Residual | None:
    """``op`` as a residual add, or ``None`` (a sum of unrelated tensors, of parallel branches, a bias)."""
    if op.kind is not OpKind.ADD or len(op.inputs) != 2 or op.inputs[0] == op.inputs[1]:
        return None
    key = ("residual", op.name)
    if key not in graph.memo:  # rules ask about the same adds again and again along signal paths
        graph.memo[key] = _residual(graph, op)
    return graph.memo[key]


def _residual(graph: ModelGraph, op: Op) -> Residual | None:
    a, b = op.inputs
    for skip, branch in ((a, b), (b, a)):
        if graph.op(skip).kind is OpKind.PARAM:
            continue
        skip_names = _aliases(graph, skip)
        upstream = graph.ancestors_from(graph.op(branch), min(graph.position(n) for n in skip_names))
        if skip_names & upstream and not _aliases(graph, branch) & skip_names:
            return Residual(op, graph.op(skip), graph.op(branch))
    return None


def branch_ops(graph: ModelGraph, res: Residual) -> frozenset[str]:
    """The ops of the branch: on a path from the skip's source to the branch operand (that operand included)."""
    sources = _aliases(graph, res.skip.name)
    up = graph.ancestors_from(res.branch, min(graph.position(n) for n in sources)) | {res.branch.name}
    down: set[str] = set()
    for s in sources:
        down |= graph.descendants_until(graph.op(s), graph.position(res.branch))
    return frozenset((up & down) - sources)


def branch_prenormalized(graph: ModelGraph, res: Residual, kinds: Iterable[NormKind] = PER_SAMPLE_NORMS) -> bool:
    """Whether every path from the skip into the branch passes through a norm: ``x + f(norm(x))`` (Pre-LN)."""
    members = branch_ops(graph, res)
    norms = {n for n in members if is_norm(graph, graph.op(n), kinds)}
    if not norms:
        return False
    sources = _aliases(graph, res.skip.name)
    region = (members - norms) | sources
    target = res.branch.name
    if target not in region:
        return True
    # A walk of the open region from the skip: networkx's has_path on a subgraph view filters every node.
    seen, stack = set(sources), list(sources)
    while stack:
        name = stack.pop()
        if name == target:
            return False
        for nxt in graph.dag.successors(name):
            if nxt in region and nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return True


# What may follow a projection shortcut's weight layer: ResNet's downsampling path is conv then BatchNorm.
_PROJECTION_TAIL = frozenset({OpKind.PASSTHROUGH, OpKind.DROPOUT, OpKind.NORM, OpKind.SCALE})


def _projection_input(graph: ModelGraph, name: str) -> str | None:
    """If ``name`` is one linear or conv layer of a tensor (with a norm, scale or reshape after), that tensor."""
    op = graph.op(name)
    while op.kind in _PROJECTION_TAIL and len(op.inputs) == 1:
        op = graph.op(op.inputs[0])
    if op.kind in (OpKind.LINEAR, OpKind.CONV) and op.inputs and graph.op(op.inputs[0]).kind is not OpKind.PARAM:
        return op.inputs[0]
    return None


def projected_residual(graph: ModelGraph, op: Op) -> Residual | None:
    """``op`` as ``proj(x) + f(x)``: a residual add whose skip goes through one weight layer, as in ResNet's
    downsampling blocks (a strided 1x1 conv and a BatchNorm). The :class:`Residual`'s ``skip`` is ``x``, the
    tensor the block reads, not the projection. Single layers of one tensor summed (``a(x) + b(x) + c(x)``) are
    parallel branches, not this.
    """
    if op.kind is not OpKind.ADD or len(op.inputs) != 2 or op.inputs[0] == op.inputs[1]:
        return None
    a, b = op.inputs
    for proj, branch in ((a, b), (b, a)):
        source = _projection_input(graph, proj)
        if source is None or _projection_input(graph, branch) == source or graph.op(branch).kind is OpKind.ADD:
            continue
        upstream = graph.ancestors_from(graph.op(branch), graph.position(source))
        if source in upstream and proj not in upstream:
            return Residual(op, graph.op(source), graph.op(branch))
    return None


# -- repeated blocks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    path: str  # "layers.3"
    index: int
    ops: tuple[Op, ...]  # the block's ops, in graph order


@dataclass(frozen=True)
class BlockGroup:
    """Blocks ``container.0``, ``container.1``... with the same structure (same ops, same weight shapes)."""

    container: str
    blocks: tuple[Block, ...]

    def span(self) -> str:
        first, last = self.blocks[0].path, self.blocks[-1].path
        return f"`{first}` to `{last}`" if len(self.blocks) > 2 else f"`{first}` and `{last}`"


def relative(path: str, block: str) -> str:
    return path[len(block) + 1:] if path.startswith(block + ".") else ("" if path == block else path)


def repeated_blocks(graph: ModelGraph) -> tuple[BlockGroup, ...]:
    """Groups of two or more sibling blocks (module paths ``<container>.<index>``) with one structure.

    Every numbered level is considered: ``stages.0`` and ``stages.1`` as well as ``stages.0.blocks.0`` and
    ``stages.0.blocks.1``. Outer groups come first. Within a container, blocks whose structure differs (the
    first T5 block carries the relative position bias) form groups of their own or none.
    """
    members: dict[tuple[str, int], list[Op]] = {}
    for op in graph:
        parts = op.module.split(".") if op.module else []
        for i, part in enumerate(parts):
            if part.isdigit() and i > 0:
                members.setdefault((".".join(parts[:i]), int(part)), []).append(op)
    by_signature: dict[tuple, list[tuple[str, int, list[Op]]]] = {}
    for (container, index), ops in members.items():
        path = f"{container}.{index}"
        sig = (container, tuple(_op_signature(o, path) for o in ops if o.kind is not OpKind.PASSTHROUGH))
        by_signature.setdefault(sig, []).append((path, index, ops))
    groups = [
        BlockGroup(sig[0], tuple(Block(path, index, tuple(ops)) for path, index, ops in sorted(blocks, key=_index)))
        for sig, blocks in by_signature.items()
        if len(blocks) >= 2
    ]
    return tuple(sorted(groups, key=lambda g: (g.container.count("."), graph.position(g.blocks[0].ops[0]))))


def _index(block: tuple[str, int, list[Op]]) -> int:
    return block[1]


def _op_signature(op: Op, block: str) -> tuple:
    w = op.weight
    if w is None:
        return relative(op.module, block), op.kind
    return relative(op.module, block), op.kind, w.shape, relative(w.name, block)


# -- weights -----------------------------------------------------------------------------------------------

# The gains of torch.nn.init.calculate_gain that initializers are used with, squared, by the nonlinearity
# argument that gives them. ``leaky_relu`` is Kaiming's default ``a=0`` (= ``relu``); ``a=sqrt(5)`` is what
# nn.Linear and nn.Conv*d use by default.
GAINS_SQUARED: tuple[tuple[str, float], ...] = (
    ("relu", 2.0),
    ("linear", 1.0),
    ("tanh", 25.0 / 9.0),
    ("selu", 9.0 / 16.0),
    ("leaky_relu, a=sqrt(5)", 1.0 / 3.0),
)


def distribution(tensor) -> str | None:
    """``"uniform"`` or ``"normal"``: what a weight was drawn from, told apart by its range (a uniform's
    half-width is sqrt(3) standard deviations; a normal sample of 32 or more exceeds 1.1 of that almost
    surely). ``None`` when the tensor is too small to tell."""
    if tensor is None or tensor.numel() < 32:
        return None
    f = tensor.detach().float()
    std = f.std(correction=0).item()
    if std == 0.0:
        return None
    # max |f - mean| in float32 without the centred copy: rounding is monotone and odd, so the largest rounded
    # deviation is that of an extreme, bit for bit
    m = f.mean()
    lo, hi = torch.aminmax(f)
    half_width = max((hi - m).item(), (m - lo).item())
    return "uniform" if half_width <= math.sqrt(3.0) * std * 1.1 else "normal"


# -- signals -----------------------------------------------------------------------------------------------

# What `torch.nn.init.calculate_gain` calls the activation after a weight layer, and its gain squared. Smooth
# ReLU-like activations (GELU, SiLU, ELU, Mish, Softplus) take ReLU's: Kaiming's init is what they are used with.
_RELU_LIKE = frozenset({Activation.RELU, Activation.RELU6, Activation.GELU, Activation.SILU, Activation.ELU,
                        Activation.CELU, Activation.MISH, Activation.SOFTPLUS, Activation.HARDSWISH})
# Where a signal starts afresh: nothing upstream of these sets its scale.
_SOURCES = frozenset({OpKind.INPUT, OpKind.EMBEDDING, OpKind.PARAM, OpKind.FACTORY, OpKind.RANDOM})


def nonlinearity_after(graph: ModelGraph, op: Op) -> tuple[str, float]:
    """The nonlinearity after a weight layer as ``torch.nn.init.calculate_gain`` names it, and its gain squared:
    the one activation every path reaches through reshapes and dropout; ``("linear", 1.0)`` otherwise."""
    stops = next_stops(graph, op, {OpKind.PASSTHROUGH, OpKind.DROPOUT})
    params = {s.params for s in stops if s.kind is OpKind.ACTIVATION and s.params is not None}
    if not stops or len(params) != 1 or any(s.kind is not OpKind.ACTIVATION for s in stops):
        return "linear", 1.0
    (p,) = params
    if p.fn in _RELU_LIKE:
        return "relu", 2.0
    if p.fn in (Activation.LEAKY_RELU, Activation.PRELU, Activation.RRELU):
        slope = 0.01 if p.negative_slope is None else p.negative_slope
        return "leaky_relu", 2.0 / (1.0 + slope * slope)
    if p.fn is Activation.TANH:
        return "tanh", 25.0 / 9.0
    if p.fn is Activation.SELU:
        return "selu", 9.0 / 16.0
    return ("sigmoid" if p.fn is Activation.SIGMOID else "linear"), 1.0


def signal_path(graph: ModelGraph, op: Op) -> tuple[Op, ...]:
    """The ops ``op``'s signal came through since it last started afresh (a normalization or a source: input,
    embedding, parameter), in order, ``op`` last. At each op the path follows the data operand of weight layers
    and activations, the values of attention, and elsewhere the operand with the largest predicted second moment
    among those a gradient flows to (a residual add's larger side). Needs predicted signals.

    The paths of a graph's ops form a forest (each op's predecessor depends on that op alone,
    :func:`signal_parent`): a rule that asks about many ops' paths should walk the forest once rather than build
    every path, which on a Pre-LN stream is as long as the model."""
    path = [op]
    while (nxt := signal_parent(graph, path[-1])) is not None:
        path.append(nxt)
    return tuple(reversed(path))


def signal_parent(graph: ModelGraph, op: Op) -> Op | None:
    """The op before ``op`` on its :func:`signal_path`, or ``None`` where the path starts (memoized per graph)."""
    memo = graph.memo.setdefault("signal_parent", {})
    if op.name not in memo:
        memo[op.name] = _signal_parent(graph, op)
    return memo[op.name]


def _signal_parent(graph: ModelGraph, op: Op) -> Op | None:
    if op.kind in _SOURCES or is_norm(graph, op) or not op.inputs:
        return None
    if op.kind in WEIGHT_LAYERS or op.kind is OpKind.ACTIVATION:
        return graph.op(op.inputs[0])
    if op.kind is OpKind.ATTENTION and len(op.inputs) >= 3:
        return graph.op(op.inputs[2])
    signals = [(n, graph.signal(n)) for n in dict.fromkeys(op.inputs)]
    live = [(n, s) for n, s in signals if s is not None and s.backward is not None] or \
        [(n, s) for n, s in signals if s is not None]
    if not live:
        return None
    return graph.op(max(live, key=lambda ns: ns[1].forward.second)[0])


def sig(x: float, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits, as people read it: 0.00231, 96, 1.4e-03."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    text = f"{x:.{digits}g}"
    return text


def times(x: float, digits: int = 2) -> str:
    """A factor as people read it, trailing zero kept: 2.0, 1.5, 0.50, 57.3 (``digits=3``), 1024."""
    if not math.isfinite(x) or abs(x) >= 1e6:
        return sig(x, digits)
    if abs(x) >= 10**digits:
        return f"{x:.0f}"
    return format(x, f"#.{digits}g").rstrip(".")


_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def python_path(qualname: str) -> str:
    """``features.4.conv.3`` as Python: ``features[4].conv[3]``."""
    return _INDEX.sub(r"[\1]", qualname)


# -- residual streams ---------------------------------------------------------------------------------------

# What a residual stream passes through between adds without being transformed: reshapes, dropout, scales and
# activations (a ResNet's ReLU after the add).
STREAM = frozenset({OpKind.PASSTHROUGH, OpKind.DROPOUT, OpKind.SCALE, OpKind.ACTIVATION})
# What leaves a tensor's scale-relevant content alone apart from a scale: reshapes, dropout, scales.
TRIVIAL = frozenset({OpKind.PASSTHROUGH, OpKind.DROPOUT, OpKind.SCALE})


def stream_root(graph: ModelGraph, op: Op) -> str:
    """The op ``op`` carries forward: back through reshapes, dropout, scales and activations."""
    while op.kind in STREAM:
        signals = [n for n in op.inputs if graph.op(n).kind is not OpKind.PARAM]
        if len(signals) != 1:
            break
        op = graph.op(signals[0])
    return op.name


def stream_end(graph: ModelGraph, op: Op, through: frozenset[OpKind] = STREAM) -> Op:
    """Where ``op``'s output has passed the ops of kinds ``through`` it goes through alone: for a residual add,
    its trailing reshapes, scales and activation; for a sum with ``through=TRIVIAL``, ``(a + b) / math.sqrt(2)``."""
    while True:
        nxt = graph.consumers(op)
        if len(nxt) != 1 or nxt[0].kind not in through:
            return op
        op = nxt[0]


# -- grouped convs initialized as if groups were 1 (IL102 reports them; IL101 leaves them to it) --------------

# The smallest factor IL102 reports: a variance off by less than 2x is within what the standard initializers
# themselves disagree by (Xavier vs Kaiming for ReLU differ by 2) and is IL101's business, not a fan mistake.
BLIND_MIN_FACTOR = 2.0
# How closely a weight variance must match an initializer's, in |log(variance ratio)|: 3.5 standard errors of a
# normal sample's variance (sqrt(2/n) relative), plus 5% for uniform/truncated draws.
BLIND_SIGMAS, BLIND_SLACK = 3.5, 0.05
# The groups-blind initializers looked for, by the nonlinearity their gain is for: Kaiming fan-out as
# torchvision's MobileNet, EfficientNet and ResNeXt call it (relu), Xavier with gain 1 or a gain for relu or
# tanh. Rarer gains (selu, a=sqrt(5)) would make chance coincidences with other inits more likely.
GROUPS_BLIND = ("relu", "linear", "tanh")
# Fixed standard deviations common enough that a variance matching one is no evidence of a fan mistake:
# N(0, 0.02) is BERT's, GPT-2's, DCGAN's and ConvNeXt's init, N(0, 0.01) MobileNet's classifier's.
FIXED_STDS = (0.02, 0.01)


@dataclass(frozen=True)
class BlindInit:
    """An initializer that computed a grouped conv's fan-out as if ``groups == 1``, matched by its variance."""

    init: str  # "kaiming" (mode="fan_out") or "xavier"
    nonlinearity: str  # whose gain it used
    variance: float  # what it gives with PyTorch's fans
    intended: float  # what it gives with one group's fans

    @property
    def factor(self) -> float:
        return self.intended / self.variance


def groups_blind_inits(op: Op) -> tuple[BlindInit, ...]:
    """The groups-blind initializers whose variance a grouped conv's weight matches, closest first; empty when
    none does or when a correct-fan init (or a common fixed std) explains the variance as well."""
    p, w = op.params, op.weight
    if (op.kind is not OpKind.CONV or p is None or p.groups < 2 or w is None or w.tensor is None
            or not w.torch_fan_in or not w.torch_fan_out or not w.variance > 0.0):
        return ()
    variance, g, fan_in, fan_out = w.variance, p.groups, w.torch_fan_in, w.torch_fan_out
    true_out = fan_out / g
    tolerance = BLIND_SIGMAS * math.sqrt(2.0 / w.tensor.numel()) + BLIND_SLACK

    def close(target: float) -> float:
        return abs(math.log(variance / target))

    wrong: list[BlindInit] = []
    right: list[float] = [std**2 for std in FIXED_STDS]
    for nonlinearity, g2 in GAINS_SQUARED:
        if nonlinearity in GROUPS_BLIND:
            wrong.append(BlindInit("kaiming", nonlinearity, g2 / fan_out, g2 / true_out))
            wrong.append(BlindInit("xavier", nonlinearity, 2 * g2 / (fan_in + fan_out), 2 * g2 / (fan_in + true_out)))
        right += [g2 / fan_in, g2 / true_out, 2 * g2 / (fan_in + true_out)]
    matches = sorted((b for b in wrong if close(b.variance) <= tolerance), key=lambda b: close(b.variance))
    if not matches or any(close(v) <= tolerance for v in right):
        return ()
    return tuple(matches)


def groups_blind(op: Op) -> bool:
    """IL102 reports this conv: one finding per defect, so scale rules leave it alone."""
    matches = groups_blind_inits(op)
    best = next((m for m in matches if m.init == "kaiming"), matches[0]) if matches else None
    return best is not None and best.factor >= BLIND_MIN_FACTOR


__all__ = [
    "CARRIERS", "WEIGHT_LAYERS", "PER_SAMPLE_NORMS", "SCALE_NORMS", "GAINS_SQUARED", "Block", "BlockGroup",
    "Residual", "branch_ops", "branch_prenormalized", "distribution", "is_norm", "next_stops", "norm_kind",
    "normalized_after", "normalized_soon", "projected_residual", "python_path", "relative", "repeated_blocks",
    "residual", "sig", "signal_parent", "signal_path", "times", "BlindInit", "groups_blind", "groups_blind_inits",
    "STREAM", "TRIVIAL", "stream_end", "stream_root",
]
