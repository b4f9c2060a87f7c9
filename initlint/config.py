"""``[tool.initlint]`` in ``pyproject.toml``: finding it, validating it, and the frozen :class:`Config` record.

The nearest ``pyproject.toml`` with a ``[tool.initlint]`` table, walking up from the working directory, is the
project's configuration; command-line options override it (:meth:`Config.override`). Every key and value is
checked here, so a typo is one clear error (exit 2) instead of a setting silently ignored.

>>> cfg = parse({"targets": ["models.py:Net", {"target": "pkg.vit:ViT", "input-shape": [[2, 3, 32, 32]]}],
...              "ignore": ["IL206"], "fail-level": "error"}, source="pyproject.toml")
>>> [t.name for t in cfg.targets], cfg.targets[1].input_shapes, cfg.fail_level.value
(['models.py:Net', 'pkg.vit:ViT'], ((2, 3, 32, 32),), 'error')
>>> parse({"fail_level": "error"}, source="pyproject.toml")
Traceback (most recent call last):
...
initlint.errors.ConfigError: unknown key `fail_level` in [tool.initlint] (pyproject.toml): did you mean `fail-level`?
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ConfigError
from .findings import Severity

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

TABLE = "[tool.initlint]"
CAPTURES = ("fx", "export", "hooks")
_DEVICE = re.compile(r"^(cpu|auto|mps|meta|(cuda|xpu)(:\d+)?)$")
_SELECTOR = re.compile(r"^(ALL|IL\d{0,3}|[a-z][a-z0-9]*(-[a-z0-9]+)*)$")
_RULE = re.compile(r"^(IL\d{3}|[a-z][a-z0-9]*(-[a-z0-9]+)*)$")


@dataclass(frozen=True)
class TargetConfig:
    """One model to lint, with its own example inputs and options."""

    target: str  # as written: "pkg.mod:Net" or "models.py:Net(depth=2)"
    name: str  # how reports, baselines and pytest node ids call it; the target string unless given
    input_shapes: tuple[tuple[int, ...], ...] | None = None
    input_dtypes: tuple[str, ...] = ()
    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    capture: str | None = None
    from_file: bool = False  # written in the config file: file paths are relative to the file's folder


@dataclass(frozen=True)
class Config:
    """The resolved configuration: file settings with command-line overrides applied."""

    path: Path | None = None  # the file it was read from; None for defaults or --isolated
    root: Path = field(default_factory=Path.cwd)  # relative paths in the file resolve against this
    targets: tuple[TargetConfig, ...] = ()
    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (glob, selectors), in file order
    fail_level: Severity = Severity.WARNING
    probe: bool = False
    signals: bool = False  # measure every op too (--signals, --plot): command line only
    device: str = "auto"  # auto: CUDA when present
    severity: Mapping[str, Severity] = field(default_factory=lambda: MappingProxyType({}))
    baseline: Path | None = None
    capture: str | None = None

    def target(self, text: str) -> TargetConfig:
        """The configured entry for a target string or name, else a bare one."""
        for t in self.targets:
            if text in (t.target, t.name):
                return t
        return TargetConfig(text, text)

    def lint_options(self, t: TargetConfig) -> dict[str, Any]:
        """Keyword arguments for :func:`initlint.lint`: the target's own settings over the project's."""
        select = t.select if t.select is not None else self.select
        return {
            "select": list(select) if select is not None else None,
            "ignore": [*self.ignore, *t.ignore],
            "input_shapes": [list(s) for s in t.input_shapes] if t.input_shapes else None,
            "input_dtypes": list(t.input_dtypes),
            "capture": t.capture or self.capture,
            "severity_overrides": dict(self.severity),
            "probe": self.probe,
            "signals": self.signals,
            "device": self.device,
        }

    def override(self, **changes: Any) -> "Config":
        """A copy with command-line values applied; ``None`` means "not given on the command line"."""
        given = {k: v for k, v in changes.items() if v is not None}
        if "select" in given:  # a fresh selection, as ruff does for a layer that sets `select`
            given.setdefault("ignore", ())
        elif "ignore" in given:
            given["ignore"] = (*self.ignore, *given["ignore"])
        return dataclasses.replace(self, **given)


# -- finding and reading -----------------------------------------------------------------------------------


def find(start: Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` with a ``[tool.initlint]`` table, from ``start`` up to the filesystem root."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and _has_table(candidate):
            return candidate
    return None


def _has_table(path: Path) -> bool:
    try:
        return "initlint" in _read(path).get("tool", {})
    except ConfigError:
        return True  # a broken file that might be ours: report its error rather than skip it


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file `{path}`", why=exc.strerror or str(exc),
                          help="check the path given to --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"`{_show(path)}` is not valid TOML", why=str(exc),
                          help="fix the syntax; see https://toml.io") from None


def load(path: Path | None = None, *, isolated: bool = False, start: Path | None = None) -> Config:
    """Read the configuration: ``path`` if given (``--config``), else the nearest one; defaults if none."""
    if isolated:
        return Config()
    path = path or find(start)
    if path is None:
        return Config()
    data = _read(path)
    table = data.get("tool", {}).get("initlint") if "tool" in data else None
    if table is None:
        if path.name == "pyproject.toml":
            raise ConfigError(f"`{_show(path)}` has no {TABLE} table",
                              help="add a [tool.initlint] table, or point --config at another file")
        table = data  # a standalone initlint.toml: the keys at top level
    return parse(table, source=_show(path), path=path, text=_text(path))


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _show(path: Path) -> str:
    from .sources import display_path

    return display_path(str(path))


# -- validating --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ctx:
    source: str
    text: str

    def where(self, key: str) -> str:
        """``file:line`` of the first line that sets ``key``, as well as a TOML file can be searched."""
        pattern = re.compile(rf"^\s*(\"|')?{re.escape(key)}(\"|')?\s*=", re.M)
        match = pattern.search(self.text)
        if match is None:
            return self.source
        return f"{self.source}:{self.text.count(chr(10), 0, match.start()) + 1}"

    def error(self, key: str, what: str, why: str = "", help: str = "") -> ConfigError:
        return ConfigError(what, where=self.where(key.rsplit(".", 1)[-1]), why=why, help=help)


def _strings(ctx: _Ctx, key: str, value: Any, *, pattern: re.Pattern | None = None,
             kind: str = "strings") -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ctx.error(key, f"`{key}` must be a list of {kind}", why=f"got {_type(value)}",
                        help=f'for example: {key.rsplit(".", 1)[-1]} = ["IL201", "IL1"]')
    items = tuple(s.strip() for s in value)
    if pattern is not None:
        for s in items:
            if not pattern.match(s):
                raise ctx.error(key, f"`{key}` has an invalid entry `{s}`",
                                why="expected a rule code (IL201), a code prefix (IL2), ALL, or a rule name",
                                help="run `initlint rules` to list the rules")
    return items


def _choice(ctx: _Ctx, key: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ctx.error(key, f"`{key}` must be one of {', '.join(choices)}", why=f"got {value!r}",
                        help=_suggest(str(value), choices) or f'for example: {key} = "{choices[0]}"')
    return value


def _severity(ctx: _Ctx, key: str, value: Any) -> Severity:
    return Severity(_choice(ctx, key, value, [s.value for s in Severity]))


def _bool(ctx: _Ctx, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(key, f"`{key}` must be true or false", why=f"got {value!r}",
                        help=f"for example: {key} = true (no quotes)")
    return value


def _device(ctx: _Ctx, key: str, value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ctx.error(key, f"`{key}` must name a torch device", why=f"got {value!r}",
                        help='for example: device = "cpu", "cuda", "cuda:1" or "auto"')
    return value


def _shapes(ctx: _Ctx, key: str, value: Any) -> tuple[tuple[int, ...], ...]:
    if isinstance(value, list) and value and all(isinstance(d, int) for d in value):
        value = [value]  # one input: input-shape = [2, 3, 32, 32]
    ok = isinstance(value, list) and value and all(
        isinstance(s, list) and s and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s)
        for s in value)
    if not ok:
        raise ctx.error(key, f"`{key}` must be a list of shapes of positive integers", why=f"got {value!r}",
                        help="one list per model input: input-shape = [[2, 3, 32, 32]]")
    return tuple(tuple(s) for s in value)


def _target_string(ctx: _Ctx, key: str, value: Any) -> str:
    if not isinstance(value, str) or ":" not in value.split("(", 1)[0]:
        raise ctx.error(key, f"`{key}` has an invalid target {value!r}",
                        why="expected `pkg.module:attr` or `path/to/file.py:attr`",
                        help='for example: targets = ["mypkg.models:Net", "models.py:Net(depth=12)"]')
    return value


def _name(ctx: _Ctx, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "::" in value:
        raise ctx.error(key, f"`{key}` must be a non-empty string without `::`", why=f"got {value!r}",
                        help='for example: name = "Net-small"')
    return value


def _table(ctx: _Ctx, key: str, value: Any, example: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ctx.error(key, f"`{key}` must be a table", why=f"got {_type(value)}", help=f"for example: {example}")
    return value


_TARGET_KEYS: dict[str, Callable[[_Ctx, str, Any], Any]] = {
    "target": _target_string,
    "name": lambda ctx, k, v: _name(ctx, k, v),
    "input-shape": _shapes,
    "input-dtype": lambda ctx, k, v: _strings(ctx, k, v, kind="dtype names"),
    "select": lambda ctx, k, v: _strings(ctx, k, v, pattern=_SELECTOR, kind="rule selectors"),
    "ignore": lambda ctx, k, v: _strings(ctx, k, v, pattern=_SELECTOR, kind="rule selectors"),
    "capture": lambda ctx, k, v: _choice(ctx, k, v, CAPTURES),
}


def _targets(ctx: _Ctx, key: str, value: Any) -> tuple[TargetConfig, ...]:
    if not isinstance(value, list):
        raise ctx.error(key, f"`{key}` must be a list of targets", why=f"got {_type(value)}",
                        help='for example: targets = ["mypkg.models:Net"]')
    out: list[TargetConfig] = []
    for i, item in enumerate(value):
        here = f"{key}[{i}]"
        if not isinstance(item, dict):
            text = _target_string(ctx, key, item)
            out.append(TargetConfig(text, text, from_file=True))
            continue
        entry = _table(ctx, key, item, '{target = "pkg.mod:Net", input-shape = [[2, 3, 32, 32]]}')
        values = _check_keys(ctx, here, entry, _TARGET_KEYS)
        if "target" not in values:
            raise ctx.error(key, f"`{here}` has no `target`", help='add target = "pkg.module:Model"')
        out.append(TargetConfig(
            values["target"], values.get("name", values["target"]), values.get("input-shape"),
            values.get("input-dtype", ()), values.get("select"), values.get("ignore", ()), values.get("capture"),
            from_file=True,
        ))
    names = [t.name for t in out]
    for n in names:
        if names.count(n) > 1:
            raise ctx.error(key, f"target `{n}` appears twice in `{key}`",
                            help='give each entry its own name: {target = "...", name = "Net-small"}')
    return tuple(out)


def _per_file_ignores(ctx: _Ctx, key: str, value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    table = _table(ctx, key, value, '[tool.initlint.per-file-ignores] "legacy/*.py" = ["IL201"]')
    return tuple((glob, _strings(ctx, f"{key}.{glob}", codes, pattern=_SELECTOR, kind="rule selectors"))
                 for glob, codes in table.items())


def _severities(ctx: _Ctx, key: str, value: Any) -> Mapping[str, Severity]:
    table = _table(ctx, key, value, '[tool.initlint.severity] IL201 = "error"')
    out = {}
    for rule_key, level in table.items():
        if not _RULE.match(rule_key):
            raise ctx.error(key, f"`{key}` has an invalid rule `{rule_key}`",
                            why="expected a rule code (IL201) or a rule name (unscaled-residual)",
                            help="run `initlint rules` to list the rules")
        out[rule_key] = _severity(ctx, f"{key}.{rule_key}", level)
    return MappingProxyType(out)


def _path(ctx: _Ctx, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ctx.error(key, f"`{key}` must be a path", why=f"got {value!r}",
                        help='for example: baseline = "initlint-baseline.json"')
    return value


# Each key of [tool.initlint]: its checker and the Config field it fills.
_KEYS: dict[str, tuple[str, Callable[[_Ctx, str, Any], Any]]] = {
    "targets": ("targets", _targets),
    "select": ("select", lambda ctx, k, v: _strings(ctx, k, v, pattern=_SELECTOR, kind="rule selectors")),
    "ignore": ("ignore", lambda ctx, k, v: _strings(ctx, k, v, pattern=_SELECTOR, kind="rule selectors")),
    "per-file-ignores": ("per_file_ignores", _per_file_ignores),
    "fail-level": ("fail_level", _severity),
    "probe": ("probe", _bool),
    "device": ("device", _device),
    "severity": ("severity", _severities),
    "baseline": ("baseline", _path),
    "capture": ("capture", lambda ctx, k, v: _choice(ctx, k, v, CAPTURES)),
}
KEYS = tuple(_KEYS)


def _check_keys(ctx: _Ctx, table_name: str, table: Mapping[str, Any], known: Mapping[str, Callable]) -> dict:
    values = {}
    for key, value in table.items():
        if key not in known:
            where = TABLE if table_name == "" else f"`{table_name}`"
            raise ctx.error(key, f"unknown key `{key}` in {where}",
                            why=_suggest(key, list(known)) or "initlint has no such setting",
                            help=f"known keys: {', '.join(known)}")
        values[key] = known[key](ctx, key, value)
    return values


def parse(table: Mapping[str, Any], *, source: str, path: Path | None = None, text: str = "") -> Config:
    """Validate a ``[tool.initlint]`` table into a :class:`Config`."""
    ctx = _Ctx(source, text)
    values = _check_keys(ctx, "", table, {k: check for k, (_, check) in _KEYS.items()})
    root = path.parent.resolve() if path is not None else Path.cwd()
    fields = {_KEYS[k][0]: v for k, v in values.items()}
    if "baseline" in fields:
        fields["baseline"] = root / fields["baseline"]
    return Config(path=path, root=root, **fields)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close and word.replace("_", "-") in choices:
        close = [word.replace("_", "-")]
    return f"did you mean `{close[0]}`?" if close else ""


def _type(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def relative_to_root(path: str, root: Path) -> str:
    """A finding's file as seen from the project root, with forward slashes (globs and baselines use this)."""
    absolute = os.path.abspath(path)
    try:
        rel = os.path.relpath(absolute, root)
    except ValueError:  # another drive on Windows
        return Path(absolute).as_posix()
    return Path(absolute if rel.startswith("..") else rel).as_posix()
