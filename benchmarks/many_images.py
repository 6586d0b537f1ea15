"""A local run over many small generated images: progress lines on stderr as it goes, and
inputs = outputs + dead letters at the end (issue 15's check at scale).

    python -m benchmarks.many_images --count 10000

Generates COUNT random 32x32 PNGs plus one corrupt file in a temporary folder, runs
``segbeam run`` on them with an untrained ``tiny_fcn`` (no CRF), echoes its stderr (the
progress lines), and prints the counts and the number of progress lines seen.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from benchmarks.common import write_record


def generate(folder: str, count: int, side: int) -> None:
    rng = np.random.default_rng(0)
    os.makedirs(folder)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
            os.path.join(folder, f"i{index:06d}.png"))
    with open(os.path.join(folder, "zz_corrupt.png"), "wb") as handle:
        handle.write(b"\x89PNG not really")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--output", default=None,
                        help="where to write the JSON record (default: "
                             "benchmarks/results/many_images.json)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="segbeam-many-") as work:
        images = os.path.join(work, "images")
        started = time.perf_counter()
        generate(images, args.count, args.side)
        print(f"generated {args.count} images + 1 corrupt file in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        command = [sys.executable, "-m", "segbeam.pipeline.cli", "run",
                   "--input", f"{images}/*.png", "--model", "tiny_fcn", "--num_classes", "3",
                   "--input_size", str(args.side), "--no-crf", "--batch_size", "64",
                   "--output", os.path.join(work, "out")]
        started = time.perf_counter()
        result = subprocess.run(command, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - started
        progress = [line for line in result.stderr.splitlines()
                    if line.startswith("segbeam: ") and " images" in line]
        print("\n".join(progress))
        with open(os.path.join(work, "out", "summary.json")) as handle:
            counts = json.load(handle)["counts"]
    write_record("many_images", progress, {"exit_code": result.returncode, "counts": counts,
                                           "wall_seconds": round(wall, 1),
                                           "images": args.count, "side": args.side},
                 args.output)
    print(f"exit {result.returncode}; {counts['inputs']} inputs = {counts['outputs']} outputs "
          f"+ {counts['dead_letters']} dead letters: "
          f"{'accounted for' if counts['accounted_for'] else 'NOT ACCOUNTED FOR'}; "
          f"{len(progress)} progress lines; {wall:.1f} s")
    return 0 if result.returncode == 0 and counts["accounted_for"] and progress else 1


if __name__ == "__main__":
    sys.exit(main())
