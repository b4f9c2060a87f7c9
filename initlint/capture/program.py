"""What a capture ran, kept so that a measurement can run it again with the same node names as the ops.

>>> from torch import nn
>>> from initlint.capture import capture_program
>>> from initlint.load import from_instance
>>> graph, program = capture_program(from_instance(nn.Sequential(nn.Linear(4, 4), nn.ReLU())))
>>> program.capture.value, sorted(n.name for n in program.graph_module.graph.nodes if n.op == "call_module")
('fx', ['_0', '_1'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from ..inputs import ExampleInputs
from ..ops import Capture


@dataclass(frozen=True)
class Program:
    """The runnable behind a :class:`~initlint.graph.ModelGraph`.

    ``fx``: the traced ``GraphModule`` (sharing the model's leaf modules), called with ``values``, the
    placeholders' values; built from ``fx_graph`` on first use (a lint without measurements never runs it).
    ``export``: the ``ExportedProgram``; :meth:`module` gives a fresh runnable module each call (parameters and
    buffers shared with the model). ``hooks``: nothing but the model itself.
    ``prefix``: the module-path prefix an export wrapper added ("" when none).
    """

    capture: Capture
    model: nn.Module = field(repr=False)
    inputs: ExampleInputs = field(repr=False)
    exported: Any = field(default=None, repr=False)  # torch.export.ExportedProgram
    values: tuple = field(default=(), repr=False)
    prefix: str = ""
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # what runs of it may reuse
    fx_graph: torch.fx.Graph | None = field(default=None, repr=False)  # fx: the traced graph (targets in `model`)

    @cached_property
    def graph_module(self) -> torch.fx.GraphModule | None:
        """fx: the runnable ``GraphModule`` of ``fx_graph``, the same one on every access."""
        if self.fx_graph is None:
            return None
        from .fx import graph_module

        return graph_module(self.model, self.fx_graph)

    def module(self) -> torch.fx.GraphModule | None:
        if self.capture is Capture.FX:
            return self.graph_module
        if self.capture is Capture.EXPORT:
            return self.exported.module()
        return None

    def call_args(self) -> tuple[tuple, dict]:
        """Positional and keyword arguments for :meth:`module` (or the model, for hooks)."""
        if self.capture is Capture.FX:
            return tuple(self.values), {}
        return tuple(self.inputs.args), dict(self.inputs.kwargs)


__all__ = ["Program"]
