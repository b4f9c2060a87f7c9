"""The rule catalogue: codes and names fixed, docs complete, every rule tested, its examples executed."""

from __future__ import annotations

import os
import re

import pytest

from initlint import lint
from initlint.registry import SECTIONS, discover
from initlint.rules import BUILTIN_RULES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Fixed by the catalogue issue: configurations and suppressions depend on these pairs never changing.
CODES = {
    "IL101": "off-scale-weights", "IL102": "depthwise-fan", "IL103": "transposed-conv-checkerboard",
    "IL104": "hot-classifier-head", "IL105": "recurrent-radius", "IL106": "symmetric-init",
    "IL107": "cloned-layer-init", "IL201": "unscaled-residual", "IL202": "unscaled-branch-sum",
    "IL203": "concat-scale-mismatch", "IL204": "post-ln", "IL205": "unscaled-attention-logits",
    "IL206": "non-inverted-dropout", "IL301": "fp16-range", "IL302": "saturated-activation",
    "IL303": "signal-drift",
}
RULES = {r.code: r for r in BUILTIN_RULES}


def test_codes_and_names_are_the_fixed_ones():
    for r in BUILTIN_RULES:
        assert CODES.get(r.code) == r.name, f"{r.code} must be named {CODES.get(r.code)!r}"


def test_builtin_rules_are_listed_once_in_code_order():
    codes = [r.code for r in BUILTIN_RULES]
    assert codes == sorted(set(codes))
    assert len({r.name for r in BUILTIN_RULES}) == len(codes)


def test_builtin_rules_are_discovered_through_the_entry_point():
    assert {r.code for r in discover()} >= set(RULES)


@pytest.mark.parametrize("code", sorted(RULES))
def test_docs_have_every_section(code):
    r = RULES[code]
    assert list(r.sections)[: len(SECTIONS)] == list(SECTIONS), f"{code} sections: {list(r.sections)}"
    assert r.summary.endswith("."), f"{code}: 'What it does' should open with a full sentence"
    assert len(r.code_blocks("Example")) == 1 and len(r.code_blocks("Use instead")) == 1


@pytest.mark.parametrize("code", sorted(RULES))
def test_every_rule_has_a_test_file(code):
    module = RULES[code].check.__module__.rsplit(".", 1)[-1]
    assert os.path.isfile(os.path.join(ROOT, "tests", "rules", f"test_{module}.py")), module


def _run_block(source: str):
    namespace: dict = {}
    exec(compile(source, "<doc example>", "exec"), namespace)
    assert "model" in namespace, "a documentation example must define `model`"
    return namespace["model"], namespace.get("example_inputs")


@pytest.mark.parametrize("code", sorted(RULES))
def test_example_triggers_the_rule(code):
    model, inputs = _run_block(RULES[code].code_blocks("Example")[0])
    report = lint(model, inputs, select=[code])
    assert report.targets[0].error is None, report.targets[0].error
    assert [f.code for f in report.findings].count(code) >= 1, f"{code}'s Example does not trigger it"


@pytest.mark.parametrize("code", sorted(RULES))
def test_use_instead_is_clean(code):
    model, inputs = _run_block(RULES[code].code_blocks("Use instead")[0])
    report = lint(model, inputs, select=[code])
    assert report.targets[0].error is None, report.targets[0].error
    assert report.findings == [], [f.message for f in report.findings]


def test_rule_functions_never_name_their_own_code():
    """The engine stamps codes; a rule's source that spells its code elsewhere than the decorator drifts."""
    for r in BUILTIN_RULES:
        path = os.path.join(ROOT, "rules", r.check.__module__.rsplit(".", 1)[-1] + ".py")
        with open(path) as fh:
            source = fh.read()
        body = source.split("def ", 1)[1] if "def " in source else ""
        doc_free = re.sub(r'""".*?"""', "", body, flags=re.S)
        assert r.code not in doc_free, f"{path} names {r.code} outside its decorator and docs"
