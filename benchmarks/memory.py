"""Memory benchmark: the peak resident memory of a whole run on the local (in-memory) runner
for N and for 10N generated images, with the default graph and with a Reshuffle between
inference and the CRF forced in (``--stage_split reshuffle``, the distributed runners' graph).

    python -m benchmarks.memory --images 30

Each run is its own process and reports its own peak RSS. The images are 360x480 scenes and
the model predicts 11 classes, so each image carries about 4 MB (pixels and float16 class
probabilities) through inference and the CRF: a run that held every image at once would show it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import print_table, report_to_parent, run_child, write_record

SPLITS = ("fused", "reshuffle")


def _write_scenes(folder: str, count: int) -> str:
    from PIL import Image

    from segbeam.pipeline.demo import synthetic_scene

    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(synthetic_scene(rng, 360, 480)[0]).save(f"{folder}/{index:05d}.png")
    return f"{folder}/*.png"


def child(args) -> None:
    from segbeam.pipeline.run import run

    with tempfile.TemporaryDirectory(prefix="segbeam-memory-") as work:
        images = _write_scenes(f"{work}/images", args.count)
        start = time.perf_counter()
        outcome = run(["--input", images, "--output", f"{work}/out", "--model", args.model,
                       "--num_classes", "11", "--input_size", "360x480", "--batch_size", "8",
                       "--stage_split", args.split])
        seconds = time.perf_counter() - start
    assert outcome.summary["counts"]["outputs"] == args.count
    report_to_parent(split=args.split, images=args.count, seconds=seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=30, help="N (the runs use N and 10N)")
    parser.add_argument("--model", default="tiny_fcn",
                        help="a registry name (seeded random weights) or a .keras file")
    parser.add_argument("--output", help="JSON record path")
    parser.add_argument("--split", choices=SPLITS, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.split:
        child(args)
        return 0
    from benchmarks.inference import model_file

    model = model_file(args.model, 11)
    rows = []
    for split in SPLITS:
        runs = []
        for count in (args.images, 10 * args.images):
            print(f"running {split} on {count} images ...", flush=True)
            runs.append(run_child("benchmarks.memory", ["--model", model, "--split", split,
                                                        "--count", str(count)]))
        small, large = runs
        rows.append({"graph": f"{split}{' (default)' if split == 'fused' else ''}",
                     "peak_n_mib": small["peak_rss_mib"], "peak_10n_mib": large["peak_rss_mib"],
                     "growth": large["peak_rss_mib"] / small["peak_rss_mib"] - 1,
                     "seconds_10n": large["seconds"]})
    print_table(rows, [("graph", "graph", ""), ("peak_n_mib", f"peak MiB ({args.images})", ".0f"),
                       ("peak_10n_mib", f"peak MiB ({10 * args.images})", ".0f"),
                       ("growth", "10N vs N", "+.1%"), ("seconds_10n", "s (10N)", ".1f")],
                "Peak memory of a whole run, local runner (in memory)")
    summary = {"images": args.images, "default_growth": rows[0]["growth"],
               "reshuffle_growth": rows[1]["growth"]}
    print(f"\ndefault graph: 10N images peak at {rows[0]['growth']:+.1%} of N")
    write_record("memory", rows, summary, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
