"""The ``segbeam`` command: ``run`` (the segmentation job), ``shard`` (pack TFRecord shards),
``train`` (train an architecture), ``report`` (evaluation reports), ``models`` (list the
architectures).

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
from segbeam.pipeline.exit_codes import ExitCode

USAGE = """segbeam COMMAND [flags]

commands:
  run      segment images (files or TFRecord shards), refine with a dense CRF, score against
           masks, and write masks, metrics and a summary; without --input, a demo on
           generated data
  shard    pack images (+ masks) into TFRecord shards
  train    train an architecture on images + masks; saves a .keras model for `run`
  report   build an evaluation report (HTML, Markdown, JSON) over a run's output, optionally
           compared with an earlier run
  models   list the registered architectures with parameter counts and preprocessing

`segbeam COMMAND --help` describes each command's flags."""


def _error(command: str, error: Exception) -> int:
    print(f"segbeam {command}: error: {error}", file=sys.stderr)
    return ExitCode.USAGE


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
        from segbeam.pipeline.run import execute, format_report

        outcome = execute(options, argv)
    except ValueError as error:
        return _error("run", error)
    print(format_report(outcome))
    if outcome.report_folder:
        print(f"segbeam run: report written to {outcome.report_folder}/report.html")
    if outcome.exit_code == ExitCode.DEAD_LETTERS:
        print("segbeam run: dead letters present and --fail_on_errors set", file=sys.stderr)
    elif outcome.exit_code == ExitCode.ACCOUNTING:
        print("segbeam run: inputs != outputs + dead letters; please report this",
              file=sys.stderr)
    return outcome.exit_code


def models_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="segbeam models", allow_abbrev=False,
        description="List the registered architectures with their parameter counts (built "
                    "for --num_classes) and the preprocessing built into them.")
    parser.add_argument("--num_classes", type=int, default=21,
                        help="class count to build each model for (default: 21, PASCAL VOC)")
    parser.add_argument("--no_counts", action="store_true",
                        help="skip building the models (faster; no parameter counts)")
    args = parser.parse_args(argv)
    from segbeam import models

    print(f"{'name':15s} {'parameters':>12s}  preprocessing / description")
    for spec in models.list_models():
        count = "-" if args.no_counts else \
            f"{models.create_model(spec.name, num_classes=args.num_classes).count_params():,}"
        print(f"{spec.name:15s} {count:>12s}  {spec.preprocessing}\n{'':29s}{spec.description}")
    return 0


def shard_command(argv: Sequence[str]) -> int:
    from segbeam.pipeline.shard import shard

    try:
        shard(argv)
    except ValueError as error:
        return _error("shard", error)
    return ExitCode.OK


def train_command(argv: Sequence[str]) -> int:
    from segbeam.pipeline.train import train_command as train

    return train(argv)


def report_command(argv: Sequence[str]) -> int:
    from segbeam.pipeline.report import report_command as report

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
    return int(command(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
