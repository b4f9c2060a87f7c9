"""The built wheel ships `rules/` as `initlint.rules` and no top-level `rules` package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [p for p in out.splitlines() if os.path.exists(os.path.join(ROOT, p))]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Built from a copy of the tracked files, so no stale build/ folder or untracked file leaks in."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for rel in _tracked():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), dest)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True)
    (path,) = [p for p in out.iterdir() if p.suffix == ".whl"]
    return path


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "initlint/rules/__init__.py" in names
    assert not any(n.startswith("rules/") for n in names), "a top-level `rules` package would be installed"
    assert "pytest_initlint/__init__.py" in names
    assert "initlint/examples/__init__.py" in names
    shipped = {n for n in names if n.endswith(".py")}
    expected = {("initlint/" + p if p.startswith("rules/") else p) for p in _tracked()
                if p.endswith(".py") and p.startswith(("initlint/", "rules/", "pytest_initlint/"))}
    assert expected - shipped == set(), "tracked modules missing from the wheel (list the package in pyproject)"


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
    run = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "VENV": str(venv)})
    assert run.stdout.split() == ["True", "True"], run.stderr
    run = subprocess.run([str(venv / "bin" / "initlint"), "initlint.examples:ScaledResidualMLP"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode in (0, 1), run.stderr
