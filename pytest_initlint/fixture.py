"""The ``initlint`` fixture's callable: lint a model instance from an ordinary test, fail it on findings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from initlint.config import Config
from initlint.findings import Severity
from initlint.report import Report

_CONFIG_KEY = pytest.StashKey[Config]()


@dataclass(frozen=True)
class Checker:
    config: Config
    color: bool = False

    @classmethod
    def for_config(cls, pytest_config: pytest.Config) -> "Checker":
        from . import collect

        cfg = pytest_config.stash.get(collect.CONFIG_KEY, None) or pytest_config.stash.get(_CONFIG_KEY, None)
        if cfg is None:
            from initlint import config as config_mod
            from initlint.errors import InitlintError

            try:
                cfg = config_mod.load(start=pytest_config.invocation_params.dir)
            except InitlintError as exc:
                raise pytest.UsageError(f"initlint: {exc.line}")
            pytest_config.stash[_CONFIG_KEY] = cfg
        return cls(cfg, pytest_config.get_terminal_writer().hasmarkup)

    def __call__(self, model, example_inputs: Any = None, *, fail_level: str | Severity | None = None,
                 **options: Any) -> Report:
        """Lint ``model``; fail the calling test, showing the findings, if one is at or above ``fail_level``."""
        from initlint.api import lint
        from initlint.config import TargetConfig
        from initlint.render import RenderOptions, render
        from initlint.suppress import apply

        from initlint.errors import InitlintError

        merged = {**self.config.lint_options(TargetConfig("<fixture>", "<fixture>")), **options}
        try:
            report = lint(model, example_inputs, **merged)
        except InitlintError as exc:
            pytest.fail(f"error: {exc.line}" + (f"\n  help: {exc.help}" if exc.help else ""), pytrace=False)
        report = apply(report, root=self.config.root, per_file_ignores=self.config.per_file_ignores).report
        level = Severity.parse(fail_level) if isinstance(fail_level, str) else fail_level or self.config.fail_level
        if report.exit_code(level):
            text = render(report, "text", RenderOptions(color=self.color, fail_level=level))
            from initlint.render.text import errors

            pytest.fail(errors(report, RenderOptions(color=self.color)) + text.rstrip("\n"), pytrace=False)
        return report
