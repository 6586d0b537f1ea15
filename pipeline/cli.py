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
import os
import sys
from typing import Optional, Sequence

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


def _run_parser() -> argparse.ArgumentParser:
    from segbeam.pipeline.options import SegmentationOptions

    parser = argparse.ArgumentParser(
        prog="segbeam run",
        description="Segment images in batch with a Keras model, refine with a dense CRF, "
                    "and score against ground-truth masks where they exist.",
        epilog="Beam's own options pass through: --runner (DirectRunner by default; "
               "DataflowRunner, DaskRunner with --dask_client_address, ...), "
               "--direct_num_workers N, --direct_running_mode multi_processing, "
               "--temp_location, --dry_run=True (build the graph, run nothing), ... Without "
               "--input, `segbeam run` generates demo data, trains a small model and runs on "
               "it.")
    SegmentationOptions._add_argparse_args(parser)
    return parser


def run_command(argv: Sequence[str]) -> int:
    parser = _run_parser()
    known, _ = parser.parse_known_args(argv)  # --help, and flag errors, before any work
    from segbeam.pipeline.run import format_report, run

    argv = list(argv)
    if known.input is None:
        from segbeam.pipeline.demo import demo_argv

        print(f"segbeam run: no --input given; running the demo under {known.output}/")
        argv = demo_argv(known.output, argv)
    try:
        outcome = run(argv)
    except ValueError as error:
        print(f"segbeam run: error: {error}", file=sys.stderr)
        return 2
    print(format_report(outcome))
    if known.report and outcome.summary is not None:
        from segbeam.pipeline.report import write_report

        _, folder = write_report(outcome.settings.run_dir)
        print(f"segbeam run: report written to {folder}/report.html")
    if outcome.exit_code == 1:
        print("segbeam run: dead letters present and --fail_on_errors set", file=sys.stderr)
    elif outcome.exit_code == 3:
        print("segbeam run: inputs != outputs + dead letters; please report this",
              file=sys.stderr)
    return outcome.exit_code


def models_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="segbeam models",
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

    shard(argv)
    return 0


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
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"segbeam: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # TensorFlow's start-up chatter (CPU features, oneDNN) is not for users; set it to 0 to see.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
