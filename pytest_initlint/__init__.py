"""pytest plugin for initlint, registered through the ``pytest11`` entry point (``-p no:initlint`` disables it).

* ``pytest --initlint`` adds one test item per target configured in ``[tool.initlint]``, with node ids like
  ``pyproject.toml::pkg.mod:Net``. An item fails with the rendered findings, without a traceback, when a
  finding is at or above ``fail-level``; it passes otherwise. Items carry the ``initlint`` marker, so ``-k``,
  ``-m``, ``--lf``, ``--junitxml`` and ``pytest-xdist`` work as for any test.
* the ``initlint`` fixture lints a model from an ordinary test::

      def test_model(initlint):
          initlint(Net(), torch.randn(2, 3, 32, 32), select=["IL201"])

This module imports nothing from initlint (nor torch): the collector is registered only when ``--initlint``
is given, and the fixture imports what it needs when a test uses it.
"""

from __future__ import annotations

import pytest

MARKER = "initlint"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("initlint", "initialization linting of PyTorch models")
    group.addoption("--initlint", action="store_true",
                    help="lint the models configured in [tool.initlint], one test item per target")
    group.addoption("--initlint-config", metavar="FILE",
                    help="read the targets from FILE instead of the nearest pyproject.toml with [tool.initlint]")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: an initlint check of a model configured in [tool.initlint]")
    if config.getoption("initlint"):
        from .collect import InitlintCollector

        config.pluginmanager.register(InitlintCollector.configure(config), "initlint-collector")


@pytest.fixture
def initlint(request: pytest.FixtureRequest):
    """Lint a model: ``initlint(model, example_inputs=None, *, fail_level=None, **options) -> Report``.

    Options are :func:`initlint.lint`'s (``select``, ``ignore``, ``input_shapes``...) over the project's
    ``[tool.initlint]`` settings; ``# noqa`` comments and per-file ignores apply. The test fails, showing the
    findings, when one is at or above ``fail_level`` (the project's, else ``warning``).
    """
    from .fixture import Checker

    return Checker.for_config(request.config)
