"""The ``lightning-lplr`` command line (also ``python -m lightning_lplr``).

Usage::

    lightning-lplr report PATH [PATH ...] [--prefix lplr/] [--json | --markdown]
                          [--plot FILE.png] [--loss-star {logged,running_min}]
                          [--margin M] [--rate-window W] [--allow-truncated] [--debug]

``PATH`` is a run directory, a parent of runs (e.g. ``lightning_logs/``), a single
TensorBoard event file or a Lightning ``metrics.csv``. The report goes to stdout
(text by default); warnings, errors and "wrote FILE" go to stderr, one line each,
and the exit status says what went wrong (:mod:`lightning_lplr.report.errors`).

The command imports neither torch nor Lightning (reading a run takes well under the 3-4 s
their import costs); matplotlib is imported only for ``--plot``.

Example:
    >>> args = build_parser().parse_args(["report", "lightning_logs/", "--markdown"])
    >>> args.paths, args.markdown, args.prefix, args.loss_star
    (['lightning_logs/'], True, 'lplr/', 'logged')
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from lightning_lplr.report._version import tool_version
from lightning_lplr.report.errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, ReportError
from lightning_lplr.reporting.keys import DEFAULT_PREFIX

# The defaults of lightning_lplr.report.posthoc, repeated so that --help imports neither it nor numpy;
# tests/test_report.py checks that they agree.
_DEFAULT_MARGIN = 1e-3
_DEFAULT_RATE_WINDOW = 50

__all__ = ["build_parser", "main"]

_PROG = "lightning-lplr"

_EPILOG = """\
exit status:
  0 report written; 1 internal error (rerun with --debug); 2 usage error;
  3 path not found; 4 no runs or no LPLR keys; 5 corrupt/truncated event file or
  malformed CSV; 6 matplotlib missing for --plot; 7 plot file cannot be written
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-lplr`` (subcommand ``report``)."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Summarise logged lightning_lplr metrics: where training converged linearly, the PL\n"
        "lower envelope, the NTK spectrum and drift, and the region certificate.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {tool_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    report = sub.add_parser(
        "report",
        help="summarise one or more runs",
        description="Summarise one or more runs logged by the lightning_lplr callbacks.\n\n"
        "PATH is a run directory (TensorBoard event files and/or a Lightning metrics.csv),\n"
        "a parent of runs (e.g. lightning_logs/; each run is named by its relative path),\n"
        "an event file or a CSV file. Several PATHs are reported together (and overlaid\n"
        "by --plot, one colour per run).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("paths", nargs="+", metavar="PATH", help="run directory, parent of runs, or file")
    report.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"prefix of the logged names (default: {DEFAULT_PREFIX!r})"
    )
    output = report.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="print a JSON document (schema: lightning_lplr.report.schema)"
    )
    output.add_argument("--markdown", action="store_true", help="print a markdown report for papers and PRs")
    report.add_argument(
        "--plot", metavar="FILE.png", help="also draw a figure of all runs (needs matplotlib)"
    )
    report.add_argument(
        "--loss-star",
        choices=("logged", "running_min"),
        default="logged",
        help="L* of the gaps: as logged (default), or the post-hoc running minimum over the whole run, "
        "L* = min L - M*|min L|, with the gaps, step PL ratios, envelope and rate fits recomputed",
    )
    report.add_argument(
        "--margin",
        type=_non_negative,
        default=_DEFAULT_MARGIN,
        metavar="M",
        help=f"margin M of --loss-star running_min (default: {_DEFAULT_MARGIN:g})",
    )
    report.add_argument(
        "--rate-window",
        type=_window,
        default=_DEFAULT_RATE_WINDOW,
        metavar="W",
        help="gaps per recomputed rate fit with --loss-star running_min (default: "
        f"{_DEFAULT_RATE_WINDOW}, the monitors' rate_window)",
    )
    report.add_argument(
        "--allow-truncated",
        action="store_true",
        help="read event files whose last record is incomplete (a run still being written)",
    )
    report.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    return parser


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0 (e.g. 0.001)")
    return value


def _window(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int >= 2 (e.g. 50)")
    return value


def _safe_streams() -> None:
    """Let stdout/stderr replace characters their encoding lacks (ρ, λ in a C locale)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def _error(stderr: TextIO, message: str) -> None:
    print(f"{_PROG}: error: {message}", file=stderr)


def _report(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from lightning_lplr.report.reader import load_runs
    from lightning_lplr.report.render import render_markdown, render_text
    from lightning_lplr.report.schema import validate_report
    from lightning_lplr.report.summary import document_of, resolve_loss_star

    def warn(message: str) -> None:
        print(f"{_PROG}: warning: {message}", file=stderr)

    if args.plot:
        # Fail before reading anything when the plot cannot be drawn at all.
        from lightning_lplr.report.plot import import_matplotlib

        import_matplotlib()
    runs = load_runs(args.paths, args.prefix, allow_truncated=args.allow_truncated, warn=warn)
    resolved = [
        resolve_loss_star(run, args.loss_star, margin=args.margin, rate_window=args.rate_window)
        for run in runs
    ]
    document = document_of(resolved, args.prefix)
    if args.plot:
        from lightning_lplr.report.plot import plot_report

        plot_report([run for run, _ in resolved], document["runs"], args.plot)
    if args.json:
        validate_report(document)
        stdout.write(json.dumps(document, indent=2, allow_nan=False) + "\n")
    elif args.markdown:
        stdout.write(render_markdown(document))
    else:
        stdout.write(render_text(document))
    if args.plot:
        print(f"{_PROG}: wrote {args.plot}", file=stderr)
    stdout.flush()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-lplr`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Anticipated failures print one line ``lightning-lplr: error: ...`` on stderr and
    return their status (:mod:`lightning_lplr.report.errors`); an unexpected exception
    returns 1 with a one-line message unless ``--debug`` is given.
    """
    _safe_streams()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help/--version (0) or a usage error (2)
        return int(exit_.code or 0) if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_usage(sys.stderr)
        _error(sys.stderr, "missing COMMAND; try 'lightning-lplr report PATH' (see --help)")
        return EXIT_USAGE
    try:
        return _report(args, sys.stdout, sys.stderr)
    except ReportError as error:
        _error(sys.stderr, str(error))
        return error.exit_code
    except BrokenPipeError:
        # The reader of stdout went away (``| head``): stop quietly.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if args.debug:
            raise
        message = f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)"
        _error(sys.stderr, message)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
