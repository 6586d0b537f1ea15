"""End-to-end benchmark on the local runner: the whole job (read, decode, batched inference,
CRF, metrics, mask PNGs, Parquet) as a plain Python loop, on Beam's in-memory runner (one
worker), and with 1 and 2 worker processes.

    python -m benchmarks.end_to_end --model runs/unet/best.keras --input_size 128x160

Every variant runs in its own process with one thread for TensorFlow (and OpenMP), so that one
worker is one core. Each runs on N and on 3N images: the marginal rate 2N / (T(3N) - T(N))
cancels fixed start-up costs (imports, model loading, starting Beam's workers), which a run
over millions of images does not notice; the wall-clock rate of the 3N run is shown too.
Images: CamVid val beside the repository, else generated scenes.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import (camvid_pairs, print_table, report_to_parent, run_child,
                               write_record)

ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
              "OMP_NUM_THREADS": "1"}
VARIANTS = {
    "plain loop": None,
    "beam in-memory, 1 worker": [],
    "beam 1 worker process": ["--direct_num_workers", "1",
                              "--direct_running_mode", "multi_processing"],
    "beam 2 worker processes": ["--direct_num_workers", "2",
                                "--direct_running_mode", "multi_processing"],
}


def _prepare_inputs(folder: str, count: int) -> tuple[str, str]:
    """``count`` images (CamVid val, cycled if needed, or generated) and masks as files."""
    from PIL import Image

    os.makedirs(f"{folder}/images")
    os.makedirs(f"{folder}/masks")
    pairs = camvid_pairs("val")
    rng = np.random.default_rng(0)
    for index in range(count):
        name = f"{index:05d}.png"
        if pairs:
            image_path, mask_path = pairs[index % len(pairs)]
            shutil.copyfile(image_path, f"{folder}/images/{name}")
            shutil.copyfile(mask_path, f"{folder}/masks/{name}")
        else:
            from segbeam.pipeline.demo import synthetic_scene

            image, mask = synthetic_scene(rng, 360, 480)
            Image.fromarray(image).save(f"{folder}/images/{name}")
            Image.fromarray(mask).save(f"{folder}/masks/{name}")
    return f"{folder}/images/*.png", f"{folder}/masks"


def _argv(args, images: str, masks: str, output: str) -> list[str]:
    # One core per worker process, the CRF's included (its default on the local runner is a
    # process per core): the variants compare runners, not core counts.
    return ["--input", images, "--masks", masks, "--output", output, "--model", args.model,
            "--num_classes", str(args.num_classes), "--ignore_index", str(args.ignore_index),
            "--input_size", args.input_size, "--batch_size", str(args.batch_size),
            "--crf_processes", "1"]


def plain_loop(argv: list[str]) -> int:
    """The same work with the pipeline's own functions, one image after another, no Beam."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.options.pipeline_options import PipelineOptions

    from segbeam.pipeline.graph import handler_for
    from segbeam.pipeline.options import SegmentationOptions, settings_from
    from segbeam.dataset import decode_encoded, read_encoded
    from segbeam.records import ImageRef
    from segbeam.refinement import refine_record
    from segbeam.transforms.scoring import metrics_row, metrics_schema, score_record
    from segbeam.transforms.write import write_label_png

    settings = settings_from(PipelineOptions(argv).view_as(SegmentationOptions))
    handler = handler_for(settings)
    model = handler.load_model()
    paths = sorted(glob.glob(settings.input))
    rows = []
    for first in range(0, len(paths), settings.inference.batch_size):
        batch = []
        for path in paths[first:first + settings.inference.batch_size]:
            key = os.path.splitext(os.path.basename(path))[0]
            ref = ImageRef(key, path, os.path.join(settings.masks, os.path.basename(path)))
            batch.append(decode_encoded(read_encoded(ref), settings.max_image_pixels))
        for record in handler.run_inference(batch, model):
            record = refine_record(record, settings.crf, settings.num_classes,
                                   settings.ignore_index)
            record = score_record(record, settings.num_classes, settings.ignore_index)
            rows.append(metrics_row(write_label_png(record, settings.run_dir), "plain"))
    schema = metrics_schema(settings.num_classes, settings.class_names)
    os.makedirs(f"{settings.run_dir}/metrics", exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema),
                   f"{settings.run_dir}/metrics/metrics.parquet")
    return len(rows)


