"""Prepares what the GPU benchmarks need on a lent device machine (see the developers' guide and
the device tool's README): that machine has Python 3.12 with JAX, numpy, Pillow, pyarrow,
scipy and a compiler, but no Keras, Apache Beam or pydensecrf, and cannot download anything.

    python -m benchmarks.device_prepare            # writes .device/ (git-ignored)

writes, under ``.device/``:

- ``wheels/``: Python 3.12 manylinux wheels of this checkout's apache-beam and keras and
  their dependencies, less the packages the device's image already has (``DEVICE_HAS``, read
  off its package list on 2026-11-17), and the pydensecrf2 source archive (it has no wheel);
- ``unet.keras``: the benchmark's cached U-Net (``benchmarks/.cache/unet/best.keras``)
  without its optimizer state, its weights rounded to float16 and the archive deflated
  (14 MiB instead of 79);
- ``camvid/``: the first ``--frames`` CamVid val frames and masks (read there through
  ``SEGBEAM_CAMVID``);
- ``install.sh``: run first on the device; installs all that into ``/tmp/site``.

All of it travels in one call (under the 64 MiB a call may carry, the working tree
included), which installs and runs every GPU benchmark (``benchmarks/device_run.sh``):

    run(carry=[".device"], timeout_s=600, command="bash benchmarks/device_run.sh")
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata

import numpy as np

from benchmarks.common import CAMVID, ROOT, camvid_pairs

DEVICE = os.path.join(ROOT, ".device")
CARRY_LIMIT = 64 * 2 ** 20  # what one device call may carry, the working tree included
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
DEVICE_HAS = set("""
absl-py aiohttp attrs certifi charset-normalizer click cloudpickle cython filelock fsspec
grpcio h5py idna jax jaxlib jinja2 markdown-it-py markupsafe mdurl ml-dtypes msgpack numpy
onnx onnxruntime packaging pandas pillow pip protobuf psutil pyarrow pygments pyparsing
python-dateutil pyyaml regex requests rich scipy setuptools six sortedcontainers
typing-extensions urllib3 wheel wrapt zipp""".split())
INSTALL = """#!/bin/sh
# Written by benchmarks/device_prepare.py: installs the carried wheels, pydensecrf2 (built
# from source with the device's own Cython and numpy) and segbeam into /tmp/site.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
    --target /tmp/site .device/wheels/*.whl
PYTHONPATH=/tmp/site python3 -m pip install -q --no-index --no-deps --no-build-isolation \\
    --no-cache-dir --target /tmp/site .device/wheels/pydensecrf2-*.tar.gz
PYTHONPATH=/tmp/site python3 -m pip install -q --no-index --no-deps --no-build-isolation \\
    --no-cache-dir --target /tmp/site .
PYTHONPATH=/tmp/site KERAS_BACKEND=jax python3 -c \\
    "import apache_beam, keras, pydensecrf.densecrf, segbeam, jax; print('ready:', jax.devices())"
"""


def _project(wheel: str) -> str:
    return re.sub(r"[-_.]+", "-", os.path.basename(wheel).split("-")[0]).lower()


def wheels(target: str) -> list[str]:
    """Downloads the wheels into ``target``, drops those the device has; returns the kept."""
    os.makedirs(target, exist_ok=True)
    wanted = [f"apache-beam=={metadata.version('apache-beam')}",
              f"keras=={metadata.version('keras')}"]
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms,
                    "-d", target, *wanted], check=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--no-binary=:all:", "-d", target,
                    f"pydensecrf2=={metadata.version('pydensecrf2')}"], check=True)
    kept = []
    for wheel in glob.glob(os.path.join(target, "*.whl")):
        if _project(wheel) in DEVICE_HAS:
            os.remove(wheel)
        else:
            kept.append(wheel)
    return sorted(kept)


def slim_model(source: str, target: str) -> None:
    """The model without its optimizer state (loaded uncompiled, saved again), its weights
    rounded to float16 precision (kept as float32) and the archive deflated: the rounded
    weights' low bytes are zeros, so it shrinks to about half and fits one call beside the
    wheels. The rounding moves the model's probabilities by about 1e-3; both CRF backends
    then refine the same probabilities, so their comparison is unaffected."""
    import zipfile

    import keras

    import segbeam.models.layers  # noqa: F401 - registers the custom layers

    model = keras.saving.load_model(source, compile=False)
    for weight in model.weights:
        weight.assign(np.asarray(weight.numpy()).astype(np.float16).astype(np.float32))
    stored = os.path.join(os.path.dirname(target), "stored-" + os.path.basename(target))
    model.save(stored)  # Keras writes its archive uncompressed
    with zipfile.ZipFile(stored) as source_zip, zipfile.ZipFile(
            target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as target_zip:
        for item in source_zip.infolist():
            target_zip.writestr(item.filename, source_zip.read(item.filename))
    os.remove(stored)


def camvid_subset(target: str, frames: int) -> int:
    pairs = camvid_pairs("val", frames)
    for folder in ("val", "valannot"):
        os.makedirs(os.path.join(target, folder), exist_ok=True)
    for image, mask in pairs:
        shutil.copy(image, os.path.join(target, "val"))
        shutil.copy(mask, os.path.join(target, "valannot"))
    return len(pairs)


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_prepare",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=12, help="CamVid val frames to carry")
    parser.add_argument("--model", default=os.path.join(ROOT, "benchmarks", ".cache", "unet",
                                                        "best.keras"))
    args = parser.parse_args(argv)
    if not camvid_pairs("val"):
        parser.error(f"CamVid not found at {os.path.normpath(CAMVID)}")
    shutil.rmtree(DEVICE, ignore_errors=True)
    kept = wheels(os.path.join(DEVICE, "wheels"))
    with open(os.path.join(DEVICE, "install.sh"), "w") as handle:
        handle.write(INSTALL)
    frames = camvid_subset(os.path.join(DEVICE, "camvid"), args.frames)
    if os.path.exists(args.model):
        slim_model(args.model, os.path.join(DEVICE, "unet.keras"))
    else:
        print(f"no model at {args.model}: `python -m benchmarks.crf --part backends` trains "
              f"one (10 min on 2 cores); .device/unet.keras left out")
    print(f"{len(kept)} wheels: {', '.join(_project(w) for w in kept)}")
    for part in ("wheels", "camvid", "unet.keras"):
        path = os.path.join(DEVICE, part)
        if os.path.exists(path):
            print(f"  .device/{part}: {_size(path) / 2 ** 20:.1f} MiB")
    tree = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                          check=True).stdout.decode().split("\0")
    carried = _size(DEVICE) + sum(_size(os.path.join(ROOT, name)) for name in tree if name)
    print(f"the call carries {carried / 2 ** 20:.1f} MiB with the working tree "
          f"(limit {CARRY_LIMIT / 2 ** 20:.0f} MiB); {frames} CamVid frames")
    return 0 if carried < CARRY_LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
