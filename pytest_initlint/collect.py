"""``pytest --initlint``: the collector, registered only when the flag is on, and one item per target.

The project configuration is read once in ``pytest_configure`` and kept in ``config.stash``; each item lints
its target when it runs (so ``-k`` and ``--lf`` skip the work, and xdist spreads it over workers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from initlint.config import Config, TargetConfig

from . import MARKER

CONFIG_KEY = pytest.StashKey[Config]()


class InitlintFailure(Exception):
    """Findings at or above the fail level; ``args[0]`` is the rendered report."""


@dataclass(frozen=True)
class InitlintCollector:
    """The plugin object registered under ``initlint-collector`` when ``--initlint`` is given."""

    path: Path  # the configuration file, resolved

    @classmethod
    def configure(cls, config: pytest.Config) -> "InitlintCollector":
        from initlint import config as config_mod
        from initlint.errors import InitlintError

        given = config.getoption("initlint_config")
        try:
            cfg = config_mod.load(Path(given) if given else None, start=config.invocation_params.dir)
        except InitlintError as exc:
            raise pytest.UsageError(f"initlint: {exc.line}" + (f"\n  help: {exc.help}" if exc.help else ""))
        if cfg.path is None:
            raise pytest.UsageError(
                "initlint: --initlint found no pyproject.toml with a [tool.initlint] table\n"
                "  help: add `[tool.initlint] targets = [\"pkg.module:Model\"]`, or pass --initlint-config FILE")
        config.stash[CONFIG_KEY] = cfg
        path = cfg.path.resolve()
        _add_to_args(config, path)
        return cls(path)

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector):
        if file_path.resolve() == self.path:
            return InitlintFile.from_parent(parent, path=file_path)
        return None


def _add_to_args(config: pytest.Config, path: Path) -> None:
    """Collect the configuration file even when ``testpaths`` or the invocation folder would not reach it;
    paths given on the command line are respected as they are."""
    if config.args_source is pytest.Config.ArgsSource.ARGS:
        return
    here = config.invocation_params.dir
    reached = [(here / a.split("::")[0]).resolve() for a in config.args]
    if not any(path == r or r in path.parents for r in reached):
        config.args.append(str(path))


class InitlintFile(pytest.File):
    def collect(self):
        cfg = self.config.stash[CONFIG_KEY]
        for t in cfg.targets:
            yield InitlintItem.from_parent(self, name=t.name, target=t)


class InitlintItem(pytest.Item):
    def __init__(self, *, target: TargetConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target = target
        self.add_marker(MARKER)

    def runtest(self) -> None:
        from initlint.project import lint_project
        from initlint.render import RenderOptions, render

        cfg = self.config.stash[CONFIG_KEY]
        report = lint_project(cfg, [self.target.name]).report
        color = self.config.get_terminal_writer().hasmarkup
        text = render(report, "text", RenderOptions(color=color, fail_level=cfg.fail_level))
        if report.errors:
            from initlint.render.text import errors

            raise InitlintFailure(errors(report, RenderOptions(color=color)) + text)
        if report.exit_code(cfg.fail_level):
            raise InitlintFailure(text)
        if report.findings:  # below the fail level: shown with -rA
            self.add_report_section("call", "initlint", text)

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance(InitlintFailure):
            return str(excinfo.value.args[0]).rstrip("\n")
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"initlint {self.name}"
