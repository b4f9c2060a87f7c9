"""Probes: per rule, how to measure what a finding states and the machine form of its fix.

A :class:`Probe` is three small functions: ``needs`` says what the shared forward and backward pass must
record for a finding (ask for ``forward_ops`` rather than ``ops`` where only forward second moments are read:
a pass that reads no gradient runs no backward and stops at its last read), ``measure`` turns the
:class:`~initlint.probes.records.Context` into a :class:`~initlint.probes.records.Measurement` (numbers and a
verdict), and ``repair`` applies the fix to a deep
copy of the model, returning the structural edits (an inserted scale) the runner must make in the captured
graph. ``PROBES`` is the table for the built-in rules, keyed by code; a third-party rule can carry its own
probe in ``Rule.probe``, and the table wins for built-in codes.

Modules by family of measurement: ``variance`` (second moments of the shared pass), ``layers`` (one layer on
random input), ``gradients``, ``attention``, ``precision`` (autocast), ``heads``, ``saturation``, ``clones``,
``dropout``; ``runner`` runs the shared pass, ``repairs`` holds the fixes' common machine forms.

>>> sorted(PROBES)[:3]
['IL101', 'IL102', 'IL103']
>>> PROBES["IL201"].measure.__name__
'residual_measure'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..findings import Finding
from ..graph import ModelGraph
from . import attention, clones, dropout, gradients, heads, layers, precision, saturation, variance
from .records import Context, Edit, Measurement, Needs, needs_nothing


@dataclass(frozen=True)
class Probe:
    """How to confirm one rule's findings and verify their fix."""

    measure: Callable[[Context, Finding], Measurement]
    needs: Callable[[ModelGraph, Finding], Needs] = needs_nothing
    repair: Callable[..., tuple[Edit, ...]] | None = None  # (model copy, finding, graph) -> edits
    # ``measure`` reads only the stage's passes (or a layer alone, on its own random input): the passes may then
    # run on fewer samples than the example has (initlint.probe.ELEMENTS). False for a probe that runs
    # experiments of its own on the example inputs, whose standard errors are its own.
    passes_only: bool = False


PROBES: Mapping[str, Probe] = MappingProxyType({
    "IL101": Probe(variance.off_scale_measure, variance.off_scale_needs, variance.off_scale_repair, passes_only=True),
    "IL102": Probe(layers.depthwise_measure, layers.depthwise_needs, layers.depthwise_repair, passes_only=True),
    "IL103": Probe(layers.checkerboard_measure, needs_nothing, layers.checkerboard_repair, passes_only=True),
    "IL104": Probe(heads.head_measure, heads.head_needs, heads.head_repair, passes_only=True),
    "IL105": Probe(gradients.recurrent_measure, gradients.recurrent_needs, gradients.recurrent_repair),
    "IL106": Probe(layers.symmetric_measure, needs_nothing, layers.symmetric_repair, passes_only=True),
    "IL107": Probe(clones.clone_measure, clones.clone_needs, clones.clone_repair),
    "IL201": Probe(variance.residual_measure, variance.residual_needs, variance.residual_repair, passes_only=True),
    "IL202": Probe(variance.branch_sum_measure, variance.branch_sum_needs, variance.branch_sum_repair,
                   passes_only=True),
    "IL203": Probe(variance.concat_measure, variance.concat_needs, variance.concat_repair, passes_only=True),
    "IL204": Probe(gradients.post_ln_measure, needs_nothing, gradients.post_ln_repair),
    "IL205": Probe(attention.attention_measure, attention.attention_needs, attention.attention_repair),
    "IL206": Probe(dropout.dropout_measure, dropout.dropout_needs, dropout.dropout_repair, passes_only=True),
    "IL301": Probe(precision.precision_measure, precision.precision_needs, precision.precision_repair,
                   passes_only=True),
    "IL302": Probe(saturation.saturation_measure, saturation.saturation_needs, saturation.saturation_repair,
                   passes_only=True),
    "IL303": Probe(variance.drift_measure, variance.drift_needs, variance.drift_repair, passes_only=True),
})


def probe_for(code: str, rule_probe: Probe | None = None) -> Probe | None:
    """The probe for a rule code: the table's for built-in codes, else the rule's own."""
    return PROBES.get(code) or rule_probe


__all__ = ["Probe", "PROBES", "probe_for", "Context", "Measurement", "Needs"]
