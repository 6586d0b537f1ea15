"""Golden outputs: what ``segbeam run`` writes for two fixed jobs, reduced to comparable JSON.

The two jobs are the demo (``segbeam run`` with no ``--input``) and six CamVid val images with
a seeded random-weight ``tiny_fcn`` (raw masks written too). For each, the record holds every
mask PNG's SHA-256 and class histogram, the metrics rows and the summary. Paths are made
relative to the run's folders so that records from different temporary directories compare
equal. The record also holds the numerics signature of the machine and libraries it was made
with (CPU model, vector instruction sets, versions): oneDNN picks kernels by instruction set,
so another CPU computes slightly different probabilities and may flip near-tied pixels.

This module drives the installed ``segbeam`` command in a subprocess and imports nothing from
the project, so the same code checks outputs before and after a refactor. Record anew with
``python -m tests.golden_outputs [demo] [camvid_val6]`` (only when a change is meant to alter
those outputs, and say so in the commit).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from typing import Optional

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
CAMVID = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "camvid"))
CAMVID_IMAGES = 6
# The demo's model is trained and saved on each run; a .keras file records when it was saved,
# so its hash (and the configuration fingerprint built on it) differs from run to run.
VOLATILE = "<differs per run>"


def numerics_signature() -> dict:
    """What decides the floating-point results: the CPU and its vector instruction sets, and
    the numeric libraries' versions."""
    cpu, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read()
        cpu = re.search(r"^model name\s*:\s*(.*)$", text, re.M).group(1).strip()
        flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
    except (OSError, AttributeError):
        pass
    versions = {}
    for name in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "pillow", "pydensecrf2"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "vector_flags": sorted(f for f in flags if re.match(
        r"(avx|amx|fma|sse4)", f)), "versions": versions}


def segbeam(args: list[str]) -> subprocess.CompletedProcess:
    """Runs the installed ``segbeam`` command (the console script beside this interpreter)."""
    command = os.path.join(os.path.dirname(sys.executable), "segbeam")
    result = subprocess.run([command, *args], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"segbeam {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


def _relative(value, roots: dict[str, str]):
    if isinstance(value, str):
        for name, root in roots.items():
            if value.startswith(root):
                return f"<{name}>{value[len(root):]}"
    return value


def collect(output: str, roots: dict[str, str], volatile_fingerprint: bool) -> dict:
    """Mask hashes, metrics rows (sorted by key) and the summary of one run's output folder."""
    masks, histograms = {}, {}
    for path in sorted(glob.glob(os.path.join(output, "masks*", "**", "*.png"),
                                 recursive=True)):
        name = os.path.relpath(path, output)
        with open(path, "rb") as handle:
            masks[name] = hashlib.sha256(handle.read()).hexdigest()
        histograms[name] = np.bincount(np.asarray(Image.open(path)).ravel()).tolist()
    rows = pq.read_table(sorted(glob.glob(os.path.join(output, "metrics", "*.parquet")))
                         ).to_pylist()
    rows = [{k: _relative(v, roots) for k, v in row.items()}
            for row in sorted(rows, key=lambda r: r["key"])]
    with open(os.path.join(output, "summary.json")) as handle:
        summary = json.load(handle)
    if "masks_without_image" in summary:
        summary["masks_without_image"] = [_relative(path, roots)
                                          for path in summary["masks_without_image"]]
    if volatile_fingerprint:
        summary["config_fingerprint"] = VOLATILE
        for row in rows:
            row["config_fingerprint"] = VOLATILE
    return {"masks": masks, "mask_histograms": histograms, "rows": rows, "summary": summary,
            "numerics": numerics_signature()}


def run_demo(output: str) -> subprocess.CompletedProcess:
    """``segbeam run`` with no ``--input``: the README's first command."""
    return segbeam(["run", "--output", output])


def collect_demo(output: str) -> dict:
    return collect(output, {"output": output}, volatile_fingerprint=True)


def demo_outputs(workdir: str) -> dict:
    output = os.path.join(workdir, "demo")
    run_demo(output)
    return collect_demo(output)


def camvid_outputs(workdir: str) -> Optional[dict]:
    """None where the CamVid folder is absent."""
    if not os.path.isdir(os.path.join(CAMVID, "val")):
        return None
    subset = os.path.join(workdir, "camvid_val")
    os.makedirs(subset, exist_ok=True)
    for name in sorted(os.listdir(os.path.join(CAMVID, "val")))[:CAMVID_IMAGES]:
        link = os.path.join(subset, name)
        if not os.path.exists(link):  # links, not copies: the data stays in ../shared
            os.symlink(os.path.realpath(os.path.join(CAMVID, "val", name)), link)
    output = os.path.join(workdir, "camvid_out")
    masks = os.path.join(CAMVID, "valannot")
    segbeam(["run", "--input", f"{subset}/*.png", "--masks", masks, "--output", output,
             "--model", "tiny_fcn", "--seed", "0", "--num_classes", "11",
             "--class_names", "camvid", "--ignore_index", "11", "--input_size", "360x480",
             "--batch_size", "3", "--write_raw_masks"])
    return collect(output, {"output": output, "images": subset, "masks": masks},
                   volatile_fingerprint=False)


def golden_path(name: str) -> str:
    return os.path.join(GOLDEN, f"{name}.json")


def main() -> None:
    import tempfile

    wanted = sys.argv[1:] or ["demo", "camvid_val6"]
    os.makedirs(GOLDEN, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        for name, produce in (("demo", demo_outputs), ("camvid_val6", camvid_outputs)):
            if name not in wanted:
                continue
            record = produce(workdir)
            if record is None:
                print(f"{name}: skipped (no data)")
                continue
            with open(golden_path(name), "w") as handle:
                json.dump(record, handle, indent=1, sort_keys=True)
                handle.write("\n")
            print(f"{name}: {len(record['masks'])} masks, {len(record['rows'])} rows")


if __name__ == "__main__":
    main()
