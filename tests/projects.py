"""Small user projects on disk for the integration tests (config, suppressions, formats, pytest, pre-commit).

The findings come from ``tests/data/fake_rules``, a rule plugin installed the way third-party plugins are (a
``dist-info`` with an ``initlint.rules`` entry point): put the folder on ``sys.path`` (:func:`use_fake_rules`)
or ``PYTHONPATH`` (subprocesses). IL901 flags each ``nn.Linear`` initialized with std 1 (a warning, at the
line of the forward call); IL902 notes a model without normalization (info, no source line).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

FAKE_RULES = Path(__file__).resolve().parent / "data" / "fake_rules"

MODELS = textwrap.dedent('''\
    import torch
    from torch import nn


    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(32, 32)
            self.fc2 = nn.Linear(32, 32)
            nn.init.normal_(self.fc1.weight)
            nn.init.normal_(self.fc2.weight)

        def forward(self, x):
            x = torch.relu(self.fc1(x))
            return self.fc2(x)


    class Good(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 32)
            self.norm = nn.LayerNorm(32)

        def forward(self, x):
            return self.norm(self.fc(x))
''')
FC1_LINE = 14  # `x = torch.relu(self.fc1(x))`
FC2_LINE = 15  # `return self.fc2(x)`

# A real defect for the built-in rules: IL102 depthwise-fan, a depthwise conv initialized with PyTorch's fan-out
# (which ignores `groups`). `DepthwiseBlock(mode='fan_in')` is the clean version.
REAL_MODELS = textwrap.dedent('''\
    import torch
    from torch import nn


    class DepthwiseBlock(nn.Module):
        def __init__(self, mode="fan_out"):
            super().__init__()
            self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
            self.pw = nn.Conv2d(32, 32, 1)
            nn.init.kaiming_normal_(self.dw.weight, mode=mode, nonlinearity="relu")

        def forward(self, x):
            return self.pw(torch.relu(self.dw(x)))
''')
DW_LINE = 13  # `return self.pw(torch.relu(self.dw(x)))`
REAL_PYPROJECT = textwrap.dedent('''\
    [tool.initlint]
    targets = ["models.py:DepthwiseBlock", {target = "models.py:DepthwiseBlock(mode='fan_in')", name = "clean-block"}]
''')

# Only the fake rules: the built-in catalogue rightly finds more in `Bad` (IL101 off-scale weights, IL104 hot
# head), which would make these tests about the catalogue instead of the integration.
PYPROJECT = textwrap.dedent('''\
    [tool.initlint]
    targets = ["models.py:Bad", "models.py:Good"]
    select = ["IL9"]
''')


def use_fake_rules(monkeypatch) -> None:
    """Install the fake rule plugin for this test (entry points are read from sys.path at each discovery)."""
    monkeypatch.syspath_prepend(str(FAKE_RULES))


def write_project(root: Path, pyproject: str = PYPROJECT, models: str = MODELS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "models.py").write_text(models)
    (root / "pyproject.toml").write_text(pyproject)
    return root


def edit_line(path: Path, number: int, suffix: str) -> None:
    """Append ``suffix`` (a comment) to line ``number`` of ``path``."""
    lines = path.read_text().splitlines()
    lines[number - 1] += suffix
    path.write_text("\n".join(lines) + "\n")
