"""Two small rules registered through the ``initlint.rules`` entry point, as a third-party plugin would.

The integration tests (config, suppressions, formats, pytest plugin, pre-commit) need findings with known
codes, lines and severities that do not depend on the built-in catalogue.
"""

import math

from initlint.findings import Fix, Issue, Severity
from initlint.ops import OpKind
from initlint.registry import rule

GAIN_LIMIT = 2.0  # std * sqrt(fan_in): 1/sqrt(3) for PyTorch's default Linear init, 1.0 for N(0, 1/fan_in)


@rule("IL901", "unit-normal-linear", applies_to={OpKind.LINEAR})
def unit_normal_linear(op, graph):
    """
    ## What it does
    Finds `nn.Linear` weights drawn with standard deviation 1, regardless of fan-in.

    ## Why is this bad?
    Each layer multiplies the activation variance by its fan-in.

    ## Example
    ```python
    from torch import nn
    model = nn.Linear(64, 64)
    nn.init.normal_(model.weight)
    ```

    ## Use instead
    ```python
    from torch import nn
    model = nn.Linear(64, 64)
    ```

    ## References
    - He et al. 2015, "Delving deep into rectifiers"
    """
    w = op.weight
    if w is None or not w.fan_in or w.std * math.sqrt(w.fan_in) <= GAIN_LIMIT:
        return None
    gain = w.std * math.sqrt(w.fan_in)
    return Issue(message=f"`{op.module}` weight has std {w.std:.3g}: variance x{gain ** 2:.3g} per layer",
                 fix=Fix(summary="Initialize with std 1/sqrt(fan_in)",
                         code=f"nn.init.normal_({op.module}.weight, std={1 / math.sqrt(w.fan_in):.3g})"))


@rule("IL902", "no-output-norm", severity=Severity.INFO)
def no_output_norm(graph):
    """
    ## What it does
    Notes models that contain no normalization layer at all.

    ## Why is this bad?
    Without one, every initialization defect reaches the loss unchanged.

    ## Example
    ```python
    from torch import nn
    model = nn.Linear(8, 8)
    ```

    ## Use instead
    ```python
    from torch import nn
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    ```

    ## References
    - Ba et al. 2016, "Layer normalization"
    """
    if any(op.kind is OpKind.NORM for op in graph):
        return None
    return Issue(message=f"`{graph.model_name}` has no normalization layer")


RULES = (unit_normal_linear, no_output_norm)
