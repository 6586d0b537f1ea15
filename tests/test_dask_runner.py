"""segbeam's DaskRunner on a real dask.distributed cluster (two worker processes)."""

import glob
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue
from PIL import Image

from segbeam.pipeline.demo import synthetic_scene
from segbeam.pipeline.run import run
from tests.conftest import assert_close_calibration, without_calibration


class _SplitTens(beam.DoFn):
    def process(self, number):
        if number % 10 == 0:
            yield beam.pvalue.TaggedOutput("tens", number)
        else:
            yield number


class _Triples(beam.DoFn):
    """Emits lists of three; the rest of each bundle in finish_bundle (as BatchElements does)."""

    def start_bundle(self):
        self._buffer = []

    def process(self, number):
        self._buffer.append(number)
        if len(self._buffer) == 3:
            yield self._buffer
            self._buffer = []

    def finish_bundle(self):
        if self._buffer:
            yield WindowedValue(self._buffer, 0, (GlobalWindow(),))


def _save_to(folder, name):
    def save(value):
        with open(os.path.join(folder, name), "w") as handle:
            json.dump(value, handle)
    return save


def _dask_options(cluster, *extra):
    return PipelineOptions(["--runner", "segbeam.pipeline.dask_runner.DaskRunner",
                            "--dask_client_address", cluster.scheduler_address, *extra])


def test_every_sink_runs_and_no_element_is_lost_or_misrouted(tmp_path, dask_cluster):
    out = str(tmp_path)
    with beam.Pipeline(options=_dask_options(dask_cluster)) as p:
        numbers = p | beam.Create(list(range(1000)))
        split = numbers | "Split" >> beam.ParDo(_SplitTens()).with_outputs("tens", main="rest")
        _ = (split.rest | "CountRest" >> beam.combiners.Count.Globally()
             | "SaveRest" >> beam.Map(_save_to(out, "rest")))
        _ = (split.tens | "SumTens" >> beam.CombineGlobally(sum)
             | "SaveTens" >> beam.Map(_save_to(out, "tens")))
        _ = (numbers | "Triples" >> beam.ParDo(_Triples()) | "Sizes" >> beam.Map(len)
             | "SumSizes" >> beam.CombineGlobally(sum) | "SaveTriples" >> beam.Map(
                 _save_to(out, "triples")))
        total = numbers | "Total" >> beam.CombineGlobally(sum)
        _ = (p | "Once" >> beam.Create([None])
             | "ReadSides" >> beam.Map(lambda _, t, tens: [t, sorted(tens)[:3], len(tens)],
                                       t=beam.pvalue.AsSingleton(total),
                                       tens=beam.pvalue.AsList(split.tens))
             | "SaveSides" >> beam.Map(_save_to(out, "sides")))
        _ = (numbers | "Shuffle" >> beam.Reshuffle() | "ByRemainder" >> beam.Map(
                lambda n: (n % 7, n)) | "Group" >> beam.GroupByKey()
             | "Groups" >> beam.MapTuple(lambda k, values: (k, len(values)))
             | "AllGroups" >> beam.combiners.ToList()
             | "SaveGroups" >> beam.Map(lambda groups: _save_to(out, "groups")(sorted(groups))))
    saved = {name: json.load(open(os.path.join(out, name))) for name in os.listdir(out)}
    assert saved == {
        "rest": 900,  # Beam's own DaskRunner delivers all 1,000 elements to both outputs
        "tens": sum(range(0, 1000, 10)),
        "triples": 1000,  # ... and keeps 984 here, losing what finish_bundle emits
        "sides": [sum(range(1000)), [0, 10, 20], 100],
        "groups": [[k, len(range(k, 1000, 7))] for k in range(7)],
    }


def _odd_aside(number):
    if number % 2:
        yield beam.pvalue.TaggedOutput("odd", number)
    else:
        yield number


