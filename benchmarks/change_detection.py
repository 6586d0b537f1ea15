"""What `--skip_existing` pays, on a night with nothing new, to find that every input is
unchanged: `--change_detection content` (list the files, then read and hash every image and
mask) against `--change_detection stamp` (list the files with their stamps and compare them
with the rows'), side by side over the same inputs; and what either pays on top to check that
the masks the skipped inputs' rows name are still there (one listing, with sizes, of the
earlier partition's ``masks/``).

    python -m benchmarks.change_detection --count 1000

Writes COUNT CamVid val frames with their masks (cycled; random bytes of a frame's size where
CamVid is absent) to a Cloud Storage emulator (gcp-storage-emulator on a loopback port: no
network) and to a local folder, and times, for each, the per-input work each way does in the
run's decision step (``segbeam.transforms.skip``: ``candidate_of`` against
``unchanged_by_stamp``). The local files were just written, so they are read from the page
cache: a cold disk makes hashing slower. The emulator keeps objects in memory and answers on a
loopback port: Cloud Storage's bandwidth and latency make hashing slower there too.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time

from benchmarks.common import CAMVID, print_table, write_record
from benchmarks.mask_listing import _emulator


def _frames() -> list[tuple[bytes, bytes]]:
    """(image, mask) bytes of the CamVid val frames, or random bytes of a frame's size."""
    images = sorted(glob.glob(os.path.join(CAMVID, "val", "*.png")))
    if not images:
        return [(os.urandom(276_000), os.urandom(9_000))]
    pairs = []
    for path in images:
        with open(path, "rb") as image, \
                open(os.path.join(CAMVID, "valannot", os.path.basename(path)), "rb") as mask:
            pairs.append((image.read(), mask.read()))
    return pairs


def measure(root: str, count: int, frames: list) -> dict:
    """Writes ``count`` inputs under ``root`` and times both ways of finding them unchanged."""
    from apache_beam.io.filesystems import FileSystems

    from segbeam.incremental import PriorResult, input_stamp, unchanged_by_stamp
    from segbeam.layout import sized_files_under
    from segbeam.matching import RECENT_SECONDS, match_files, match_stamped_files
    from segbeam.records import ImageRef
    from segbeam.transforms.skip import candidate_of

    written = 0
    for index in range(count):
        image, mask = frames[index % len(frames)]
        # The label mask stands in for the PNG an earlier night wrote under its partition.
        for folder, data in (("images", image), ("masks", mask),
                             ("out/date=2026-12-06/masks", mask)):
            with FileSystems.create(f"{root}/{folder}/f{index:06d}.png") as handle:
                handle.write(data)
            written += len(data) if not folder.startswith("out/") else 0
    time.sleep(RECENT_SECONDS)  # as on the night after: files at rest have stamps

    def refs(listed_images, listed_masks) -> list:
        masks = dict(listed_masks)
        return [ImageRef(os.path.basename(path), path, path.replace("/images/", "/masks/"),
                         input_stamp(stamp, path.replace("/images/", "/masks/"),
                                     masks.get(path.replace("/images/", "/masks/"), "")))
                for path, stamp in listed_images]

    # The rows an earlier night left: their hashes and stamps.
    earlier = {ref.key: PriorResult(root, "", {
        "source": ref.source, "mask_source": ref.mask_source, "source_stamp": ref.source_stamp,
        "content_sha256": candidate_of(ref).content_sha256})
        for ref in refs(match_stamped_files(f"{root}/images/*.png"),
                        match_stamped_files(f"{root}/masks/*.png"))}

    started = time.perf_counter()
    plain = refs(((path, "") for path in match_files(f"{root}/images/*.png")),
                 ((path, "") for path in match_files(f"{root}/masks/*.png")))
    unchanged_by_hash = sum(candidate_of(ref).content_sha256 ==
                            earlier[ref.key].row["content_sha256"] for ref in plain)
    content = time.perf_counter() - started

    started = time.perf_counter()
    stamped = refs(match_stamped_files(f"{root}/images/*.png"),
                   match_stamped_files(f"{root}/masks/*.png"))
    unchanged_by_stamps = sum(unchanged_by_stamp(ref, earlier[ref.key]) for ref in stamped)
    stamp = time.perf_counter() - started

    started = time.perf_counter()
    standing = sum(1 for _ in sized_files_under(f"{root}/out/date=2026-12-06/masks"))
    mask_check = time.perf_counter() - started

    if unchanged_by_hash != count or unchanged_by_stamps != count or standing != count:
        raise SystemExit(f"{root}: the two ways disagree ({unchanged_by_hash} unchanged by "
                         f"hash, {unchanged_by_stamps} by stamp, of {count}; {standing} "
                         f"masks listed)")
    return {"where": "Cloud Storage emulator" if root.startswith("gs://") else "local disk",
            "inputs": count, "megabytes": round(written / 1e6), "content_s": round(content, 3),
            "stamp_s": round(stamp, 3), "ratio": round(content / stamp, 1),
            "mask_check_s": round(mask_check, 3)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000,
                        help="inputs (image and mask) to find unchanged (default 1000)")
    parser.add_argument("--output", help="where to write the JSON record")
    args = parser.parse_args(argv)
    frames = _frames()
    server, bucket = _emulator()
    try:
        rows = [measure(f"{bucket}/data", args.count, frames)]
    finally:
        server.stop()
    with tempfile.TemporaryDirectory() as folder:
        rows.append(measure(folder, args.count, frames))
    print_table(rows, [("where", "where", "s"), ("inputs", "inputs", "d"),
                       ("megabytes", "MB", "d"), ("content_s", "content: hash (s)", ".3f"),
                       ("stamp_s", "stamp: listing (s)", ".3f"), ("ratio", "ratio", ".1f"),
                       ("mask_check_s", "masks listed (s)", ".3f")],
                "a night with nothing new: hash every input vs compare stamps")
    write_record("change_detection", rows, {"count": args.count,
                                            "camvid": os.path.isdir(CAMVID)}, args.output)


if __name__ == "__main__":
    main()
