"""The pytest plugin end to end with pytester: `pytest --initlint` items, the `initlint` fixture, and what pytest
users expect to keep working (-k, -m, --lf, --junitxml, xdist, -p no:initlint, no heavy imports when off).

The findings are real: IL102 depthwise-fan on a depthwise conv initialized with PyTorch's fan-out.
"""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET

import pytest

# In-process pytester runs restore sys.modules afterwards; torch cannot be imported a second time in one
# process, so it (and what the plugin imports when on) is imported here, before any run.
import initlint.api  # noqa: F401
import initlint.project  # noqa: F401
import pytest_initlint.collect  # noqa: F401
import pytest_initlint.fixture  # noqa: F401
import torch  # noqa: F401

from .projects import DW_LINE, REAL_MODELS, REAL_PYPROJECT

pytest_plugins = ["pytester"]

BAD_ID = "pyproject.toml::models.py:DepthwiseBlock"
CLEAN_ID = "pyproject.toml::clean-block"
FINDING = f"models.py:{DW_LINE}: IL102 [warning] `dw` (groups=32) has weight variance"


@pytest.fixture
def project(pytester):
    pytester.makefile(".py", models=REAL_MODELS)
    pytester.makefile(".toml", pyproject=REAL_PYPROJECT)
    return pytester


def test_one_item_per_target_failing_with_the_findings(project):
    result = project.runpytest("--initlint", "-v")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([f"{BAD_ID} FAILED*", f"{CLEAN_ID} PASSED*"])
    out = result.stdout.str()
    failure = out[out.index("= FAILURES ="):out.index("short test summary")]
    assert FINDING in failure and "Found 1 finding (1 warning) in 1 model." in failure
    # rendered findings, not a traceback into the plugin
    assert "Traceback" not in failure and "InitlintFailure" not in failure and "runtest" not in failure


def test_selection_by_keyword_marker_and_last_failed(project):
    project.makepyfile(test_plain="def test_plain():\n    pass\n")
    project.runpytest("--initlint", "-k", "clean").assert_outcomes(passed=1, deselected=2)
    project.runpytest("--initlint", "-m", "initlint").assert_outcomes(failed=1, passed=1, deselected=1)
    project.runpytest("--initlint", "-m", "not initlint").assert_outcomes(passed=1, deselected=2)
    project.runpytest("--initlint").assert_outcomes(failed=1, passed=2)
    result = project.runpytest("--initlint", "--lf", "-v")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"{BAD_ID} FAILED*"])


def test_junitxml(project):
    project.runpytest("--initlint", "--junitxml=report.xml").assert_outcomes(failed=1, passed=1)
    cases = ET.parse(project.path / "report.xml").getroot().iter("testcase")
    by_name = {c.get("name"): c for c in cases}
    assert set(by_name) == {"models.py:DepthwiseBlock", "clean-block"}
    failure = by_name["models.py:DepthwiseBlock"].find("failure")
    assert failure is not None and FINDING in failure.text
    assert by_name["clean-block"].find("failure") is None


def test_testpaths_do_not_hide_the_models_but_explicit_paths_are_respected(project):
    project.makefile(".toml", pyproject=REAL_PYPROJECT + '\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    project.mkdir("tests")
    (project.path / "tests" / "test_plain.py").write_text("def test_plain():\n    pass\n")
    project.runpytest("--initlint").assert_outcomes(failed=1, passed=2)
    project.runpytest("--initlint", "tests").assert_outcomes(passed=1)
    project.runpytest("--initlint", "pyproject.toml").assert_outcomes(failed=1, passed=1)
    project.runpytest().assert_outcomes(passed=1)  # flag off: no model items


def test_another_config_file(project):
    project.makefile(".toml", initlint='targets = [{target = "models.py:DepthwiseBlock(mode=\'fan_in\')", name = "x"}]')
    result = project.runpytest("--initlint", "--initlint-config", "initlint.toml", "initlint.toml", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["initlint.toml::x PASSED*"])


def test_the_fixture(project):
    project.makepyfile(test_models=textwrap.dedent('''\
        import torch
        from models import DepthwiseBlock

        def test_defective(initlint):
            initlint(DepthwiseBlock(), torch.randn(2, 32, 8, 8), select=["IL102"])

        def test_clean(initlint):
            report = initlint(DepthwiseBlock(mode="fan_in"), torch.randn(2, 32, 8, 8))
            assert report.findings == []

        def test_other_rules_only(initlint):
            initlint(DepthwiseBlock(), torch.randn(2, 32, 8, 8), select=["IL204"])

        def test_below_fail_level(initlint):
            report = initlint(DepthwiseBlock(), torch.randn(2, 32, 8, 8), fail_level="error")
            assert [f.code for f in report.findings] == ["IL102"]

        def test_unknown_rule(initlint):
            initlint(DepthwiseBlock(), select=["IL999"])
    '''))
    result = project.runpytest("test_models.py", "-v")
    result.assert_outcomes(failed=2, passed=3)
    result.stdout.fnmatch_lines(["*test_defective FAILED*", "*test_clean PASSED*", "*test_other_rules_only PASSED*",
                                 "*test_below_fail_level PASSED*", "*test_unknown_rule FAILED*"])
    out = result.stdout.str()
    assert FINDING in out and "error: unknown rule selector `IL999`" in out
    assert "fixture.py" not in out  # failures are the findings, not the plugin's frames


def test_the_fixture_follows_the_project_config(project):
    project.makefile(".toml", pyproject=REAL_PYPROJECT + 'ignore = ["depthwise-fan"]\n')
    project.makepyfile(test_models=textwrap.dedent('''\
        import torch
        from models import DepthwiseBlock

        def test_defective(initlint):
            assert initlint(DepthwiseBlock(), torch.randn(2, 32, 8, 8)).findings == []
    '''))
    project.runpytest("test_models.py").assert_outcomes(passed=1)


def test_config_errors_stop_the_run(project):
    project.makefile(".toml", pyproject='[tool.initlint]\ntarget = ["models.py:DepthwiseBlock"]\n')
    result = project.runpytest("--initlint")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("initlint: unknown key `target` in [tool.initlint] (pyproject.toml:2): did you mean `targets`?"
            in result.stderr.str())
    (project.path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    result = project.runpytest("--initlint")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--initlint found no pyproject.toml with a [tool.initlint] table" in result.stderr.str()


def test_disabled_with_p_no_initlint(project):
    project.makepyfile(test_models="def test_uses(initlint):\n    pass\n")
    result = project.runpytest("-p", "no:initlint", "--initlint")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --initlint*"])
    result = project.runpytest("-p", "no:initlint")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'initlint' not found*"])


def test_nothing_heavy_is_imported_when_the_flag_is_off(project):
    project.makepyfile(test_light=textwrap.dedent('''\
        import sys

        def test_light():
            loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("initlint", "pytest_initlint.")))
            assert loaded == [], loaded
            assert "pytest_initlint" in sys.modules  # the plugin itself is registered
    '''))
    project.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_xdist_spreads_the_items(project):
    pytest.importorskip("xdist")
    result = project.runpytest_subprocess("--initlint", "-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([f"*FAILED {BAD_ID}*"])
    assert FINDING in result.stdout.str()
