"""From a target string to a model and example inputs.

A target is ``pkg.module:attr`` or ``path/to/file.py:attr``, optionally with literal keyword arguments:
``pkg.module:Net(depth=12, width=256)``. ``attr`` may be an ``nn.Module`` subclass (instantiated), a callable
returning a model or ``(model, example_inputs)``, or a model instance.

>>> parse_target("models.py:Net(depth=2, act='relu')")
TargetSpec(text="models.py:Net(depth=2, act='relu')", module='models.py', attr='Net', kwargs={'depth': 2, 'act': 'relu'})
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import inputs as inputs_mod
from .errors import InputsError, TargetError, describe_exception
from .ops import Location
from .sources import class_location, construction_sites


@dataclass(frozen=True)
class TargetSpec:
    text: str
    module: str  # dotted module name or path to a .py file
    attr: str  # attribute path inside the module, dotted
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_path(self) -> bool:
        return self.module.endswith(".py") or os.sep in self.module or "/" in self.module


@dataclass(frozen=True)
class Target:
    """A loaded model with the inputs to run it on."""

    spec: str  # what the user asked for ("examples/m.py:Net", or "<instance>" from the API)
    model: nn.Module
    inputs: inputs_mod.ExampleInputs
    name: str  # the model's class name
    sites: dict[int, Location] = field(default_factory=dict, repr=False)  # id(submodule) -> construction line

    @property
    def root_site(self) -> Location | None:
        """Where the model's class is defined, found when asked (a scan of its file: 50 us a lint, for a line
        no finding shows yet)."""
        return class_location(type(self.model))


def parse_target(text: str) -> TargetSpec:
    body, call = text, None
    if text.endswith(")") and "(" in text:
        body, call = text[: text.index("(")], text[text.index("(") :]
    module, sep, attr = body.rpartition(":")
    if not sep or not module or not attr:
        raise TargetError(
            f"cannot parse target `{text}`",
            why="expected `pkg.module:attr` or `path/to/file.py:attr`",
            help="for example: `initlint mypkg.models:Net` or `initlint models.py:Net(depth=12)`",
        )
    kwargs: dict[str, Any] = {}
    if call:
        try:
            expr = ast.parse(f"f{call}", mode="eval").body
            if not isinstance(expr, ast.Call) or expr.args:
                raise ValueError("only keyword arguments are allowed")
            for kw in expr.keywords:
                if kw.arg is None:
                    raise ValueError("`**` is not allowed")
                try:
                    kwargs[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    raise ValueError(f"the value of `{kw.arg}` is not a literal") from None
        except (SyntaxError, ValueError) as exc:
            raise TargetError(
                f"cannot parse the arguments of target `{text}`",
                why=str(exc) if isinstance(exc, ValueError) else "not a Python call",
                help="arguments must be literal keyword arguments, e.g. `models.py:Net(depth=12, act='gelu')`",
            ) from None
    return TargetSpec(text, module, attr, kwargs)


def _import(spec: TargetSpec):
    if spec.is_path:
        path = os.path.abspath(spec.module)
        if not os.path.isfile(path):
            raise TargetError(
                f"cannot load target `{spec.text}`",
                why=f"file `{spec.module}` does not exist",
                help="check the path; it is relative to the current directory",
            )
        name = "_initlint_target_" + os.path.splitext(os.path.basename(path))[0]
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        runner = lambda: mod_spec.loader.exec_module(module)  # noqa: E731
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = None
        runner = lambda: importlib.import_module(spec.module)  # noqa: E731
    try:
        result = runner()
    except ModuleNotFoundError as exc:
        if not spec.is_path and exc.name and spec.module.startswith(exc.name):
            raise TargetError(
                f"cannot import module `{spec.module}`",
                why=f"no module named `{exc.name}`",
                help="run initlint from your project's root, or install the package into this environment",
            ) from None
        raise TargetError(
            f"cannot import `{spec.module}`",
            where=_where(exc),
            why=describe_exception(exc),
            help="the error is raised by your module's own imports; fix it or install what it needs",
        ) from exc
    except Exception as exc:
        raise TargetError(
            f"importing `{spec.module}` raised an exception",
            where=_where(exc),
            why=describe_exception(exc),
            help="fix the error in your module (run with --verbose for the traceback)",
        ) from exc
    return module if module is not None else result


def _where(exc: BaseException) -> str:
    """The innermost traceback frame outside initlint, as ``file:line``."""
    from .sources import display_path, is_user_file

    tb, last = exc.__traceback__, None
    while tb is not None:
        if is_user_file(tb.tb_frame.f_code.co_filename):
            last = tb
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{display_path(exc.filename)}:{exc.lineno}"
    return f"{display_path(last.tb_frame.f_code.co_filename)}:{last.tb_lineno}" if last else ""


def _resolve(module, spec: TargetSpec):
    obj = module
    for part in spec.attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(module) if not n.startswith("_")]
            models = [n for n in names if _looks_like_model(getattr(module, n, None))]
            raise TargetError(
                f"module `{spec.module}` has no attribute `{spec.attr}`",
                help=f"models found there: {', '.join(models[:8])}" if models else "check the name after `:`",
            ) from None
    return obj


def _looks_like_model(obj) -> bool:
    return isinstance(obj, nn.Module) or (inspect.isclass(obj) and issubclass(obj, nn.Module))


def load(text: str, input_shapes=None, input_dtype=None) -> Target:
    """Import, build and equip a target with example inputs."""
    spec = parse_target(text)
    label = f"`{spec.text}`"
    factory_inputs = None
    with construction_sites() as sites, torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # a model built by initlint is the same on every run; the caller's RNG is untouched
        obj = _resolve(_import(spec), spec)
        if isinstance(obj, nn.Module):
            if spec.kwargs:
                raise TargetError(f"target {label} is a model instance", why="it takes no arguments",
                                  help="drop the arguments, or point at the class or a factory")
            model = obj
        elif callable(obj):
            model = _call(obj, spec, label)
            if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
                model, factory_inputs = model
        else:
            raise TargetError(f"target {label} is not a model", why=f"it is a {type(obj).__name__}",
                              help="point at an nn.Module subclass, a factory function or a model instance")
    if not isinstance(model, nn.Module):
        raise TargetError(f"target {label} did not give a model",
                          why=f"calling it returned {type(model).__name__}",
                          help="return an nn.Module, or a tuple (model, example_inputs)")
    example = inputs_mod.choose(model, factory_inputs, input_shapes, input_dtype, where=label)
    return Target(spec.text, model, example, type(model).__name__, dict(sites))


def _call(obj, spec: TargetSpec, label: str):
    try:
        sig = inspect.signature(obj)
        sig.bind(**spec.kwargs)
    except TypeError as exc:
        missing = [
            p.name
            for p in sig.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in spec.kwargs
        ]
        help = (
            f"pass them in the target: `{spec.module}:{spec.attr}({', '.join(f'{m}=...' for m in missing)})`"
            if missing
            else "check the argument names"
        )
        raise TargetError(f"cannot call {label}", why=str(exc), help=help) from None
    except ValueError:  # builtins without a signature
        pass
    try:
        return obj(**spec.kwargs)
    except Exception as exc:
        raise TargetError(
            f"building {label} raised an exception",
            where=_where(exc),
            why=describe_exception(exc),
            help="fix the constructor or factory (run with --verbose for the traceback)",
        ) from exc


def from_instance(model: nn.Module, example_inputs=None, input_shapes=None, input_dtype=None) -> Target:
    """Wrap a model the user already holds (the Python API)."""
    if not isinstance(model, nn.Module):
        raise TargetError("initlint.lint() needs an nn.Module or a target string",
                          why=f"got {type(model).__name__}")
    label = f"`{type(model).__name__}` instance"
    example = inputs_mod.choose(model, example_inputs, input_shapes, input_dtype, where=label)
    return Target(f"<{type(model).__name__}>", model, example, type(model).__name__, {})


__all__ = ["Target", "TargetSpec", "parse_target", "load", "from_instance", "InputsError"]
