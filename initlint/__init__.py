"""initlint: find weight-initialization and signal-propagation defects in PyTorch models before training.

``initlint.lint(model_or_target, example_inputs=None, **options) -> Report``; ``initlint.fix(model, report)``
returns a repaired deep copy (``lint(..., probe=True)`` verifies those fixes first). Heavy imports (torch, networkx)
happen on first use, so ``import initlint`` and the CLI start fast.
"""

__version__ = "0.1.0"
__all__ = ["lint", "fix", "Report", "__version__"]


def __getattr__(name):
    if name == "lint":
        from .api import lint

        return lint
    if name == "fix":
        from .probe import fix

        return fix
    if name == "Report":
        from .report import Report

        return Report
    raise AttributeError(f"module 'initlint' has no attribute {name!r}")
