"""Shared test helpers: encoded images made on the fly, and small saved models."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CAMVID = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "camvid")


def png_bytes(array: np.ndarray, mode: str | None = None, **save_kwargs) -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_kwargs)
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95, **save_kwargs)
    return buffer.getvalue()


def colour16_bytes(values: np.ndarray, file_format: str = "PNG") -> bytes:
    """An HxWxC (C = 2, 3 or 4) uint16 image as a 16-bit-per-sample PNG or (RGB only) TIFF,
    written by hand: Pillow reads such files but cannot write them."""
    height, width, channels = values.shape
    if file_format == "TIFF":
        data = values.astype("<u2").tobytes()
        # (tag, type, count, value): 258, bits per sample, points at the three 16s after
        # the 8-byte header; the pixels follow them, at offset 14.
        tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, 8), (259, 3, 1, 1),
                (262, 3, 1, 2), (273, 4, 1, 14), (277, 3, 1, 3), (278, 3, 1, height),
                (279, 4, 1, len(data)), (284, 3, 1, 1)]
        directory = struct.pack("<H", len(tags)) + b"".join(
            struct.pack("<HHII", *tag) for tag in tags) + struct.pack("<I", 0)
        return (b"II*\x00" + struct.pack("<I", 14 + len(data)) + struct.pack("<3H", 16, 16, 16)
                + data + directory)
    colour_type = {2: 4, 3: 2, 4: 6}[channels]
    rows = values.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_random_pairs(folder, masks: list, seed: int = 0) -> None:
    """``folder/images/i<k>.png`` (random RGB) and ``folder/masks/i<k>.png`` for each mask."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    for index, mask in enumerate(masks):
        Image.fromarray(random_image(rng, *mask.shape)).save(folder / "images" / f"i{index}.png")
        Image.fromarray(mask).save(folder / "masks" / f"i{index}.png")


def without_calibration(value):
    """``value`` (rows, a summary, nested) without its calibration entries, and those entries
    apart. Calibration comes from the model's float outputs, whose last bits depend on how
    images were batched, so runs that batch differently agree on it only closely, not bit for
    bit; everything else (labels, confusion, boundary figures) must be identical."""
    if isinstance(value, dict):
        kept, apart = {}, {}
        for key, item in value.items():
            if "calibrat" in str(key):
                apart[key] = item
            else:
                kept[key], inner = without_calibration(item)
                if inner:
                    apart[key] = inner
        return kept, apart
    if isinstance(value, list):
        pairs = [without_calibration(item) for item in value]
        return [kept for kept, _ in pairs], [apart for _, apart in pairs if apart]
    return value, None


def assert_dead_letters_counted(outcome) -> None:
    """A run's Beam counters agree with its dead-letter files: ``dead_letters_<stage>`` with
    the summary's count by stage, and the progress line's count with their total."""
    counters = outcome.manifest["beam_counters"]
    counts = outcome.summary["counts"]
    by_stage = {name.removeprefix("dead_letters_"): value for name, value in counters.items()
                if name.startswith("dead_letters_") and value}
    assert by_stage == (counts["dead_letters_by_stage"] or {})
    assert counters.get("progress_dead", 0) == counts["dead_letters"]


def assert_close_calibration(a, b) -> None:
    """The calibration figures of two summaries agree to 0.1% (ECE, NLL, Brier)."""
    for variant in ("raw", "crf"):
        one = ((a.get("evaluation") or {}).get(variant) or {}).get("calibration")
        other = ((b.get("evaluation") or {}).get(variant) or {}).get("calibration")
        assert (one is None) == (other is None), variant
        if one:
            for figure in ("ece", "nll", "brier"):
                assert one[figure] == pytest.approx(other[figure], rel=1e-3, abs=1e-6), figure


def pytest_collection_modifyitems(config, items) -> None:
    """The files holding a test marked ``slow`` run first, the rest after, each group in
    collection order. Two workers take a file at a time (``--dist loadfile``), so a file that
    starts last keeps one worker busy after the other has finished: the backend checks, last
    by xdist's own order (fewest tests last), kept one worker alone for two minutes. ``.ci/run``
    passes ``--no-loadscope-reorder`` so that xdist keeps this order."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # a stable sort


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """An untrained 3-class tiny_fcn saved as .keras (random but fixed weights)."""
    import keras

    from segbeam import models

    keras.utils.set_random_seed(7)
    model = models.create_model("tiny_fcn", num_classes=3)
    path = str(tmp_path_factory.mktemp("models") / "tiny3.keras")
    model.save(path)
    return path


@pytest.fixture(scope="session")
def demo_model_path(tmp_path_factory) -> str:
    """tiny_fcn trained briefly on generated scenes (the demo's recipe, fewer steps, in float32
    for speed: the tests compare runs on one machine)."""
    from segbeam.pipeline.demo import train_demo_model

    path = str(tmp_path_factory.mktemp("models") / "demo.keras")
    train_demo_model(path, samples=96, epochs=8, dtype="float32")
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, str]:
    """One run of the README's first command (``segbeam run``, no ``--input``): its process
    result and output folder, shared by the tests that check the demo."""
    from tests.golden_outputs import run_demo

    output = str(tmp_path_factory.mktemp("demo_run") / "demo")
    return run_demo(output), output


@pytest.fixture(scope="session")
def dask_cluster():
    """A real dask.distributed cluster on this machine: a scheduler and two worker processes
    (one thread each), on the loopback interface only."""
    from dask.distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")  # a free port: xdist runs two
    yield cluster
    cluster.close()


@pytest.fixture
def gcs_bucket(monkeypatch):
    """Starts a Cloud Storage emulator (gcp-storage-emulator) on a loopback port holding one
    bucket, points Beam's gcsio at it (anonymously) and returns ``gs://BUCKET``."""
    import socket

    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions
    from gcp_storage_emulator.server import create_server

    from segbeam.pipeline.run import apply_no_auth

    servers = []

    def start(bucket: str = "segbeam-test") -> str:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
        server.start()
        servers.append(server)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("NO_GCE_CHECK", "True")  # never probe for a GCE metadata server
        options = PipelineOptions(["--no_auth"])
        FileSystems.set_options(options)
        apply_no_auth(options)
        return f"gs://{bucket}"

    yield start
    for server in servers:
        server.stop()


def put(path: str, data: bytes) -> None:
    """Writes bytes to any Beam filesystem path (gs:// included). Beam compresses by the
    name's suffix on the way: ``x.gz`` gets ``data`` gzip-compressed."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as handle:
        handle.write(data)


def get(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        return handle.read()
