"""The ``initlint`` command.

    initlint TARGET [TARGET ...] [options]     lint models
    initlint rules [--format json]             list the rules
    initlint rule CODE|NAME                    print a rule's documentation

Exit codes: 0 nothing at or above ``--fail-level``; 1 findings; 2 usage, configuration, target or capture
errors (and internal errors, which say they are bugs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, as for every other bad input
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}` is not a shape like 2,3,32,32") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"`{text}` is not a shape like 2,3,32,32")
    return dims


def build_parser() -> argparse.ArgumentParser:
    from .render import FORMATS

    p = _Parser(prog="initlint", description="Find weight-initialization and signal-propagation defects in "
                "PyTorch models before the first training step.",
                epilog="Other commands: `initlint rules` lists the rules, `initlint rule CODE` explains one.")
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help="pkg.module:attr or path/to/file.py:attr, optionally with literal keyword arguments: "
                   "'models.py:Net(depth=12)'")
    p.add_argument("--select", action="append", metavar="CODES",
                   help="only these rules: codes, prefixes or names, comma-separated (e.g. IL2,post-ln)")
    p.add_argument("--ignore", action="append", metavar="CODES", help="skip these rules")
    p.add_argument("--format", default="text", choices=sorted(FORMATS), help="output format (default: text)")
    p.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument("--fail-level", default="warning", choices=["info", "warning", "error"],
                   help="lowest severity that makes the exit code 1 (default: warning)")
    p.add_argument("--exit-zero", action="store_true", help="exit 0 even when there are findings")
    p.add_argument("--input-shape", action="append", type=_shape, metavar="SHAPE",
                   help="shape of one example input, e.g. 2,3,32,32; repeat for several inputs")
    p.add_argument("--input-dtype", action="append", metavar="DTYPE",
                   help="dtype of the example inputs (float32, int64...); repeat to match --input-shape")
    p.add_argument("--capture", choices=["fx", "export", "hooks"], help="use this capture instead of the ladder")
    p.add_argument("--no-fix", action="store_true", help="do not show the suggested fixes")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--verbose", "-v", action="store_true", help="tracebacks for errors, capture details")
    p.add_argument("--version", action="version", version=f"initlint {_version()}")
    return p


def _version() -> str:
    from . import __version__

    return __version__


def _split(values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def _use_color(choice: str, stream) -> bool:
    if choice != "auto":
        return choice == "always"
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in ("rule", "rules"):
            return _rules_command(argv)
        return _lint_command(argv)
    except KeyboardInterrupt:
        print("initlint: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        return int(exc.code or 0)


def _lint_command(argv: list[str]) -> int:
    from .errors import InitlintError

    args = build_parser().parse_args(argv)
    if not args.targets:
        print("error: no target given: what model should initlint lint?\n"
              "  help: run `initlint pkg.module:Model`, or `initlint initlint.examples:ResidualMLP` to try it",
              file=sys.stderr)
        return EXIT_ERROR
    try:
        return _lint(args)
    except InitlintError as exc:
        print(f"error: {exc.line}", file=sys.stderr)
        if exc.help:
            print(f"  help: {exc.help}", file=sys.stderr)
        if args.verbose:
            raise
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001
        if args.verbose:
            raise
        print(f"internal error, this is a bug in initlint: {type(exc).__name__}: {exc}\n"
              "  help: please report it with the command you ran (--verbose shows the traceback)", file=sys.stderr)
        return EXIT_ERROR


def _lint(args) -> int:
    from .api import lint
    from .findings import Severity
    from .render import RenderOptions, render

    report = lint(
        args.targets,
        select=_split(args.select),
        ignore=_split(args.ignore) or (),
        input_shapes=args.input_shape,
        input_dtypes=args.input_dtype or (),
        capture=args.capture,
    )
    fail_level = Severity.parse(args.fail_level)
    stream = sys.stdout
    options = RenderOptions(color=_use_color(args.color, stream) and not args.output, verbose=args.verbose,
                            fail_level=fail_level, show_fixes=not args.no_fix)
    text = render(report, args.format, options)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        stream.write(text)
    if report.errors:
        return EXIT_ERROR
    return EXIT_OK if args.exit_zero else report.exit_code(fail_level)


def _rules_command(argv: list[str]) -> int:
    from .errors import InitlintError
    from .registry import discover, find

    p = _Parser(prog=f"initlint {argv[0]}")
    if argv[0] == "rule":
        p.add_argument("key", metavar="CODE", help="a rule code or name, e.g. IL201 or unscaled-residual")
    p.add_argument("--format", choices=["text", "json"], default="text")
    args = p.parse_args(argv[1:])
    try:
        rules = discover()
        chosen = [find(rules, args.key)] if argv[0] == "rule" else list(rules)
    except InitlintError as exc:
        print(f"error: {exc.line}", file=sys.stderr)
        if exc.help:
            print(f"  help: {exc.help}", file=sys.stderr)
        return EXIT_ERROR
    if args.format == "json":
        data = [{"code": r.code, "name": r.name, "severity": r.severity.value, "summary": r.summary,
                 "doc": r.doc} for r in chosen]
        print(json.dumps(data if argv[0] == "rules" else data[0], indent=2))
    elif argv[0] == "rule":
        r = chosen[0]
        print(f"# {r.code} {r.name} ({r.severity.value})\n\n{r.doc}")
    else:
        for r in chosen:
            print(f"{r.code}  {r.name:<32} {r.severity.value:<8} {r.summary}")
        if not chosen:
            print("no rules installed")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
