"""Reading runs' metrics back as one table (``segbeam.results``), across partitions written by
different segbeam versions."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from segbeam.results import read_metrics


def _write(folder, table):
    os.makedirs(folder / "metrics", exist_ok=True)
    pq.write_table(table, str(folder / "metrics" / "metrics-00000-of-00001.parquet"))


@pytest.fixture
def nights(tmp_path):
    """Three nights: the first written before ``mask_png_size`` existed; ``b`` segmented again
    on the third."""
    _write(tmp_path / "date=2026-01-01", pa.table({"key": ["a", "b"], "miou_raw": [0.5, 0.25]}))
    _write(tmp_path / "date=2026-01-02", pa.table({"key": ["c"], "miou_raw": [0.75],
                                                   "mask_png_size": [120]}))
    _write(tmp_path / "date=2026-01-03", pa.table({"key": ["b"], "miou_raw": [0.125],
                                                   "mask_png_size": [90]}))
    os.makedirs(tmp_path / "date=2026-01-04" / "metrics")  # a night that wrote no row
    (tmp_path / "notes").mkdir()
    return tmp_path


def _rows(table):
    return sorted(table.to_pylist(), key=lambda row: (row["date"], row["key"]))


def test_partitions_of_mixed_versions_read_as_one_table_with_every_column(nights):
    rows = _rows(read_metrics(str(nights)))
    # A column the oldest file lacks is null in its rows, not gone from every row.
    assert rows == [
        {"key": "a", "miou_raw": 0.5, "mask_png_size": None, "date": "2026-01-01"},
        {"key": "b", "miou_raw": 0.25, "mask_png_size": None, "date": "2026-01-01"},
        {"key": "c", "miou_raw": 0.75, "mask_png_size": 120, "date": "2026-01-02"},
        {"key": "b", "miou_raw": 0.125, "mask_png_size": 90, "date": "2026-01-03"}]
    latest = _rows(read_metrics(str(nights), ["key", "mask_png_size"], latest=True))
    assert latest == [{"key": "a", "mask_png_size": None, "date": "2026-01-01"},
                      {"key": "c", "mask_png_size": 120, "date": "2026-01-02"},
                      {"key": "b", "mask_png_size": 90, "date": "2026-01-03"}]


def test_a_run_folder_reads_without_dates_and_mistakes_say_what_to_pass(nights, tmp_path):
    run = read_metrics(str(nights / "date=2026-01-02"))
    assert run.to_pylist() == [{"key": "c", "miou_raw": 0.75, "mask_png_size": 120}]
    with pytest.raises(ValueError, match=r"no metrics file under .* has the column\(s\) "
                                         r"\['miou'\]"):
        read_metrics(str(nights), ["key", "miou"])
    with pytest.raises(ValueError, match="needs the 'key' column"):
        read_metrics(str(nights), ["miou_raw"], latest=True)
    with pytest.raises(ValueError, match="no metrics under .*notes: pass the --output"):
        read_metrics(str(nights / "notes"))


def test_a_real_nights_rows_read_back(tmp_path, demo_model_path):
    """The rows two nights of ``segbeam run`` wrote, through the same reader. An input gone
    from the source keeps its last row: the rows do not know tonight's inputs."""
    from tests.test_incremental import _run, _write_scenes

    data, out = tmp_path / "data", tmp_path / "nightly"
    _write_scenes(data, 3)
    _run(data, out, demo_model_path, "--skip_existing", "--run_date", "2026-11-20")
    os.remove(data / "images" / "s02.png")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(data / "images" / "s01.png")
    _run(data, out, demo_model_path, "--skip_existing", "--run_date", "2026-11-21")
    everything = read_metrics(str(out), ["key", "content_sha256"])
    assert sorted(zip(everything["date"].to_pylist(), everything["key"].to_pylist())) == [
        ("2026-11-20", "s00"), ("2026-11-20", "s01"), ("2026-11-20", "s02"),
        ("2026-11-21", "s01")]
    latest = read_metrics(str(out), ["key"], latest=True)
    assert sorted(zip(latest["key"].to_pylist(), latest["date"].to_pylist())) == [
        ("s00", "2026-11-20"), ("s01", "2026-11-21"), ("s02", "2026-11-20")]


