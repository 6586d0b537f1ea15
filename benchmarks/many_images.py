"""A local run over many small generated images: progress lines on stderr as it goes, and
inputs = outputs + dead letters at the end (issue 15's check at scale).

    python -m benchmarks.many_images --count 10000

Generates COUNT random 32x32 PNGs plus one corrupt file in a temporary folder, runs
``segbeam run`` on them with an untrained ``tiny_fcn`` (no CRF), echoes its stderr (the
progress lines), and prints the counts and the number of progress lines seen.

    python -m benchmarks.many_images --count 10000 --rerun

With --rerun, half the images (every other one) are then deleted and the same run is made
twice more on the rest: into the first run's output folder, where the step that removes an
earlier run's per-image files (``RemoveStaleViews``) finds the deleted inputs' masks and
removes them, and into a fresh folder, where it finds nothing. The wall times side by side
are that step's cost at scale; the counts show it removed exactly the stale masks.
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


def segment(images: str, output: str, side: int) -> tuple[subprocess.CompletedProcess, float]:
    """``segbeam run`` over the folder's PNGs into ``output``: (the process, its wall time)."""
    command = [sys.executable, "-m", "segbeam.pipeline.cli", "run",
               "--input", f"{images}/*.png", "--model", "tiny_fcn", "--num_classes", "3",
               "--input_size", str(side), "--no-crf", "--batch_size", "64", "--output", output]
    started = time.perf_counter()
    result = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    return result, time.perf_counter() - started


def _read_json(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


def rerun_half(images: str, first_output: str, side: int) -> dict:
    """Deletes every other image, then runs on the rest into ``first_output`` and into a fresh
    folder; the wall times, the stale files removed and the masks left in each."""
    names = sorted(n for n in os.listdir(images) if n.startswith("i"))
    for name in names[1::2]:
        os.remove(os.path.join(images, name))
    figures = {"inputs_deleted": len(names[1::2])}
    fresh_output = first_output + "-fresh"
    for label, output in (("rerun", first_output), ("fresh", fresh_output)):
        result, wall = segment(images, output, side)
        counters = _read_json(os.path.join(output, "manifest.json")).get("beam_counters") or {}
        figures[label] = {"exit_code": result.returncode, "wall_seconds": round(wall, 1),
                          "stale_outputs_removed": counters.get("stale_outputs_removed", 0),
                          "masks_left": len(os.listdir(os.path.join(output, "masks")))}
        print(f"{label}: {wall:.1f} s, exit {result.returncode}, "
              f"{figures[label]['stale_outputs_removed']} stale files removed, "
              f"{figures[label]['masks_left']} masks left", flush=True)
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--rerun", action="store_true",
                        help="then time a rerun over half the inputs into the same folder "
                             "against a fresh one (the removal of stale per-image files)")
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
        result, wall = segment(images, os.path.join(work, "out"), args.side)
        progress = [line for line in result.stderr.splitlines()
                    if line.startswith("segbeam: ") and " images" in line]
        print("\n".join(progress))
        counts = _read_json(os.path.join(work, "out", "summary.json"))["counts"]
        print(f"exit {result.returncode}; {counts['inputs']} inputs = {counts['outputs']} "
              f"outputs + {counts['dead_letters']} dead letters: "
              f"{'accounted for' if counts['accounted_for'] else 'NOT ACCOUNTED FOR'}; "
              f"{len(progress)} progress lines; {wall:.1f} s", flush=True)
        rerun = rerun_half(images, os.path.join(work, "out"), args.side) if args.rerun else None
    summary = {"exit_code": result.returncode, "counts": counts, "wall_seconds": round(wall, 1),
               "images": args.count, "side": args.side}
    if rerun:
        summary["rerun_half"] = rerun
    write_record("many_images", progress, summary, args.output)
    rerun_ok = rerun is None or all(
        rerun[label]["exit_code"] == 0 and rerun[label]["masks_left"] == args.count -
        rerun["inputs_deleted"] for label in ("rerun", "fresh")) and \
        rerun["rerun"]["stale_outputs_removed"] == rerun["inputs_deleted"]
    return 0 if result.returncode == 0 and counts["accounted_for"] and progress and rerun_ok \
        else 1


if __name__ == "__main__":
    sys.exit(main())
