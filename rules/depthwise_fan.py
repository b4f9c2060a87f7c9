"""IL102 depthwise-fan."""

from __future__ import annotations

import math

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import Op, OpKind
from initlint.patterns import GAINS_SQUARED, distribution, normalized_after, sig
from initlint.registry import rule

# The smallest factor reported: a variance off by less than 2x is within what the standard initializers
# themselves disagree by (Xavier vs Kaiming for ReLU differ by 2) and is IL101's business, not a fan mistake.
MIN_FACTOR = 2.0
# How closely the weight variance must match an initializer's, in |log(variance ratio)|: 3.5 standard
# errors of a normal sample's variance (sqrt(2/n) relative), plus 5% for uniform/truncated draws.
SIGMAS, SLACK = 3.5, 0.05
# The groups-blind initializers looked for, by the nonlinearity their gain is for: Kaiming fan-out as
# torchvision's MobileNet, EfficientNet and ResNeXt call it (relu), Xavier with gain 1 or a gain for relu or
# tanh. Rarer gains (selu, a=sqrt(5)) would make chance coincidences with other inits more likely.
GROUPS_BLIND = ("relu", "linear", "tanh")
# Fixed standard deviations common enough that a variance matching one is no evidence of a fan mistake:
# N(0, 0.02) is BERT's, GPT-2's, DCGAN's and ConvNeXt's init, N(0, 0.01) MobileNet's classifier's.
FIXED_STDS = (0.02, 0.01)


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
    p, w = op.params, op.weight
    if p is None or p.groups < 2 or w is None or w.tensor is None or not w.torch_fan_in or not w.torch_fan_out:
        return None
    variance = w.variance
    if not variance > 0.0:
        return None
    g, fan_in, fan_out = p.groups, w.torch_fan_in, w.torch_fan_out
    true_out = fan_out / g
    tolerance = SIGMAS * math.sqrt(2.0 / w.tensor.numel()) + SLACK

    def close(target: float) -> float:
        return abs(math.log(variance / target))

    # What each initializer gives (and would give with the group-corrected fan-out), per gain.
    wrong, right = [], []
    for nonlinearity, g2 in GAINS_SQUARED:
        if nonlinearity in GROUPS_BLIND:
            wrong.append(("kaiming", nonlinearity, g2 / fan_out, g2 / true_out))
            wrong.append(("xavier", nonlinearity, 2 * g2 / (fan_in + fan_out), 2 * g2 / (fan_in + true_out)))
        right += [g2 / fan_in, g2 / true_out, 2 * g2 / (fan_in + true_out)]
    right += [std**2 for std in FIXED_STDS]
    matches = sorted((h for h in wrong if close(h[2]) <= tolerance), key=lambda h: close(h[2]))
    if not matches or any(close(v) <= tolerance for v in right):
        return None
    # For large g, Kaiming fan-out with gain sqrt(2) and Xavier with gain 1 give nearly the same variance
    # (2/(g k) against 2/((g + 1) k)); name the Kaiming one, as torchvision's init loop is the usual source.
    init, nonlinearity, got, intended = next((h for h in matches if h[0] == "kaiming"), matches[0])
    factor = intended / got
    if factor < MIN_FACTOR:
        return None

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
    alias = next((h for h in matches if h[0] != init), None)
    if alias is not None:
        message += (f" ({sig(alias[3] / alias[2])}x for `xavier_{family}_({_gain(alias[1])})`, which gives the same "
                    f"variance here)")
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
