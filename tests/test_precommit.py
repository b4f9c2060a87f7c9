"""pre-commit: the hook manifest, and the `repo: local` hook of docs/integrations.md run by the real pre-commit
in a temporary git repository: a commit with a defective model is blocked with the findings shown, a clean one
passes, a commit that touches no Python or TOML file skips the hook."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .projects import DW_LINE, REAL_MODELS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the environment's own initlint, as `language: system` runs it


def _docs_local_config() -> str:
    """The first YAML block of docs/integrations.md that defines a `repo: local` hook."""
    text = (ROOT / "docs" / "integrations.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if "repo: local" in b)


def test_manifest_is_valid_and_matches_the_documented_hook():
    from pre_commit.clientlib import load_manifest

    (hook,) = load_manifest(str(ROOT / ".pre-commit-hooks.yaml"))
    assert (hook["id"], hook["entry"], hook["language"]) == ("initlint", "initlint", "python")
    (local,) = yaml.safe_load(_docs_local_config())["repos"][0]["hooks"]
    for key in ("id", "entry", "types_or", "pass_filenames", "require_serial"):
        assert local[key] == hook[key], key
    assert hook["pass_filenames"] is False  # the targets come from [tool.initlint], not from file names


def _git(repo: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_defective_model_blocks_the_commit(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "models.py").write_text(REAL_MODELS)
    (repo / "pyproject.toml").write_text('[tool.initlint]\ntargets = ["models.py:DepthwiseBlock"]\n')
    (repo / ".pre-commit-config.yaml").write_text(_docs_local_config())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PYTHONPATH"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PRE_COMMIT_HOME=str(tmp_path / "cache"),
               HOME=str(tmp_path), GIT_CONFIG_NOSYSTEM="1", NO_COLOR="1")
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "dev@example.com"],
                 ["config", "user.name", "Dev"], ["config", "commit.gpgsign", "false"]):
        assert _git(repo, *args, env=env).returncode == 0
    install = subprocess.run([str(BIN / "pre-commit"), "install"], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr

    _git(repo, "add", "-A", env=env)
    blocked = _git(repo, "commit", "-m", "add a model", env=env)
    output = blocked.stdout + blocked.stderr
    assert blocked.returncode != 0, output
    assert re.search(r"^initlint\.+Failed$", output, flags=re.M), output
    assert f"models.py:{DW_LINE}: IL102 [warning] `dw` (groups=32) has weight variance" in output
    assert _git(repo, "rev-parse", "HEAD", env=env).returncode != 0  # nothing was committed

    (repo / "models.py").write_text(REAL_MODELS.replace('mode="fan_out"', 'mode="fan_in"'))
    _git(repo, "add", "-A", env=env)
    passed = _git(repo, "commit", "-m", "add a model", env=env)
    output = passed.stdout + passed.stderr
    assert passed.returncode == 0, output
    assert re.search(r"^initlint\.+Passed$", output, flags=re.M), output

    (repo / "README.md").write_text("# models\n")
    _git(repo, "add", "-A", env=env)
    skipped = _git(repo, "commit", "-m", "docs", env=env)
    output = skipped.stdout + skipped.stderr
    assert skipped.returncode == 0 and re.search(r"^initlint\.+\(no files to check\)Skipped$", output, flags=re.M), output