def child(args) -> None:
    """One variant on one input size, in this process; prints its JSON result last."""
    with tempfile.TemporaryDirectory(prefix="segbeam-e2e-") as work:
        images, masks = _prepare_inputs(work, args.count)
        argv = _argv(args, images, masks, f"{work}/out")
        start = time.perf_counter()
        if args.variant == "plain loop":
            outputs = plain_loop(argv)
        else:
            from segbeam.pipeline.run import run

            outputs = run(argv + VARIANTS[args.variant]).summary["counts"]["outputs"]
        seconds = time.perf_counter() - start
    assert outputs == args.count, (outputs, args.count)
    report_to_parent(variant=args.variant, images=args.count, seconds=seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.end_to_end", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="a .keras model or a registry name (built with seeded random "
                             "weights); default: unet")
    parser.add_argument("--num_classes", type=int, default=11)
    parser.add_argument("--ignore_index", type=int, default=11)
    parser.add_argument("--input_size", default="128x160")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--images", type=int, default=24, help="N (the runs use N and 3N)")
    parser.add_argument("--output", help="JSON record path")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from benchmarks.inference import model_file

    args.model = model_file(args.model or "unet", args.num_classes)
    if args.variant:
        child(args)
        return 0
    common = ["--model", args.model, "--num_classes", str(args.num_classes),
              "--ignore_index", str(args.ignore_index), "--input_size", args.input_size,
              "--batch_size", str(args.batch_size)]
    rows = []
    for variant in VARIANTS:
        runs = {}
        for count in (args.images, 3 * args.images):
            print(f"running {variant} on {count} images ...", flush=True)
            runs[count] = run_child("benchmarks.end_to_end",
                                    [*common, "--variant", variant, "--count", str(count)],
                                    env=ONE_THREAD)
        small, large = runs[args.images], runs[3 * args.images]
        rows.append({"variant": variant, "seconds_n": small["seconds"],
                     "seconds_3n": large["seconds"],
                     "wall_images_per_s": large["images"] / large["seconds"],
                     "images_per_s": (large["images"] - small["images"])
                     / (large["seconds"] - small["seconds"]),
                     "peak_rss_mib": large["peak_rss_mib"]})
    by_name = {row["variant"]: row for row in rows}
    plain = by_name["plain loop"]["images_per_s"]
    for row in rows:
        row["vs_plain"] = row["images_per_s"] / plain
    one, two = by_name["beam 1 worker process"], by_name["beam 2 worker processes"]
    summary = {"scaling_2_vs_1_workers": two["images_per_s"] / one["images_per_s"],
               "beam_overhead_in_memory": 1 - by_name["beam in-memory, 1 worker"]["vs_plain"],
               "beam_overhead_1_process": 1 - one["vs_plain"]}
    print_table(rows, [("variant", "variant", ""), ("seconds_n", f"s ({args.images})", ".1f"),
                       ("seconds_3n", f"s ({3 * args.images})", ".1f"),
                       ("wall_images_per_s", "wall img/s", ".2f"),
                       ("images_per_s", "marginal img/s", ".2f"), ("vs_plain", "vs plain", ".2f"),
                       ("peak_rss_mib", "peak RSS MiB", ".0f")],
                f"End to end, local runner, one thread per process ({args.input_size} model "
                f"input, CRF defaults)")
    print(f"\n2 workers: {summary['scaling_2_vs_1_workers']:.2f}x one worker process; Beam's "
          f"overhead over the plain loop: {100 * summary['beam_overhead_in_memory']:.1f}% "
          f"in memory, {100 * summary['beam_overhead_1_process']:.1f}% with one worker process")
    if any(row["seconds_3n"] <= row["seconds_n"] for row in rows):
        print(f"\nwarning: a run over {3 * args.images} images was not slower than one over "
              f"{args.images}: start-up noise swamps the work, so the marginal rates above mean "
              f"nothing; use more --images (24 or more)")
    write_record("end_to_end", rows, summary, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
