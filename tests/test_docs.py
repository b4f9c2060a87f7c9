"""Rule documentation: `initlint rule`, `initlint rules --format json`, and docs/rules.md kept in sync."""

from __future__ import annotations

import json

from initlint import docs
from initlint.cli import main
from initlint.registry import discover

from .projects import use_fake_rules


def test_docs_rules_md_is_up_to_date():
    expected = docs.render(docs.builtin_rules())
    assert docs.DEFAULT_PATH.read_text(encoding="utf-8") == expected, (
        "docs/rules.md is out of date: run `python -m initlint.docs`")


def test_the_page_has_every_rule_with_its_sections(monkeypatch):
    use_fake_rules(monkeypatch)
    rules = [r for r in discover() if r.code in ("IL901", "IL902")]
    page = docs.render(rules)
    assert "| [IL901](#il901-unit-normal-linear) | unit-normal-linear | warning | Finds `nn.Linear` weights" in page
    assert "## IL901 unit-normal-linear\n\nDefault severity: **warning**." in page
    assert page.count("### What it does") == 2 and "## What it does" not in page.replace("### What", "")
    assert "    nn.init.normal_(model.weight)" not in page and "nn.init.normal_(model.weight)" in page
    assert page.index("## IL901") < page.index("## IL902")
    assert "No rules are built in yet." in docs.render([])


def test_check_mode_fails_on_a_stale_page(tmp_path, capsys):
    page = tmp_path / "rules.md"
    assert docs.main(["--output", str(page), "--check"]) == 1  # missing
    assert docs.main(["--output", str(page)]) == 0
    assert page.read_text() == docs.render(docs.builtin_rules())
    assert docs.main(["--output", str(page), "--check"]) == 0
    page.write_text(page.read_text() + "edited by hand\n")
    assert docs.main(["--output", str(page), "--check"]) == 1
    assert "out of date: run `python -m initlint.docs`" in capsys.readouterr().err


def test_rule_command_prints_the_docs(monkeypatch, capsys):
    use_fake_rules(monkeypatch)
    assert main(["rule", "IL901"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# IL901 unit-normal-linear (warning)\n\n## What it does\n")
    assert main(["rule", "no-output-norm"]) == 0
    assert "## Why is this bad?" in capsys.readouterr().out
    assert main(["rules", "--format", "json"]) == 0
    listed = {r["code"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["IL902"]["severity"] == "info" and listed["IL901"]["name"] == "unit-normal-linear"
    assert listed["IL901"]["doc"].startswith("## What it does")
    assert main(["rule", "IL999"]) == 2
    assert "no rule `IL999`" in capsys.readouterr().err
