"""The ``segbeam`` command: ``run`` (the segmentation job), ``shard`` (pack TFRecord shards),
``train`` (train an architecture), ``report`` (evaluation reports), ``models`` (list the
architectures, or inspect a saved model).

Example::

    segbeam run --input 'data/val/*.png' --masks data/valannot --model model.keras \\
        --num_classes 11 --class_names camvid --ignore_index 11 --output out/val
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from segbeam import compat
from segbeam.pipeline.exit_codes import ExitCode, JobFailed, usage_error
from segbeam.storage import access_refusal

USAGE = """segbeam COMMAND [flags]

commands:
  run      segment images (files or TFRecord shards), refine with a dense CRF, score against
           masks, and write masks, metrics and a summary; without --input, a demo on
           generated data
  shard    pack images (+ masks) into TFRecord shards
  train    train an architecture on images + masks; saves a .keras model for `run`
  report   build an evaluation report (HTML, Markdown, JSON) over a run's output, optionally
           compared with an earlier run
  models   list the registered architectures with parameter counts and preprocessing;
           --inspect PATH shows what segbeam sees in a saved model of any format

`segbeam COMMAND --help` describes each command's flags."""


def _error(command: str, error: Exception) -> int:
    return usage_error(command, error)


def run_command(argv: Sequence[str]) -> int:
    from segbeam.pipeline.options import SegmentationOptions, parse_run_argv

    argv = list(argv)
    try:
        options = parse_run_argv(argv)  # --help, and flag errors, before any work
        flags = options.view_as(SegmentationOptions)
        compat.import_keras_quietly()
        if flags.input is None:
            from segbeam.pipeline.demo import demo_argv

            print(f"segbeam run: no --input given; running the demo under {flags.output}/")
            argv = demo_argv(flags.output, argv)
            options = parse_run_argv(argv)
        from segbeam.pipeline.run import execute
        from segbeam.pipeline.terminal import format_report, outcome_warnings

        outcome = execute(options, argv)
    except ValueError as error:
        return _error("run", error)
    print(format_report(outcome))
    if outcome.summary:
        for warning in outcome_warnings(outcome):
            print(f"segbeam run: warning: {warning}", file=sys.stderr)
    if outcome.report_folder:
        print(f"segbeam run: report written to {outcome.report_folder}/report.html")
    if outcome.exit_code == ExitCode.DEAD_LETTERS and outcome.nothing_segmented:
        print(f"segbeam run: error: nothing was segmented: every input became a dead letter "
              f"({_by_stage(outcome.summary['counts'])}); the reasons are in "
              f"{outcome.settings.layout.run_dir}/dead_letters/", file=sys.stderr)
    elif outcome.exit_code == ExitCode.DEAD_LETTERS:
        print("segbeam run: dead letters present and --fail_on_errors set", file=sys.stderr)
    elif outcome.exit_code == ExitCode.ACCOUNTING:
        print("segbeam run: inputs != outputs + dead letters; please report this",
              file=sys.stderr)
    return outcome.exit_code


def _by_stage(counts: dict) -> str:
    return ", ".join(f"{count} at {stage}" for stage, count
                     in counts["dead_letters_by_stage"].items())


