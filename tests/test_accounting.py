"""Every input is accounted for, on every runner segbeam supports: 1,003 generated inputs
(1,000 images, 100 of them without a mask, and 3 corrupt files) in batches of 7, which does
not divide the count; what lands on disk is checked against the input files themselves."""

import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from segbeam.pipeline.demo import synthetic_scene
from segbeam.pipeline.run import run

IMAGES, CORRUPT, BATCH = 1000, 3, 7


@pytest.fixture(scope="module")
def many_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    os.makedirs(folder / "images")
    os.makedirs(folder / "masks")
    rng = np.random.default_rng(0)
    for index in range(IMAGES):
        image, mask = synthetic_scene(rng, 24, 32)
        Image.fromarray(image).save(folder / "images" / f"i{index:04d}.png")
        if index % 10:
            Image.fromarray(mask).save(folder / "masks" / f"i{index:04d}.png")
    for index in range(CORRUPT):
        (folder / "images" / f"bad{index}.png").write_bytes(b"not an image")
    return folder


RUNNERS = {
    "direct": [],
    "direct-2-processes": ["--direct_num_workers", "2",
                           "--direct_running_mode", "multi_processing"],
    "dask-2-workers": None,  # filled in with the cluster's address
}


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_inputs_equal_outputs_plus_dead_letters(runner, many_inputs, tmp_path, demo_model_path,
                                               request, caplog):
    assert (IMAGES + CORRUPT) % BATCH and IMAGES % BATCH
    runner_args = RUNNERS[runner]
    if runner_args is None:
        cluster = request.getfixturevalue("dask_cluster")
        runner_args = ["--runner", "DaskRunner", "--dask_client_address",
                       cluster.scheduler_address]
    output = tmp_path / "out"
    outcome = run(["--input", f"{many_inputs}/images/*.png", "--masks",
                   f"{many_inputs}/masks", "--output", str(output), "--model", demo_model_path,
                   "--num_classes", "3", "--input_size", "32", "--batch_size", str(BATCH),
                   "--ignore_index", "-1", "--crf_iterations", "2", *runner_args])

    inputs = {os.path.splitext(name)[0] for name in os.listdir(many_inputs / "images")}
    masks = {os.path.relpath(p, output / "masks")[:-4]
             for p in glob.glob(f"{output}/masks/*.png")}
    rows = [row for path in glob.glob(f"{output}/metrics/*.parquet")
            for row in pq.read_table(path).to_pylist()]
    dead = [json.loads(line) for path in glob.glob(f"{output}/dead_letters/*.jsonl")
            for line in open(path) if line.strip()]
    row_keys = [row["key"] for row in rows]
    dead_keys = [letter["key"] for letter in dead]

    assert len(row_keys) == len(set(row_keys)) == IMAGES  # no loss, no duplicate
    assert set(row_keys) == masks
    assert sorted(dead_keys) == [f"bad{i}" for i in range(CORRUPT)]
    assert set(row_keys) | set(dead_keys) == inputs and not set(row_keys) & set(dead_keys)
    assert sum(row["has_mask"] for row in rows) == IMAGES - IMAGES // 10
    counts = outcome.summary["counts"]
    assert (counts["inputs"], counts["segmented"], counts["dead_letters"]) == (
        IMAGES + CORRUPT, IMAGES, CORRUPT)
    assert counts["accounted_for"] and outcome.exit_code == 0
    if outcome.manifest["beam_counters"] is not None:  # runners that report Beam metrics
        assert outcome.manifest["beam_counters"]["num_inferences"] == IMAGES
    # each worker process listed every segbeam flag as unparseable, a screenful of noise
    assert not [r for r in caplog.records if "Discarding unparseable" in r.getMessage()]
