"""IL102 depthwise-fan."""

from __future__ import annotations

import math

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import Op, OpKind
from initlint.patterns import BLIND_MIN_FACTOR, distribution, groups_blind_inits, normalized_after, sig
from initlint.registry import rule

# Which variances count as a groups-blind init, how closely they must match and the smallest factor reported
# (2x: less is within what the standard inits disagree by, and IL101's business) are in
# `initlint.patterns.groups_blind_inits`: 3.5 standard errors of the sample variance plus 5%; Kaiming fan-out and
# Xavier with the relu, linear and tanh gains; not when a correct-fan init or N(0, 0.02) or N(0, 0.01) fits too.


@rule("IL102", "depthwise-fan", applies_to={OpKind.CONV}, severity=Severity.WARNING)
def depthwise_fan(op: Op, graph: ModelGraph) -> Issue | None:
    """
    ## What it does
    Finds grouped and depthwise convolutions whose weight variance is what `kaiming_*(mode="fan_out")` or
    `xavier_*` give with PyTorch's fans, which ignore `groups`.

    `torch.nn.init` computes a conv's fan-out as `out_channels * kernel_size`, as if every output channel read
    every input channel. In a conv with `groups=g` each input channel feeds only `out_channels / g` of them,
    so the fan-out is `g` times too large. `kaiming_*(mode="fan_in")` is right: PyTorch's fan-in
    `in_channels / g * kernel_size` already counts one group.

    The rule matches the weight variance against those initializers for the usual gains (relu, linear,
    tanh) and reports only when the match is unambiguous: a variance that an initializer with the right fans
    would also give (a 6-channel depthwise conv, say, where the two can coincide), or that a fixed
    N(0, 0.02) or N(0, 0.01) gives (BERT's, GPT-2's and ConvNeXt's init: a 7x7 depthwise conv with 96
    channels under `kaiming_normal_(mode="fan_out")` has std 0.0206), is not reported. For large group
    counts Kaiming fan-out with gain sqrt(2) and Xavier with gain 1 give nearly the same variance; the
    message then names both, with their factors.

    ## Why is this bad?
    The weights are off by the group count. Measured for a depthwise conv with C = 256 channels and a 3x3
    kernel, where PyTorch computes fans (9, 2304) against true fans (9, 9): `xavier_normal_` gives an
    output/input variance of 0.0079 where 1 is intended, (C + 1)/2 = 128x too small, and
    `kaiming_normal_(mode="fan_out")` gives 0.0078 where 2 is intended, C = 256x too small. torchvision's
    MobileNetV2 and ResNeXt initialize their convs that way.

    Without a normalization after the conv, the signal shrinks by that factor at every such layer. With a
    BatchNorm or other norm after it, the forward scale is restored and the finding is an `info`: the
    remaining effect is on optimization, since a weight that a norm makes scale-invariant sees an effective
    learning rate inversely proportional to its squared norm, here C times larger.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.ReLU(),
        nn.Conv2d(64, 64, 1),
    )
    torch.manual_seed(0)
    nn.init.kaiming_normal_(model[0].weight, mode="fan_out", nonlinearity="relu")
    example_inputs = torch.randn(2, 64, 16, 16)
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.ReLU(),
        nn.Conv2d(64, 64, 1),
    )
    torch.manual_seed(0)
    nn.init.kaiming_normal_(model[0].weight, mode="fan_in", nonlinearity="relu")
    example_inputs = torch.randn(2, 64, 16, 16)
    ```

    ## References
    - He et al. 2015, "Delving Deep into Rectifiers" (fan-in and fan-out modes)
    - Sandler et al. 2018, "MobileNetV2"; torchvision's `mobilenetv2.py` init loop
    - PyTorch `torch.nn.init._calculate_fan_in_and_fan_out`
    """
    matches = groups_blind_inits(op)
    if not matches:
        return None
    # For large g, Kaiming fan-out with gain sqrt(2) and Xavier with gain 1 give nearly the same variance
    # (2/(g k) against 2/((g + 1) k)); name the Kaiming one, as torchvision's init loop is the usual source.
    best = next((m for m in matches if m.init == "kaiming"), matches[0])
    init, nonlinearity, intended, factor = best.init, best.nonlinearity, best.intended, best.factor
    if factor < BLIND_MIN_FACTOR:
        return None
    p, w = op.params, op.weight
    variance, g, fan_in, fan_out = w.variance, p.groups, w.torch_fan_in, w.torch_fan_out
    true_out = fan_out / g

    family = distribution(w.tensor) or "normal"
    taps = p.taps
    if init == "kaiming":
        call = f'kaiming_{family}_(mode="fan_out"{_nl(nonlinearity)})'
        how = (f"with PyTorch's fan-out {fan_out} (= {p.out_channels}*{taps}), which counts all {g} groups' outputs "
               f"where one group's fan-out is {_n(true_out)}")
    else:
        call = f"xavier_{family}_({_gain(nonlinearity)})"
        how = (f"with PyTorch's fans ({fan_in}, {fan_out}), whose fan-out counts all {g} groups' outputs "
               f"where one group's fans are ({fan_in}, {_n(true_out)})")
    message = (
        f"`{op.module or w.name}` (groups={g}) has weight variance {sig(variance)}, as `{call}` gives {how}: "
        f"{sig(factor)}x smaller than that init intends"
    )
    alias = next((m for m in matches if m.init != init), None)
    if alias is not None:
        message += (f" ({sig(alias.factor)}x for `xavier_{family}_({_gain(alias.nonlinearity)})`, which gives the "
                    f"same variance here)")
    std = math.sqrt(intended)
    fix_code = f'nn.init.normal_(model.get_parameter("{w.name}"), mean=0.0, std={sig(std)})\n'
    if init == "kaiming":
        fix_code += '# in an init loop, fan-in mode is right for grouped convs: nn.init.kaiming_normal_(m.weight, mode="fan_in")'
    else:
        fix_code += ("# in an init loop, for a grouped conv m:\n"
                     "#   fan_in, fan_out = m.weight[0].numel(), m.out_channels // m.groups * m.weight[0, 0].numel()\n"
                     "#   nn.init.normal_(m.weight, std=gain * math.sqrt(2 / (fan_in + fan_out)))")
    fix = Fix(
        summary=f"Re-initialize `{w.name}` with std {sig(std)}, what `{call}` intends for one group's fans",
        code=fix_code,
    )
    normalized = normalized_after(graph, op)
    return Issue(
        message=message,
        fix=fix,
        predicted={
            "weight_variance": variance,
            "intended_variance": intended,
            "factor": factor,
            "groups": g,
            "torch_fan_out": fan_out,
            "true_fan_out": true_out,
            "forward_gain": w.fan_in * variance,
            "intended_forward_gain": w.fan_in * intended,
        },
        severity=Severity.INFO if normalized else None,
    )


def _nl(nonlinearity: str) -> str:
    if nonlinearity == "relu":
        return ""
    if nonlinearity.startswith("leaky_relu"):
        return ", a=math.sqrt(5)"
    return f', nonlinearity="{nonlinearity}"'


def _gain(nonlinearity: str) -> str:
    if nonlinearity == "linear":
        return ""
    if nonlinearity.startswith("leaky_relu"):
        return 'gain=nn.init.calculate_gain("leaky_relu", math.sqrt(5))'
    return f'gain=nn.init.calculate_gain("{nonlinearity}")'


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else sig(x)
