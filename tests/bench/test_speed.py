"""Speed ratios in the test suite: each may not exceed its recorded value (``benchmarks/baseline.json``) by more
than the margin :data:`benchmarks.baseline.SPEED_MARGIN` justifies (re-record with
``python -m benchmarks.speed --ci --record``)."""

from __future__ import annotations

import functools

import pytest
import torch

from benchmarks import baseline, speed


@functools.cache
def ratios() -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded: one thread, steadier on a shared machine
    try:
        return speed.ci()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("what", ["lint", "measure", "probe", "startup"])
def test_speed_ratio_holds_its_recorded_value(what):
    recorded = baseline.load().get("speed", {}).get(what)
    if recorded is None:
        pytest.skip(f"no recorded `{what}` ratio: run `python -m benchmarks.speed --ci --record`")
    now = ratios()[what]
    assert now is not None, f"`{what}` was recorded ({recorded:.2f}x) but could not be measured now"
    assert now <= recorded * baseline.SPEED_MARGIN, (
        f"{what}: {now:.2f}x, recorded {recorded:.2f}x, allowed up to {recorded * baseline.SPEED_MARGIN:.2f}x")


def test_the_ratio_of_a_slower_side_is_larger():
    """The timing itself can fail the check: a side that sleeps 20 ms is measured at least that much slower."""
    import time

    ours, base = speed.paired(lambda: time.sleep(0.02), lambda: None, 3)
    assert ours >= 0.02 and ours / max(base, 1e-9) > baseline.SPEED_MARGIN
