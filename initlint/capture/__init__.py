"""The capture ladder: ``torch.fx``, then ``torch.export(strict=False)``, then module hooks; never a crash.

>>> from torch import nn
>>> from initlint.load import from_instance
>>> g = capture(from_instance(nn.Sequential(nn.Linear(4, 4), nn.ReLU())))
>>> g.capture.value, [op.kind.value for op in g]
('fx', ['input', 'linear', 'activation', 'output'])
"""

from __future__ import annotations

import torch

from ..errors import CaptureError, InputsError, describe_exception
from ..graph import ModelGraph
from ..load import Target
from ..ops import Capture
from ..state import preserved
from .program import Program


def capture(target: Target, force: str | None = None) -> ModelGraph:
    """Capture ``target.model`` as a typed graph. ``force`` pins one rung ("fx", "export" or "hooks")."""
    return capture_program(target, force)[0]


def capture_program(target: Target, force: str | None = None) -> tuple[ModelGraph, Program]:
    """Like :func:`capture`, with the :class:`Program` that was captured, for measurements to run."""
    from . import export as export_mod
    from . import fx as fx_mod
    from . import hooks as hooks_mod

    from .normalize import is_known_leaf

    model, inputs, notes = target.model, target.inputs, []
    if force is None and is_known_leaf(model):
        force = "hooks"  # a single layer: one op, nothing to trace
    with preserved(model):
        if force in (None, "fx"):
            try:
                fx_graph, values = fx_mod.trace(model, inputs)
            except Exception as exc:
                notes.append(f"torch.fx could not trace the model ({describe_exception(exc)})")
            else:
                try:
                    fx_mod.propagate_shapes(model, fx_graph, values)
                except Exception as exc:
                    _check_forward(target)  # raises InputsError when the model itself fails on the inputs
                    notes.append(f"the traced graph did not run ({describe_exception(exc)})")
                else:
                    graph = fx_mod.to_graph(fx_graph, model, target.name, target.sites, tuple(notes))
                    return graph, Program(Capture.FX, model, inputs, values=tuple(values), fx_graph=fx_graph)
        if force in (None, "export"):
            try:
                ep, prefix = export_mod.export(model, inputs)
            except Exception as exc:
                notes.append(f"torch.export could not export the model ({describe_exception(exc)})")
            else:
                graph = export_mod.to_graph(ep, prefix, model, target.name, target.sites, tuple(notes))
                return graph, Program(Capture.EXPORT, model, inputs, exported=ep, prefix=prefix)
        try:
            graph = hooks_mod.capture(model, inputs, target.name, target.sites, tuple(notes))
            return graph, Program(Capture.HOOKS, model, inputs)
        except Exception as exc:
            _check_forward(target)
            raise CaptureError(
                f"cannot capture `{target.name}`",
                why="; ".join([*notes, f"module hooks failed ({describe_exception(exc)})"]),
                help="report this as a bug in initlint, with the model if you can share it",
            ) from exc


def _check_forward(target: Target) -> None:
    """Run the model once; if it fails on the example inputs, say so in the user's terms."""
    from ..load import _where

    try:
        with torch.no_grad():
            target.model(*target.inputs.args, **target.inputs.kwargs)
    except Exception as exc:
        source = {"inferred": "inferred", "transformers": "synthesized"}.get(target.inputs.source, "given")
        raise InputsError(
            f"`{target.name}.forward` fails on the {source} example inputs ({target.inputs.describe()})",
            where=_where(exc),
            why=describe_exception(exc),
            help="pass inputs that fit with --input-shape (e.g. --input-shape 2,3,64,64), "
            "or return (model, example_inputs) from a factory",
        ) from exc
