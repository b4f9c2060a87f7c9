"""Robustness under generated models (:mod:`benchmarks.fuzz`): 100 seeded random architectures.

No internal error, no malformed error and no change to the model's state may happen: hypothesis shrinks a
failing model to a minimal one and the test fails with it. Op predictions beyond the tolerance of the measurement
(engine misses, listed in docs/benchmark.md) may not become more frequent than recorded in
``benchmarks/baseline.json`` (re-record with ``python -m benchmarks.fuzz 100 --record``).
"""

from __future__ import annotations

import functools

import pytest

from benchmarks import baseline, fuzz
from benchmarks.generated import Spec

EXAMPLES = 100


@functools.cache
def generated() -> fuzz.Run:
    return fuzz.run(EXAMPLES, seed=0, raise_hard=True)


def test_generated_models_get_no_internal_error_and_keep_their_state():
    r = generated()
    assert len(r.results) == EXAMPLES
    assert r.hard == []
    assert r.compared > 10 * EXAMPLES  # the prediction check ran on most ops


def test_prediction_misses_are_not_more_frequent_than_recorded():
    r = generated()
    recorded = baseline.load().get("fuzz")
    assert recorded, "no recorded values: run `python -m benchmarks.fuzz 100 --record`"
    share = r.beyond / r.compared
    assert share <= recorded["beyond_share"] + baseline.FUZZ_SLACK, fuzz.summary(r)


def test_the_checks_can_fail(monkeypatch):
    spec = Spec("seq", 16, (("linear", ("kaiming_normal", 1.0), "relu", True),
                                 ("norm", "batch"), ("dropout", 0.5, "module")))
    clean = fuzz.check(spec)
    assert clean.problems == () and clean.compared >= 4
    monkeypatch.setattr(fuzz, "TOLERANCE", -1.0)  # every compared op is now "beyond"
    assert {p.kind for p in fuzz.check(spec).problems} == {"prediction"}
    monkeypatch.undo()

    import initlint

    real = initlint.lint

    def meddling(model, *args, **kwargs):
        model.blocks[1].f.norm.running_mean.add_(1.0)  # a lint that touches BatchNorm's running statistics
        return real(model, *args, **kwargs)

    monkeypatch.setattr(initlint, "lint", meddling)
    assert [p.kind for p in fuzz.check(spec).problems] == ["state-changed"]


@pytest.mark.parametrize("family", ["seq", "img"])
def test_every_block_kind_builds_and_runs(family):
    """The strategy's building blocks, each once, so that a broken builder shows up by name."""
    seq = [("linear", ("xavier_normal", 1.0), "gelu", False), ("norm", "rms"), ("act", "selu"),
           ("residual", ("kaiming_normal", 1.0), ("zeros", 1.0), "relu", "rezero", "rms_hand"),
           ("parallel", 3, ("orthogonal", 1.0), "tanh", True, "stack"), ("concat", ("normal", 1.0), ("default", 1.0), "mish"),
           ("attention", "hand", 2, None, ("xavier_uniform", 1.0), True), ("attention", "sdpa", 4, 1.0, ("default", 1.0), False),
           ("attention", "mha", 2, None, ("trunc_normal", 1.0), True), ("dropout", 0.1, "functional")]
    img = [("conv", 3, "depthwise", ("kaiming_uniform", 1.0), "hardswish"), ("tconv", 3, 2, ("xavier_normal", 1.0), "relu"),
           ("tconv", 4, 1, ("default", 1.0), "elu"), ("norm", "group"), ("norm", "instance"), ("norm", "layer_channels"),
           ("residual", "depthwise", ("kaiming_normal", 1.0), ("default", 0.5), "silu", 0.5 ** 0.5),
           ("parallel", 2, ("default", 1.0), "relu", False, "plus"), ("concat", ("default", 1.0), ("default", 1.0), "relu6"),
           ("dropout", 0.5, "dropout2d"), ("norm", "batch2d")]
    spec = Spec(family, 16, tuple(seq if family == "seq" else img))
    result = fuzz.check(spec)
    assert result.error is None and [p for p in result.problems if p.kind in fuzz.HARD] == []
