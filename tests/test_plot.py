"""--plot: a signal-propagation picture (PNG or SVG) with predicted and measured second moments, float16's limits
and the findings; a one-line error when matplotlib is missing."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from initlint import lint
from initlint.cli import main
from initlint.plot import MAX_POINTS, _points, figure
from initlint.signals import compare

MODEL = """
import torch
from torch import nn

class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(self.fc2.weight, nonlinearity="linear")

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))

def build():
    torch.manual_seed(0)
    return nn.Sequential(*[Block(64) for _ in range(4)]), torch.randn(32, 64)
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "m.py").write_text(textwrap.dedent(MODEL))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("ext,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_plot_is_written(project, capsys, ext, magic):
    out = project / "plots" / f"signal{ext}"
    assert main(["m.py:build", "--plot", str(out), "--device", "cpu", "--isolated"]) == 1  # IL201 is found
    data = out.read_bytes()
    assert data.startswith(magic) and len(data) > 10_000
    if ext == ".svg":
        text = data.decode()
        assert "IL201" in text, "the finding is marked"
        assert "float16 max" in text and "measured" in text and "predicted" in text


def test_missing_matplotlib_is_a_one_line_usage_error(project, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["m.py:build", "--plot", "x.png", "--isolated"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --plot needs matplotlib, which is not installed: pip install 'initlint[plot]'"]
    assert not (project / "x.png").exists()


def test_unknown_image_format_is_a_usage_error(project, capsys):
    assert main(["m.py:build", "--plot", "x.gif", "--device", "cpu", "--isolated"]) == 2
    assert "unknown image format `.gif`" in capsys.readouterr().err


def test_long_models_are_drawn_per_block():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.LayerNorm(16)) for _ in range(60)])
    t = lint(model, torch.randn(8, 16), select=[], signals=True, device="cpu").targets[0]
    rows = compare(t.graph, t.measured)
    assert len(rows) > MAX_POINTS
    points = _points(rows)
    assert [p.kind.value for p in points] == ["input"] + ["norm"] * 60  # the input, then each block's last op
    fig = figure(t.graph, t.measured)
    assert len(fig.axes) == 2 and fig.axes[0].get_yscale() == "log"
