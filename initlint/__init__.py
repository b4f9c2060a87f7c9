"""initlint: find weight-initialization and signal-propagation defects in PyTorch models before training."""

__version__ = "0.1.0"
