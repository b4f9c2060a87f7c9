"""The benchmark's fast subset in the test suite: precision and recall per rule may not fall below their
recorded values (``benchmarks/baseline.json``, re-recorded with ``python -m benchmarks.report --fast --record``)."""

from __future__ import annotations

import functools

import pytest

from benchmarks import baseline
from benchmarks.cases import CASES, CODES, FAST
from benchmarks.report import Outcome, accuracy_record, evaluate, misses, score

MIN_PAIRS = 3  # the issue: at least three (defective, fixed) pairs per rule, in different coding styles


@functools.cache
def fast():
    return evaluate(FAST)


def regressions(now: dict, recorded: dict) -> list[str]:
    """Each rule whose precision or recall fell below its recorded value, with both numbers. A precision that
    became undefined (the rule reports nothing any more) is the recall's failure, not counted twice."""
    out = []
    for code, rec in recorded.items():
        cur = now.get(code)
        for key in ("precision", "recall"):
            if rec.get(key) is None:
                continue
            value = None if cur is None else cur.get(key)
            if value is None and key == "precision":
                continue
            if value is None or value < rec[key] - baseline.ACCURACY_SLACK:
                out.append(f"{code} {key} {value} < recorded {rec[key]:.3f}")
    return out


def test_every_rule_has_three_pairs_in_different_styles_and_the_zoo_is_there():
    for code in CODES:
        defective = [c for c in CASES if c.rule == code and not c.fixed]
        fixed = [c for c in CASES if c.rule == code and c.fixed]
        assert len(defective) >= MIN_PAIRS and len(fixed) == len(defective), code
        assert len({c.style for c in defective}) == len(defective), f"{code}: styles repeat"
        assert all(code in c.must for c in defective) and all(code in c.must_not for c in fixed), code
    zoo = [c for c in CASES if c.rule is None]
    assert len(zoo) >= 20 and all(set(c.must) | set(c.must_not) <= set(CODES) for c in CASES)


def test_the_fast_subset_has_a_pair_for_every_rule():
    assert {c.rule for c in FAST if c.rule and not c.fixed} == set(CODES)
    assert {c.rule for c in FAST if c.rule and c.fixed} == set(CODES)


def test_no_fast_case_errors():
    outcomes, _, _ = fast()
    assert [o.case.name for o in outcomes if o.error] == []


def test_precision_and_recall_hold_their_recorded_values():
    outcomes, scores, names = fast()
    recorded = baseline.load().get("accuracy_fast")
    assert recorded, "no recorded values: run `python -m benchmarks.report --fast --record`"
    recorded = {code: v for code, v in recorded.items() if code in names or code == "all"}
    bad = regressions(accuracy_record(scores), recorded)
    assert bad == [], "\n".join(bad + misses(outcomes, names))


def test_a_regression_is_caught():
    """The comparison can fail: a rule that stops finding its fast defective case loses its recall."""
    outcomes, scores, names = fast()
    code = next(c.rule for c in FAST if c.rule and not c.fixed and c.rule in names)
    silenced = [Outcome(o.case, o.reported - {code}, o.findings, o.error, o.seconds) for o in outcomes]
    from benchmarks.cases import CODES as codes

    now = accuracy_record(score(silenced, codes, names))
    assert now[code]["recall"] == 0.0
    assert regressions(now, {code: {"precision": 1.0, "recall": 1.0}}) == [f"{code} recall 0.0 < recorded 1.000"]


@pytest.mark.parametrize("case", [c for c in FAST if c.rule is None], ids=lambda c: c.name)
def test_fast_zoo_models_are_clean_at_warning_level(case):
    outcomes, _, names = fast()
    (o,) = [o for o in outcomes if o.case is case]
    assert sorted(o.unexpected & set(names)) == [], misses([o], names)
