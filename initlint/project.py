"""Linting a configured project: the targets of a :class:`~initlint.config.Config`, each with its own options,
then the suppressions. The CLI, the pytest plugin and the pre-commit hook all come through here, so they
report the same findings for the same project.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import Config, TargetConfig
from .report import Report, TargetReport
from .suppress import Outcome, apply, read_baseline


def lint_target(config: Config, t: TargetConfig) -> TargetReport:
    """Lint one target with the project's options merged under its own; reported under ``t.name``."""
    from .api import lint

    text = _resolve(t.target, config.root) if t.from_file else t.target
    report = lint(text, **config.lint_options(t))
    return dataclasses.replace(report.targets[0], target=t.name)


def lint_project(config: Config, targets: Sequence[str] = (), *, use_baseline: bool = True) -> Outcome:
    """Lint ``targets`` (strings from the command line) or, when none are given, every configured target."""
    chosen = [config.target(text) for text in targets] or list(config.targets)
    report = Report(tuple(lint_target(config, t) for t in chosen))
    baseline = read_baseline(config.baseline) if use_baseline and config.baseline is not None else None
    return apply(report, root=config.root, per_file_ignores=config.per_file_ignores, baseline=baseline)


def _resolve(target: str, root: Path) -> str:
    """A target from the config file, made to work from any working directory below or beside the project:
    file paths are relative to the config file's folder, and dotted modules import from it."""
    head, sep, rest = target.partition(":")
    if head.endswith(".py") or "/" in head or os.sep in head:
        path = Path(head)
        if not path.is_absolute() and root != Path.cwd().resolve():
            return os.path.relpath(root / path) + sep + rest
        return target
    if str(root) not in sys.path and root != Path.cwd().resolve():
        sys.path.insert(0, str(root))
    return target
