"""The recorded values the test suite holds the benchmark to (``benchmarks/baseline.json``), and their tolerances.

    .venv/bin/python -m benchmarks.report --fast --record    # precision and recall per rule, fast subset
    .venv/bin/python -m benchmarks.speed --ci --record       # the CI speed ratios
    .venv/bin/python -m benchmarks.fuzz 100 --record         # the in-suite fuzz run's prediction misses

Re-record only on purpose (a rule made better, a new case, a faster engine), and say so in the commit.
"""

from __future__ import annotations

import json
import os
from typing import Any

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baseline.json")

# Speed ratios are medians of interleaved runs on a shared 2-core machine. Over repeated runs of the CI speed
# subset (docs/benchmark.md, "CI tolerances") the median ratios moved by up to about 35% between runs while other
# processes competed for the cores; a ratio fails only beyond twice its recorded value, which a real regression
# (an accidental quadratic walk, an eager import of transformers) exceeds and noise does not.
SPEED_MARGIN = 2.0
# Precision and recall are counts over seeded models: deterministic. Any drop below the recorded value fails.
ACCURACY_SLACK = 1e-9
# The fuzz run is seeded (same 100 models every run); its share of op predictions beyond the tolerance may move a
# little with floating-point differences between machines (a measurement at the edge of the tolerance): one point.
FUZZ_SLACK = 0.01


def load() -> dict[str, Any]:
    if not os.path.exists(PATH):
        return {}
    with open(PATH) as fh:
        return json.load(fh)


def record(section: str, values: dict[str, Any]) -> None:
    data = load()
    data[section] = values
    with open(PATH, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
