"""Rule declaration, discovery through entry points (built-in and third-party alike), selection."""

from __future__ import annotations

import os

import pytest

from initlint.errors import UsageError
from initlint.ops import OpKind
from initlint.registry import Rule, discover, find, rule, select

FAKE = os.path.join(os.path.dirname(__file__), "data", "fake_rules")


@pytest.fixture
def plugin(monkeypatch):
    """A third-party distribution on sys.path, exposing two rules through the `initlint.rules` group."""
    monkeypatch.syspath_prepend(FAKE)
    import importlib

    importlib.invalidate_caches()
    yield


def _r(code, name):
    return rule(code, name, applies_to={OpKind.ADD})(lambda op, g: None)


RULES = (_r("IL101", "off-scale-weights"), _r("IL201", "unscaled-residual"), _r("IL204", "post-ln"))


def test_decorator_validates_code_and_name():
    with pytest.raises(ValueError, match="three digits"):
        rule("X1", "a-b")
    with pytest.raises(ValueError, match="kebab-case"):
        rule("IL123", "Bad_Name")
    r = _r("IL123", "fine-name")
    assert isinstance(r, Rule) and r.applies_to == frozenset({OpKind.ADD})


@pytest.mark.parametrize("selector,expected", [
    (["IL2"], ["IL201", "IL204"]), (["post-ln"], ["IL204"]), (["ALL"], ["IL101", "IL201", "IL204"]),
    (["il101", "IL204"], ["IL101", "IL204"]), (None, ["IL101", "IL201", "IL204"]),
])
def test_select(selector, expected):
    assert [r.code for r in select(RULES, selector)] == expected


def test_ignore_wins_over_select():
    assert [r.code for r in select(RULES, ["IL2"], ["unscaled-residual"])] == ["IL204"]


def test_unknown_selector_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown rule selector `IL9`"):
        select(RULES, ["IL9"])
    with pytest.raises(UsageError, match="no rule `nope`"):
        find(RULES, "nope")


def test_third_party_rules_are_discovered(plugin):
    codes = {r.code for r in discover()}
    assert {"IL901", "IL902"} <= codes


def test_third_party_rule_runs_end_to_end(plugin):
    import torch
    from torch import nn

    from initlint import lint

    model = nn.Linear(64, 64)
    nn.init.normal_(model.weight)
    report = lint(model, torch.randn(2, 64), select=["IL901"])
    (f,) = report.findings
    assert f.code == "IL901" and f.name == "unit-normal-linear" and "variance x" in f.message


def test_rule_docs_are_parsed():
    r = rule("IL999", "doc-test")(_doc_rule)
    assert list(r.sections) == ["What it does", "Why is this bad?", "Example", "Use instead", "References"]
    assert r.summary == "Finds nothing."
    assert r.code_blocks("Example") == ["model = 1\n"]


def _doc_rule(graph):
    """
    ## What it does
    Finds nothing. Really.

    ## Why is this bad?
    It is not.

    ## Example
    ```python
    model = 1
    ```

    ## Use instead
    ```python
    model = 2
    ```

    ## References
    - none
    """