def models_command(argv: Sequence[str]) -> int:
    from segbeam.models.formats import DATA_FORMATS
    from segbeam.pipeline.flags import CommandParser, reject_repeated_flags

    parser = CommandParser(
        prog="segbeam models", allow_abbrev=False,
        description="List the registered architectures with their parameter counts (built "
                    "for --num_classes) and the preprocessing built into them; or, with "
                    "--inspect, describe a saved model of any format as `segbeam run` sees it.")
    parser.add_argument("--num_classes", type=int, default=21,
                        help="class count to build each model for (default: 21, PASCAL VOC)")
    parser.add_argument("--no_counts", action="store_true",
                        help="skip building the models (faster; no parameter counts)")
    parser.add_argument("--inspect", metavar="PATH", default=None,
                        help="a model (.keras, .h5, SavedModel folder, .onnx): print its "
                             "format, shapes, layout, output kind, classes and a "
                             "preprocessing hint, from its declarations and one test run")
    parser.add_argument("--signature", default="serving_default",
                        help="with --inspect: the SavedModel signature")
    parser.add_argument("--output_key", default=None, help="with --inspect: the output to use")
    parser.add_argument("--data_format", default="auto", choices=DATA_FORMATS,
                        help="with --inspect: the model's layout")
    parser.add_argument("--unsafe_model_loading", action="store_true",
                        help="with --inspect: allow a legacy .h5 holding Python code")
    parser.add_argument("--custom_objects", default=None, metavar="FILE.py",
                        help="with --inspect: the Python file that defines the model's custom "
                             "layers")
    args = parser.parse_args(argv)
    try:
        reject_repeated_flags(argv, parser)
    except ValueError as error:
        return _error("models", error)
    listing, inspecting = ("num_classes", "no_counts"), (
        "signature", "output_key", "data_format", "unsafe_model_loading", "custom_objects")
    void = [name for name in (listing if args.inspect else inspecting)
            if getattr(args, name) != parser.get_default(name)]
    if void:
        return _error("models", ValueError(
            f"--{void[0]} applies " + ("to the listing, not to --inspect" if args.inspect
                                       else "with --inspect PATH only") + f": drop --{void[0]}"))
    if args.inspect:
        return _inspect(args)
    from segbeam import models

    if not args.no_counts:  # counting builds every model
        try:
            compat.import_keras_quietly()
        except ValueError as error:
            return _error("models", error)
    print(f"{'name':15s} {'parameters':>12s}  preprocessing / description")
    for spec in models.list_models():
        count = "-" if args.no_counts else \
            f"{models.create_model(spec.name, num_classes=args.num_classes).count_params():,}"
        print(f"{spec.name:15s} {count:>12s}  {spec.preprocessing}\n{'':29s}{spec.description}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from segbeam.models.inspect import inspect_model
    from segbeam.models.source import ModelSource

    try:
        source = ModelSource(args.inspect, signature=args.signature, output_key=args.output_key,
                             data_format=args.data_format,
                             unsafe_model_loading=args.unsafe_model_loading,
                             custom_objects=args.custom_objects)
        if source.format == "registry":
            raise ValueError(f"{args.inspect!r} is a registry name; --inspect reads saved "
                             f"models (`segbeam models` lists the registry)")
        compat.import_keras_quietly()
        lines = inspect_model(source)
    except ValueError as error:
        return _error("models", error)
    width = max(len(label) for label, _ in lines)
    print(f"{args.inspect}")
    for label, value in lines:
        print(f"  {label:{width}s}  {value}")
    return ExitCode.OK


def shard_command(argv: Sequence[str]) -> int:
    from segbeam.pipeline.shard import shard

    try:
        outcome = shard(argv)
    except ValueError as error:
        return _error("shard", error)
    print(f"segbeam shard: {outcome.account}")
    if outcome.nothing_packed:
        print(f"segbeam shard: error: nothing was packed: every image became a dead letter; "
              f"the reasons are in {outcome.dead_letters}/", file=sys.stderr)
        return ExitCode.DEAD_LETTERS
    return ExitCode.OK


def train_command(argv: Sequence[str]) -> int:
    from segbeam.pipeline.train import train_command as train

    return train(argv)


def report_command(argv: Sequence[str]) -> int:
    from segbeam.pipeline.report_cli import report_command as report

    return report(argv)


COMMANDS = {"run": run_command, "shard": shard_command, "train": train_command,
            "report": report_command, "models": models_command}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return ExitCode.OK if argv else ExitCode.USAGE
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"segbeam: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return ExitCode.USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        refused = None if argv[0] == "run" else _prepare_cloud_storage(argv[0], argv[1:])
        return int(command(argv[1:])) if refused is None else refused
    except KeyboardInterrupt:
        print(f"segbeam {argv[0]}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, exit 5
        if not isinstance(error, JobFailed) and access_refusal(error):
            return usage_error(argv[0], error)
        return _internal_error(argv[0], error)


def _prepare_cloud_storage(command: str, argv: Sequence[str]) -> Optional[int]:
    """For the commands that take no Beam options (``run`` checks its own): Cloud Storage that
    its ``gs://`` paths need but cannot be reached is a one-line error (returns the exit code);
    reading anonymously for want of credentials is a one-line warning."""
    from segbeam.storage import gcs_paths

    if not gcs_paths(argv) or any(word in ("-h", "--help") for word in argv):
        return None
    from segbeam.pipeline.flags import prepare_cloud_storage

    try:
        warning = prepare_cloud_storage(argv, command=command)
    except ValueError as error:
        return _error(command, error)
    if warning:
        print(f"segbeam {command}: warning: {warning}", file=sys.stderr)
    return None


def _internal_error(command: str, error: Exception) -> int:
    """An unexpected failure: one line on stderr, the traceback saved to a file it names."""
    import tempfile
    import traceback

    from segbeam.records import one_line_reason

    with tempfile.NamedTemporaryFile("w", prefix="segbeam-error-", suffix=".txt",
                                     delete=False) as handle:
        traceback.print_exception(error, file=handle)
    if isinstance(error, JobFailed):
        print(f"segbeam {command}: the job failed while running: {error} (the full traceback "
              f"is in {handle.name})", file=sys.stderr)
    else:
        print(f"segbeam {command}: internal error: {one_line_reason(error)} (the full "
              f"traceback is in {handle.name}; please report it)", file=sys.stderr)
    return ExitCode.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
