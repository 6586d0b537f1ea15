"""What `--skip_existing` pays to find that reused rows' mask PNGs are still there: one
existence check per reused row (as runs before 2026-12-07 did) against one listing of the
run's masks folder (``segbeam.layout.files_under``, what the run does now), side by side.

    python -m benchmarks.mask_listing --count 5000

Writes COUNT small objects under ``masks/`` on a Cloud Storage emulator (gcp-storage-emulator
on a loopback port: no network) and in a local folder, then times both ways on each. The
emulator answers in about a millisecond; Cloud Storage takes tens of milliseconds per request
and lists a thousand objects per request, so there the ratio is larger than printed here.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time

from benchmarks.common import print_table, write_record


def _emulator() -> tuple[object, str]:
    """A Cloud Storage emulator holding one bucket, Beam's gcsio pointed at it anonymously."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions
    from gcp_storage_emulator.server import create_server

    from segbeam.pipeline.run import apply_no_auth

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="bench")
    server.start()
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    os.environ["NO_GCE_CHECK"] = "True"
    options = PipelineOptions(["--no_auth"])
    FileSystems.set_options(options)
    apply_no_auth(options)
    return server, "gs://bench"


def measure(root: str, count: int) -> dict:
    """Writes ``count`` masks under ``root/masks`` and times both ways of finding them."""
    from apache_beam.io.filesystems import FileSystems

    from segbeam.layout import MASKS_DIR, files_under, output_path

    paths = [output_path(root, MASKS_DIR, f"s{index // 1000:03d}", f"k{index:06d}.png")
             for index in range(count)]
    for path in paths:
        with FileSystems.create(path) as handle:
            handle.write(b"\x89PNG mask")
    started = time.perf_counter()
    found_each = sum(FileSystems.exists(path) for path in paths)
    each = time.perf_counter() - started
    started = time.perf_counter()
    listed = set(files_under(output_path(root, MASKS_DIR)))
    listing = time.perf_counter() - started
    if found_each != count or listed != set(paths):
        raise SystemExit(f"{root}: the two ways disagree ({found_each} found one by one, "
                         f"{len(listed & set(paths))} of {count} listed)")
    return {"where": "Cloud Storage emulator" if root.startswith("gs://") else "local disk",
            "masks": count, "exists_each_s": round(each, 3), "listing_s": round(listing, 3),
            "ratio": round(each / listing, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="masks to find (default 5000)")
    parser.add_argument("--output", help="where to write the JSON record")
    args = parser.parse_args(argv)
    server, bucket = _emulator()
    try:
        rows = [measure(f"{bucket}/run", args.count)]
    finally:
        server.stop()
    with tempfile.TemporaryDirectory() as folder:
        rows.append(measure(folder, args.count))
    print_table(rows, [("where", "where", "s"), ("masks", "masks", "d"),
                       ("exists_each_s", "exists per row (s)", ".3f"),
                       ("listing_s", "one listing (s)", ".3f"), ("ratio", "ratio", ".1f")],
                "finding reused rows' masks: one check per row vs one listing")
    write_record("mask_listing", rows, {"count": args.count}, args.output)


if __name__ == "__main__":
    main()
