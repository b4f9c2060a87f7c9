"""Which line of the user's code is behind an op: the forward call, and where its module was constructed.

Walking Python frames is nearly free (``record_stack_traces=True`` costs 0.3-2 s per trace), so the tracer
asks :func:`user_frame` for every node it creates, and :func:`construction_sites` records, while a model is
being built, the line that assigned each submodule.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import weakref
from collections.abc import Iterator

import torch

from .ops import Location

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STDLIB_DIR = os.path.dirname(os.__file__) + os.sep
_FRAME_LINE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>\S+)')


_EXAMPLES_DIR = os.path.join(_OWN_DIR, "examples") + os.sep


def _is_own(path: str) -> bool:
    """initlint's machinery (the bundled example models are user code)."""
    return path.startswith(_OWN_DIR) and not path.startswith(_EXAMPLES_DIR)


@functools.lru_cache(maxsize=1024)  # asked for every frame of every traced op
def is_user_file(path: str) -> bool:
    """False for torch, initlint itself, the standard library and generated code."""
    if not path or path.startswith("<"):
        return False
    if path.startswith(_TORCH_DIR) or _is_own(path):
        return False
    if path.startswith(_STDLIB_DIR) and "site-packages" not in path:
        return False
    return True


def display_path(path: str) -> str:
    """Relative to the working directory when below it, as linters show paths."""
    return _display_path(path, os.getcwd())


@functools.lru_cache(maxsize=1024)
def _display_path(path: str, cwd: str) -> str:
    try:
        rel = os.path.relpath(path, cwd)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


_OWN, _OTHER = object(), object()  # what a code object is, when it is not user code (that is its display path)


def user_frame(skip: int = 1, memo: dict | None = None) -> Location | None:
    """The innermost frame of the caller's stack that is user code.

    ``memo``: a dict the caller keeps for one capture, from code objects to what they are (user code's display
    path, initlint's own, other): a traced op's stack is mostly the same few frames of torch.fx and torch.nn."""
    frame = sys._getframe(skip)
    left_initlint = False
    while frame is not None:
        code = frame.f_code
        kind = memo.get(code) if memo is not None else None
        if kind is None:
            path = code.co_filename
            kind = display_path(path) if is_user_file(path) else _OWN if _is_own(path) else _OTHER
            if memo is not None:
                memo[code] = kind
        if kind is _OWN:
            if left_initlint:  # back in initlint's caller side: the model's code had no user frame
                return None
        elif kind is _OTHER:
            left_initlint = True
        else:
            return Location(kind, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return None


def from_stack_trace(text: str | None) -> Location | None:
    """The innermost user frame of a formatted traceback (``node.meta["stack_trace"]`` of torch.export)."""
    if not text:
        return None
    for match in reversed(list(_FRAME_LINE.finditer(text))):
        path = match.group("file")
        if is_user_file(path):
            return Location(display_path(path), int(match.group("line")), match.group("fn"))
        if _is_own(path):  # initlint's own frames: outside the model
            return None
    return None


@contextlib.contextmanager
def construction_sites() -> Iterator[dict[int, Location]]:
    """Record, for each submodule assigned while the block runs, the user line that assigned it.

    The dict maps ``id(submodule)``; it is complete once the block exits.
    """
    sites: dict[int, Location] = {}

    def hook(module, name, submodule):
        if submodule is not None and id(submodule) not in sites:
            loc = user_frame(2)
            if loc is not None:
                sites[id(submodule)] = loc
        return None

    handle = torch.nn.modules.module.register_module_module_registration_hook(hook)
    try:
        yield sites
    finally:
        handle.remove()


# inspect.getsourcelines parses the class's whole file on every call: once per class is enough.
_CLASS_LOCATIONS: weakref.WeakKeyDictionary[type, Location | None] = weakref.WeakKeyDictionary()


def class_location(cls: type) -> Location | None:
    """Where a class is defined, for a root module whose construction was not seen."""
    try:
        return _CLASS_LOCATIONS[cls]
    except (KeyError, TypeError):
        pass
    loc = _class_location(cls)
    with contextlib.suppress(TypeError):  # a class that takes no weak references is not cached
        _CLASS_LOCATIONS[cls] = loc
    return loc


def _class_location(cls: type) -> Location | None:
    import inspect
    import linecache

    try:
        path = inspect.getsourcefile(cls)
    except (OSError, TypeError):
        return None
    if path is None or not is_user_file(path):
        return None
    # One `class Name` line in the file is the definition: found by a scan of its lines, where
    # inspect.getsourcelines parses the whole file (10 ms on a few hundred lines, a lint's cost on small models).
    pattern = re.compile(rf"\s*class\s+{re.escape(cls.__name__)}\b")
    name = cls.__name__
    found = [i for i, text in enumerate(linecache.getlines(path), 1) if name in text and pattern.match(text)]
    if len(found) == 1:
        line = found[0]
    else:
        try:
            _, line = inspect.getsourcelines(cls)
        except (OSError, TypeError):
            return None
    return Location(display_path(path), line, cls.__qualname__)
