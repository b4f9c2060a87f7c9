"""The curvature probe (``--curvature``): the largest Hessian eigenvalue of a loss at init, by power iteration on
Hessian-vector products, with the classical learning-rate bound 2/lambda_max and the warmup it suggests.

What the bound means. For a quadratic loss ``L(w) = w^T H w / 2``, gradient descent with learning rate eta
multiplies the component along the top eigenvector by ``1 - eta * lambda_max`` per step: it diverges exactly
when ``eta > 2 / lambda_max`` (tested on such a model). For a network the bound is local. Measured on a
16-128-128-1 tanh MLP (full batch, ``measured-claims.md``, claim 14): lambda_max grows with the init gain (1.64,
7.0, 22.3 at gains 0.5, 1, 2), but a rate of 2.2/lambda_max did not diverge: the sharpness fell until
``eta * lambda`` was about 2 (the edge-of-stability effect, Cohen et al. 2021); only the model linearized at
init diverged. So 2/lambda_max is the rate above which the first steps are unstable along the sharpest
direction, not a rate above which training must fail. The warmup suggested starts at ``1/lambda_max``, half the
bound, and lets the sharpness adapt before the rate rises.

Power iteration finds the eigenvalue of largest magnitude. At init that can be negative (a Post-LN encoder
under the default loss: -1.32), a direction of negative curvature that bounds no step size; the iteration is
then run again on ``H - lambda I``, whose top is the largest eigenvalue (1.3 there). Without a positive one
there is no bound, and the report says so.

The default loss, for models without labels, is ``0.5 * mean((y - t)^2)`` over the float outputs with targets
``t ~ N(0, 1)`` seeded from ``seed``: a regression loss whose Hessian at init reflects the network's Jacobian.

>>> import torch
>>> from torch import nn
>>> w = nn.Linear(2, 1, bias=False)
>>> c = curvature(w, torch.tensor([[3.0, 0.0], [0.0, 1.0]]))  # loss 0.5 * mean((w.x - t)^2): H = X^T X / n
>>> round(c.lambda_max, 3), round(c.lr_bound, 3)
(4.5, 0.444)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .state import preserved

MAX_ITERATIONS = 100
TOLERANCE = 1e-4  # relative change of the Rayleigh quotient between iterations at which it has converged
TARGET_SEED = 0x7A6E7


@dataclass(frozen=True)
class Curvature:
    lambda_max: float  # the largest eigenvalue (power iteration, shifted when the largest in magnitude is negative)
    lr_bound: float  # 2 / lambda_max; inf without positive curvature
    warmup_from: float  # 1 / lambda_max: where a warmup should start
    iterations: int  # Hessian-vector products used
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        return {"lambda_max": self.lambda_max, "lr_bound": self.lr_bound, "warmup_from": self.warmup_from,
                "iterations": self.iterations, "converged": self.converged}

    def describe(self) -> str:
        state = "" if self.converged else ", not converged"
        if not math.isfinite(self.lr_bound):
            return (f"lambda_max {self.lambda_max:.3g} at init ({self.iterations} Hessian-vector products{state}): no "
                    f"direction of positive curvature, so no step-size bound from it")
        return (f"lambda_max {self.lambda_max:.3g} at init ({self.iterations} Hessian-vector products{state}): "
                f"gradient descent is unstable along the sharpest direction above lr 2/lambda = {self.lr_bound:.3g}; "
                f"start a warmup at or below 1/lambda = {self.warmup_from:.3g}")


def mse_to_random_targets(seed: int = 0) -> Callable[[Any], torch.Tensor]:
    """``0.5 * mean((y - t)^2)`` summed over the float outputs, ``t ~ N(0, 1)`` drawn once per output shape."""
    cache: dict = {}

    def loss(out: Any) -> torch.Tensor:
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        total = 0.0
        for i, y in enumerate(outs):
            key = (i, tuple(y.shape))
            if key not in cache:
                gen = torch.Generator().manual_seed(TARGET_SEED + seed + i)
                cache[key] = torch.randn(y.shape, generator=gen)
            total = total + 0.5 * (y - cache[key].to(y.device, y.dtype)).square().mean()
        return total

    return loss


def curvature(model: nn.Module, inputs: Any, *, loss_fn: Callable[[Any], torch.Tensor] | None = None,
              iterations: int = MAX_ITERATIONS, tolerance: float = TOLERANCE, seed: int = 0,
              device: torch.device | str = "cpu") -> Curvature:
    """lambda_max of ``loss_fn(model(*inputs))`` with respect to the trainable parameters, at the current weights.

    The model is left as it was (:func:`initlint.state.preserved`); with a ``device`` other than the model's, a
    deep copy runs there.
    """
    import copy

    dev = torch.device(device)
    loss_fn = loss_fn or mse_to_random_targets(seed)
    args = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    with preserved(model), torch.enable_grad():
        here = next((p.device for p in model.parameters()), dev)
        net = copy.deepcopy(model).to(dev) if here != dev else model
        net.train()
        torch.manual_seed(seed)
        params = [p for p in net.parameters() if p.requires_grad]
        args = [a.detach().to(dev) if isinstance(a, torch.Tensor) else a for a in args]
        loss = loss_fn(net(*args))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        gen = torch.Generator().manual_seed(seed)
        v = _normalized([torch.randn(p.shape, generator=gen).to(p.device, p.dtype) for p in params])
        value, converged, done = _power(grads, params, v, 0.0, iterations, tolerance)
        if value < 0:
            # Power iteration finds the eigenvalue of largest magnitude; a negative one is a direction of
            # negative curvature, no step-size bound. The largest eigenvalue is the top of H - value * I, whose
            # spectrum is shifted to be nonnegative.
            top, converged, more = _power(grads, params, v, -value, iterations, tolerance)
            value, done = top + value, done + more
    lam = value if value > tolerance * abs(value) else 0.0
    return Curvature(value, 2.0 / lam if lam > 0 else math.inf, 1.0 / lam if lam > 0 else math.inf, done,
                     converged)


def _power(grads, params, v, shift: float, iterations: int, tolerance: float) -> tuple[float, bool, int]:
    """The eigenvalue of largest magnitude of ``H + shift * I`` by power iteration from ``v``: its value, whether
    it converged, and the Hessian-vector products used."""
    value, done = math.nan, 0
    for done in range(1, iterations + 1):
        hv = [h + shift * x for h, x in zip(torch.autograd.grad(grads, params, v, retain_graph=True), v)]
        new = float(sum((a * b).sum() for a, b in zip(hv, v)))
        if math.isfinite(value) and abs(new - value) <= tolerance * max(abs(new), 1e-30):
            return new, True, done
        value = new
        v = _normalized([h.detach() for h in hv])
    return value, False, done


def _normalized(vs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    norm = math.sqrt(sum(float((v * v).sum()) for v in vs))
    return [v / norm for v in vs] if norm > 0 else list(vs)


def with_curvature(text: str, report, config, targets: Sequence[str], fmt: str) -> str:
    """The CLI's ``--curvature``: each linted target loaded again and measured; a section after the text
    report, a ``curvature`` entry per target in JSON, or lines on stderr for other formats."""
    import json
    import sys

    from .load import load
    from .probe import resolve_device
    from .project import _resolve

    chosen = [config.target(t) for t in targets] or list(config.targets)
    found = {}
    for tr, t in zip(report.targets, chosen):
        if tr.error is not None:
            continue
        spec = _resolve(t.target, config.root) if t.from_file else t.target
        options = config.lint_options(t)
        loaded = load(spec, options["input_shapes"], options["input_dtypes"])
        found[tr.target] = curvature(loaded.model, tuple(loaded.inputs.args), device=resolve_device(config.device))
    if fmt == "json":
        data = json.loads(text)
        for entry in data.get("targets", []):
            if entry.get("target") in found:
                entry["curvature"] = found[entry["target"]].to_dict()
        return json.dumps(data, indent=2) + "\n"
    lines = [f"curvature: {name}: {c.describe()}" for name, c in found.items()]
    if fmt == "text":
        return text + "".join(line + "\n" for line in lines)
    sys.stderr.write("".join(line + "\n" for line in lines))
    return text


__all__ = ["Curvature", "curvature", "mse_to_random_targets", "with_curvature", "MAX_ITERATIONS", "TOLERANCE"]
