"""Every error initlint reports to a user, in one place.

An error says what failed, where, why and what to do, in that order, so that it renders as one line plus a
``help:`` line. Anything else escaping the pipeline is a bug in initlint and is reported as one.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    USAGE = "usage"
    CONFIG = "config"
    TARGET = "target"  # the target could not be imported, found or built
    INPUTS = "inputs"  # example inputs missing or not fitting the model
    CAPTURE = "capture"
    INTERNAL = "internal"  # a bug in initlint


class InitlintError(Exception):
    """A user-facing error: ``what`` failed, at ``where``, because ``why``; ``help`` says what to do."""

    kind = ErrorKind.USAGE

    def __init__(self, what: str, *, why: str = "", where: str = "", help: str = "") -> None:
        self.what, self.why, self.where, self.help = what, why, where, help
        super().__init__(self.line)

    @property
    def line(self) -> str:
        text = self.what
        if self.where:
            text += f" ({self.where})"
        if self.why:
            text += f": {self.why}"
        return text


class UsageError(InitlintError):
    kind = ErrorKind.USAGE


class ConfigError(InitlintError):
    kind = ErrorKind.CONFIG


class TargetError(InitlintError):
    kind = ErrorKind.TARGET


class InputsError(InitlintError):
    kind = ErrorKind.INPUTS


class CaptureError(InitlintError):
    kind = ErrorKind.CAPTURE


def describe_exception(exc: BaseException) -> str:
    """``TypeError: bad thing`` on one line, the message cut to its first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