@pytest.mark.slow
def test_the_standing_evaluation_is_the_one_a_single_run_over_the_same_inputs_gives(
        tmp_path, demo_model_path, capsys):
    """Nights that segment only what changed, summed from each input's latest row, evaluate
    as one run over the final inputs does; what the rows cannot vouch for is counted."""
    from segbeam.pipeline.standing import standing_summary
    from tests.conftest import assert_close_calibration, without_calibration
    from tests.test_incremental import _run, _write_scenes

    data, out = tmp_path / "data", tmp_path / "nightly"
    _write_scenes(data, 5)
    _run(data, out, demo_model_path, "--skip_existing", "--run_date", "2026-11-20")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(data / "images" / "s01.png")
    _write_scenes(tmp_path / "more", 6, seed=9)
    for folder in ("images", "masks"):
        os.replace(tmp_path / "more" / folder / "s05.png", data / folder / "s05.png")
    night = _run(data, out, demo_model_path, "--skip_existing", "--run_date", "2026-11-21")
    assert (night.summary["counts"]["segmented"], night.summary["counts"]["skipped"]) == (2, 4)
    whole = _run(data, tmp_path / "whole", demo_model_path)

    standing = standing_summary(str(out))
    assert standing["counts"]["rows"] == whole.summary["counts"]["outputs"] == 6
    assert without_calibration(standing["evaluation"])[0] == \
        without_calibration(whole.summary["evaluation"])[0]
    assert_close_calibration(standing, whole.summary)
    assert standing["standing"] | {"root": None} == {
        "root": None, "nights": 2, "latest_night": "2026-11-21",
        "nights_of_rows": ["2026-11-20", "2026-11-21"], "other_configuration": 0,
        "latest_night_inputs": 6, "rows_beyond_latest_inputs": 0}

    # An input gone from the source keeps its row: the count says so.
    os.remove(data / "images" / "s02.png")
    _run(data, out, demo_model_path, "--skip_existing", "--run_date", "2026-11-22")
    gone = standing_summary(str(out))["standing"]
    assert (gone["latest_night_inputs"], gone["rows_beyond_latest_inputs"]) == (5, 1)
    # The same as a report: `segbeam report ROOT --standing`.
    from segbeam.pipeline.cli import main

    assert main(["report", str(out), "--standing"]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["run"]["standing"] == gone
    assert report["evaluation"]["aggregate"]["miou"]["crf"] == \
        standing["evaluation"]["crf"]["miou"]
    assert report["warnings"][-1].startswith("1 row more than the inputs the latest night "
                                             "accounted for: inputs deleted since")
    markdown = (out / "report" / "report.md").read_text()
    assert "- standing rows: each of 6 inputs' latest row, from 2 of 3 finished nights " \
           "(latest 2026-11-22)" in markdown
    # what only the latest night says of itself is labelled so (it said "data: ...")
    assert "\n- latest night, data: `" in markdown
    assert "<th>latest night, started (UTC)</th>" in \
        (out / "report" / "report.html").read_text()
    assert main(["report", str(out)]) == 2
    assert "--standing for all of them" in capsys.readouterr().err
    # A night under another configuration: rows made under the earlier one are left out.
    _run(data, out, demo_model_path, "--skip_existing", "--run_date", "2026-11-23",
         "--crf_iterations", "3", "--input", f"{data}/images/s0[01].png")
    changed = standing_summary(str(out))
    assert (changed["counts"]["rows"], changed["standing"]["other_configuration"]) == (2, 4)
    with pytest.raises(ValueError, match="no finished dated run"):
        standing_summary(str(tmp_path / "whole"))
