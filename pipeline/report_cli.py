"""``segbeam report``: its flags and the command, over ``segbeam.pipeline.report``'s figures
(one run's, or with ``--standing`` those of nightly partitions as they stand)."""

from __future__ import annotations

from segbeam.pipeline.exit_codes import ExitCode, usage_error
from segbeam.pipeline.flags import CommandParser, reject_repeated_flags
from segbeam.pipeline.report import write_report


def build_parser():
    parser = CommandParser(
        prog="segbeam report", allow_abbrev=False,
        description="Build an evaluation report (one self-contained HTML file, plus Markdown "
                    "and JSON) over the --output folder of a finished `segbeam run`.")
    parser.add_argument("run", help="the run's output folder (local or gs://)")
    parser.add_argument("--standing", action="store_true",
                        help="RUN is the --output of nightly `segbeam run --run_date` runs: "
                             "report on the dataset as it stands, each input's latest row "
                             "from every finished night, under the latest night's "
                             "configuration (default output: RUN/report)")
    parser.add_argument("--output", default=None,
                        help="where to write report.html, report.md and report.json "
                             "(default: RUN/report)")
    parser.add_argument("--compare", default=None, metavar="PREVIOUS_RUN",
                        help="an earlier run's output folder: show deltas per class and "
                             "overall, and flag regressions")
    parser.add_argument("--regression_threshold", type=float, default=1.0,
                        help="a drop of more than this many points (of 100) in an aggregate "
                             "metric or a class IoU is a regression (default: 1.0)")
    parser.add_argument("--fail_on_regression", action="store_true",
                        help=f"exit {int(ExitCode.REGRESSION)} when --compare finds a regression")
    parser.add_argument("--gallery_size", type=int, default=6,
                        help="how many worst and best images the gallery shows (default: 6)")
    return parser


def report_command(argv) -> int:
    import sys

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        reject_repeated_flags(argv, parser)
    except ValueError as error:
        return usage_error("report", error)
    wrong = [message for message, fits in (
        ("--fail_on_regression needs --compare PREVIOUS_RUN",
         not args.fail_on_regression or args.compare),
        (f"--regression_threshold must be a number of points, 0 or more; received "
         f"{args.regression_threshold}", 0 <= args.regression_threshold < float("inf")),
        (f"--gallery_size must be 0 or more; received {args.gallery_size}",
         args.gallery_size >= 0),
        ("--regression_threshold needs --compare PREVIOUS_RUN",
         args.regression_threshold == parser.get_default("regression_threshold")
         or args.compare)) if not fits]
    if wrong:
        print(f"segbeam report: error: {wrong[0]}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        report, folder = write_report(args.run, args.output, args.compare,
                                      args.regression_threshold, args.gallery_size,
                                      args.standing)
    except ValueError as error:
        return usage_error("report", error)
    print(f"segbeam report: wrote {folder}/report.html, report.md and report.json")
    for warning in report["warnings"]:  # in the report, and said here as `segbeam run` says them
        print(f"segbeam report: warning: {warning}", file=sys.stderr)
    comparison = report.get("comparison") or {}
    if comparison and not comparison["comparable"]:
        print(f"  not compared: {comparison['not_comparable']}")
        if args.fail_on_regression:
            print(f"segbeam report: error: --fail_on_regression cannot check for regressions: "
                  f"{comparison['not_comparable']}", file=sys.stderr)
            return ExitCode.USAGE
    for caveat in comparison.get("caveats", []):
        print(f"  not like for like: {caveat}")
    regressions = comparison.get("regressions", [])
    for regression in regressions:
        print(f"  regression: {regression['what']} {regression['delta'] * 100:+.2f} points")
    if regressions and args.fail_on_regression:
        return ExitCode.REGRESSION
    return ExitCode.OK
