"""pytest plugin for initlint (``pytest --initlint``). Registered through the ``pytest11`` entry point.

It imports nothing heavy unless its flag is on.
"""


def pytest_addoption(parser):
    group = parser.getgroup("initlint")
    group.addoption("--initlint", action="store_true", help="lint the models configured in [tool.initlint]")
