"""The ``initlint`` command.

    initlint TARGET [TARGET ...] [options]     lint models
    initlint rules [--format json]             list the rules
    initlint rule CODE|NAME                    print a rule's documentation

Exit codes: 0 nothing at or above ``--fail-level``; 1 findings; 2 usage, configuration, target or capture
errors (and internal errors, which say they are bugs).
"""

from __future__ import annotations

import argparse
import dataclasses
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
    p.add_argument("--fail-level", choices=["info", "warning", "error"],
                   help="lowest severity that makes the exit code 1 (default: warning, or fail-level in config)")
    p.add_argument("--statistics", action="store_true", help="count findings per rule instead of listing them")
    p.add_argument("--config", metavar="FILE",
                   help="read settings from FILE instead of the nearest pyproject.toml with [tool.initlint]")
    p.add_argument("--isolated", action="store_true", help="ignore every configuration file")
    p.add_argument("--baseline", metavar="FILE",
                   help="report only findings not recorded in FILE (a JSON baseline)")
    p.add_argument("--update-baseline", action="store_true",
                   help="record the current findings in the baseline file and exit 0")
    p.add_argument("--exit-zero", action="store_true", help="exit 0 even when there are findings")
    p.add_argument("--input-shape", action="append", type=_shape, metavar="SHAPE",
                   help="shape of one example input, e.g. 2,3,32,32; repeat for several inputs")
    p.add_argument("--input-dtype", action="append", metavar="DTYPE",
                   help="dtype of the example inputs (float32, int64...); repeat to match --input-shape")
    p.add_argument("--capture", choices=["fx", "export", "hooks"], help="use this capture instead of the ladder")
    p.add_argument("--signals", action="store_true",
                   help="show each op's predicted and measured forward and backward second moments "
                   "(runs one forward and backward pass; the model is left unchanged)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="where --signals, --probe and --curvature run (default: auto, the GPU when there is one, "
                   "or device in config)")
    p.add_argument("--probe", action="store_true", default=None,
                   help="confirm each finding by a numerical experiment and verify its fix on a copy of the model "
                   "(seeded; the model is left unchanged)")
    p.add_argument("--curvature", action="store_true",
                   help="also estimate the largest Hessian eigenvalue at init, the learning-rate bound 2/lambda "
                   "and a warmup (power iteration on Hessian-vector products)")
    p.add_argument("--plot", metavar="PATH",
                   help="write a signal-propagation plot (PNG or SVG, by extension) of predicted and measured "
                   "second moments; needs matplotlib (pip install 'initlint[plot]')")
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
    # https://no-color.org: a NO_COLOR that is present and not empty turns color off
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import warnings

    # torch warns on import when numpy is absent (it does not need it, nor does initlint): not the user's concern
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
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


def _config(args):
    """The project's configuration with this command line's options over it."""
    from pathlib import Path

    from . import config as config_mod
    from .findings import Severity

    cfg = config_mod.load(Path(args.config) if args.config else None, isolated=args.isolated)
    cfg = cfg.override(select=tuple(_split(args.select)) if args.select is not None else None,
                       ignore=tuple(_split(args.ignore)) if args.ignore is not None else None,
                       fail_level=Severity.parse(args.fail_level) if args.fail_level else None,
                       capture=args.capture, baseline=Path(args.baseline).resolve() if args.baseline else None,
                       probe=args.probe, device=args.device, signals=True if args.signals or args.plot else None)
    if args.input_shape or args.input_dtype:  # the command line's example inputs, for every target it names
        shapes = tuple(tuple(s) for s in args.input_shape) if args.input_shape else None
        targets = [cfg.target(t) for t in args.targets] or list(cfg.targets)
        cfg = cfg.override(targets=tuple(
            dataclasses.replace(t, input_shapes=shapes or t.input_shapes,
                                input_dtypes=tuple(args.input_dtype or t.input_dtypes)) for t in targets))
    return cfg


def _lint(args) -> int:
    from .project import lint_project
    from .render import RenderOptions, render

    cfg = _config(args)
    if not args.targets and not cfg.targets:
        print("error: no target given: what model should initlint lint?\n"
              "  help: run `initlint pkg.module:Model`, list targets in [tool.initlint] of pyproject.toml, "
              "or run `initlint initlint.examples:ResidualMLP` to try it", file=sys.stderr)
        return EXIT_ERROR
    if args.update_baseline and cfg.baseline is None:
        print("error: --update-baseline needs a baseline file\n"
              "  help: pass --baseline FILE, or set baseline = \"FILE\" in [tool.initlint]", file=sys.stderr)
        return EXIT_ERROR
    if args.plot:
        from .plot import check_available

        check_available()  # before the lint: a missing matplotlib is a usage error
    report = lint_project(cfg, args.targets, use_baseline=not args.update_baseline).report
    if args.update_baseline:
        return _update_baseline(cfg, report)
    fail_level = cfg.fail_level
    stream = sys.stdout
    options = RenderOptions(color=_use_color(args.color, stream) and not args.output, verbose=args.verbose,
                            fail_level=fail_level, show_fixes=not args.no_fix,
                            width=_width(stream) if not args.output else None)
    if args.statistics:
        from .render.statistics import render as statistics

        text = statistics(report, args.format, options)
    else:
        text = render(report, args.format, options)
    if args.signals and args.format == "text":
        from .render.signals import render as signals_table

        text += signals_table(report, options)
    if args.curvature:
        from .curvature import with_curvature

        text = with_curvature(text, report, cfg, args.targets, args.format)
    if args.plot:
        from .plot import plot_report

        plot_report(report, args.plot)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        stream.write(text)
    if report.errors:
        from .render.text import errors

        sys.stderr.write(errors(report, RenderOptions(color=_use_color(args.color, sys.stderr),
                                                      verbose=args.verbose)))
    if report.errors:
        return EXIT_ERROR
    return EXIT_OK if args.exit_zero else report.exit_code(fail_level)


def _width(stream) -> int | None:
    """The terminal's width when writing to one, for formats that wrap."""
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return None
    import shutil

    return shutil.get_terminal_size().columns


def _update_baseline(cfg, report) -> int:
    from .suppress import write_baseline

    if report.errors:
        for t in report.errors:
            print(f"error: {t.target}: {t.error.message}", file=sys.stderr)
        print("error: baseline not written: some targets could not be linted\n"
              "  help: fix the errors above, then run --update-baseline again", file=sys.stderr)
        return EXIT_ERROR
    n = write_baseline(cfg.baseline, report, cfg.root)
    print(f"Recorded {n} finding{'s' if n != 1 else ''} in {os.path.relpath(cfg.baseline)}.", file=sys.stderr)
    return EXIT_OK


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