def test_a_collection_that_several_stages_read_reaches_each_of_them_whole(tmp_path,
                                                                          dask_cluster):
    """Dask's bag optimisation makes partitions lazy iterators where it sees one reader; in a
    graph of several sinks computed together, the first reader of a flattened collection
    used up what a second one should have read (a count of 0 where 7 went in)."""
    out = str(tmp_path)
    with beam.Pipeline(options=_dask_options(dask_cluster)) as p:
        split = (p | "Numbers" >> beam.Create(list(range(10)))
                 | "Split" >> beam.FlatMap(_odd_aside).with_outputs("odd", main="even"))
        extra = p | "Extra" >> beam.Create([100])
        inner = (split.odd, extra) | "Inner" >> beam.Flatten()
        outer = (p | "More" >> beam.Create([200]), inner) | "Outer" >> beam.Flatten()
        _ = ((split.even, outer) | "All" >> beam.Flatten()
             | "CountAll" >> beam.combiners.Count.Globally()
             | "SaveAll" >> beam.Map(_save_to(out, "all")))
        _ = (outer | "CountOuter" >> beam.combiners.Count.Globally()
             | "SaveOuter" >> beam.Map(_save_to(out, "outer")))
    saved = {name: json.load(open(os.path.join(out, name))) for name in os.listdir(out)}
    assert saved == {"all": 12, "outer": 7}


def test_unsupported_transforms_fail_loudly(tmp_path, dask_cluster):
    (tmp_path / "a.txt").write_text("line\n")
    pipeline = beam.Pipeline(options=_dask_options(dask_cluster))
    _ = pipeline | "ReadText" >> beam.io.ReadFromText(str(tmp_path / "a.txt"))
    with pytest.raises(NotImplementedError, match="cannot execute 'ReadText/Read"):
        pipeline.run()


def test_beams_own_dask_runner_is_refused(tmp_path):
    with pytest.raises(ValueError, match="drops elements"):
        run(["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner", "--input",
             str(tmp_path / "*.png"), "--model", "tiny_fcn", "--num_classes", "3"])


def _segment(runner_args, data, output, model):
    return run(["--input", f"{data}/images/**", "--masks", f"{data}/masks",
                "--output", str(output), "--model", model, "--num_classes", "3",
                "--input_size", "64", "--batch_size", "4", "--ignore_index", "-1",
                "--crf_iterations", "3", *runner_args])


def _outputs(output):
    rows = [row for path in glob.glob(f"{output}/metrics/*.parquet")
            for row in pq.read_table(path).to_pylist()]
    masks = {os.path.relpath(path, output): np.asarray(Image.open(path))
             for path in glob.glob(f"{output}/masks/**/*.png", recursive=True)}
    dead = sorted((d["key"], d["stage"], d["reason"]) for path in
                  glob.glob(f"{output}/dead_letters/*.jsonl")
                  for d in map(json.loads, open(path)) if d)
    return {r["key"]: {k: v for k, v in r.items() if k != "mask_path"} for r in rows}, \
        masks, dead, len(rows)


def test_the_pipeline_on_dask_matches_the_local_runner(tmp_path, dask_cluster, demo_model_path):
    rng = np.random.default_rng(11)
    data = tmp_path / "data"
    os.makedirs(data / "images" / "sub")
    os.makedirs(data / "masks")
    sizes = [(64, 64), (48, 80), (72, 56), (40, 40), (64, 96), (56, 72), (80, 48), (33, 47),
             (64, 64), (50, 70), (60, 60)]
    for index, size in enumerate(sizes):
        image, mask = synthetic_scene(rng, *size)
        folder = data / "images" / ("sub" if index % 4 == 0 else "")
        Image.fromarray(image).save(folder / f"img{index:02d}.png")
        if index != 5:
            Image.fromarray(mask).save(data / "masks" / f"img{index:02d}.png")
    (data / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    local = _segment([], data, tmp_path / "local", demo_model_path)
    on_dask = _segment(["--runner", "DaskRunner", "--dask_client_address",
                        dask_cluster.scheduler_address], data, tmp_path / "dask",
                       demo_model_path)
    assert on_dask.settings.reshuffle and not local.settings.reshuffle  # --stage_split auto
    rows_local, masks_local, dead_local, count_local = _outputs(tmp_path / "local")
    rows_dask, masks_dask, dead_dask, count_dask = _outputs(tmp_path / "dask")
    assert count_local == count_dask == 11
    assert {"sub/img00", "sub/img04", "img05"} <= rows_local.keys()
    assert without_calibration(rows_dask)[0] == without_calibration(rows_local)[0]
    assert masks_dask.keys() == masks_local.keys()
    for name in masks_local:
        np.testing.assert_array_equal(masks_dask[name], masks_local[name])
    assert dead_dask == dead_local == [("corrupt", "decode", dead_local[0][2])]
    assert without_calibration(on_dask.summary)[0] == without_calibration(local.summary)[0]
    assert_close_calibration(on_dask.summary, local.summary)
    assert on_dask.summary["counts"]["accounted_for"]
