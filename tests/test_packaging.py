"""The built wheel ships `rules/` as `initlint.rules` and no top-level `rules` package."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    ROOT], check=True, capture_output=True)
    (path,) = [p for p in out.iterdir() if p.suffix == ".whl"]
    return path


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "initlint/rules/__init__.py" in names
    assert not any(n.startswith("rules/") for n in names), "a top-level `rules` package would be installed"
    assert "pytest_initlint/__init__.py" in names
    assert "initlint/examples/__init__.py" in names
    rule_files = sorted(n for n in names if n.startswith("initlint/rules/") and n.endswith(".py"))
    source = sorted(f"initlint/rules/{f}" for f in os.listdir(os.path.join(ROOT, "rules")) if f.endswith(".py"))
    assert rule_files == source


def test_entry_points(wheel):
    zf = zipfile.ZipFile(wheel)
    (ep,) = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
    text = zf.read(ep).decode()
    assert "[initlint.rules]\nbuiltin = initlint.rules:BUILTIN_RULES" in text
    assert "[pytest11]\ninitlint = pytest_initlint" in text
    assert "[console_scripts]\ninitlint = initlint.cli:main" in text


def test_installed_wheel_runs_in_a_fresh_environment(wheel, tmp_path):
    """`pip install` of the wheel into a new venv that sees this environment's torch: the CLI and rules load."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    # the parent venv's site-packages provide torch and networkx; the wheel itself goes into the new venv
    site = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (venv / "lib").mkdir(exist_ok=True)
    pth_dir = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(pth_dir, "parent.pth"), "w") as fh:
        fh.write(site + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    code = ("import initlint, initlint.rules, os; from initlint.registry import discover; "
            "print(os.path.dirname(initlint.__file__).startswith(os.environ['VENV'])); "
            "print(len(discover()) == len(initlint.rules.BUILTIN_RULES))")
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "VENV": str(venv)}).stdout.split()
    assert out == ["True", "True"]
    run = subprocess.run([str(venv / "bin" / "initlint"), "initlint.examples:ScaledResidualMLP"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode in (0, 1), run.stderr
