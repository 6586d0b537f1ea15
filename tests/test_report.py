"""`segbeam report`: figures, renderings, comparison, and the HTML as Chromium shows it."""

import copy
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from segbeam.pipeline.cli import main
from segbeam.pipeline.demo import DEMO_CLASSES, write_demo_inputs
from segbeam.pipeline.report import build_report, compare_reports, load_run, normalised_confusion
from segbeam.pipeline.report_gallery import colourise
from segbeam.pipeline.report_render import render_html, render_json, render_markdown

SECTIONS_WITH_MASKS = ("run", "aggregate", "per-class", "boundaries", "calibration",
                       "confusion", "distributions", "gallery", "worst-boundary",
                       "without-masks")


def _run(output, images, masks, model, extra=()):
    args = ["run", "--input", images, "--output", str(output), "--model", model,
            "--num_classes", "3", "--class_names", ",".join(DEMO_CLASSES), "--input_size",
            "64", "--ignore_index", "-1", *extra]
    assert main(args + (["--masks", masks] if masks else [])) == 0
    return str(output)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_model_path):
    """A demo run with masks (plus an unmasked image and a corrupt file), and one without."""
    root = tmp_path_factory.mktemp("report_runs")
    images, masks = write_demo_inputs(str(root / "inputs"), count=10, seed=4)
    with_masks = _run(root / "with_masks", images, masks, demo_model_path,
                      ["--report", "--write_raw_masks"])
    without = _run(root / "without_masks", images, None, demo_model_path)
    return {"with_masks": with_masks, "without_masks": without}


def test_figures_agree_with_the_run_summary(runs):
    # `segbeam run --report` wrote the report at the end of the run
    with open(os.path.join(runs["with_masks"], "report", "report.json")) as handle:
        assert json.load(handle)["run"]["counts"]["outputs"] == 10
    run = load_run(runs["with_masks"])
    report = build_report(run, gallery_size=3)
    evaluation = report["evaluation"]
    summary = run.summary["evaluation"]
    for metric in ("miou", "pixel_accuracy", "mean_dice"):
        assert evaluation["aggregate"][metric]["raw"] == summary["raw"][metric]
        assert evaluation["aggregate"][metric]["delta"] == pytest.approx(
            summary["crf"][metric] - summary["raw"][metric])
    assert sum(r["pixel_share"] for r in evaluation["per_class"]) == pytest.approx(1.0)
    for row in evaluation["confusion_normalised"]:
        assert row[0] is None or sum(row) == pytest.approx(1.0)
    scored = [r for r in run.rows.to_pylist() if r["has_mask"]]
    assert sum(evaluation["per_image_miou"]["counts"]) == len(scored) == 9
    # Only the fields the report reads are loaded (every column took tens of KB a row), as
    # columns (a dict per row took about 2 KB).
    from segbeam.layout import REPORT_ROW_COLUMNS

    assert run.rows.column_names == list(REPORT_ROW_COLUMNS)
    worst = [e["miou_crf"] for e in evaluation["worst"]]
    assert worst == sorted(worst) and len(worst) == 3
    assert [e["miou_crf"] for e in evaluation["best"]] == sorted(
        r["miou_crf"] for r in scored)[::-1][:3]
    # No gallery: none at all (the best images' gallery held every scored image).
    none = build_report(run, gallery_size=0)
    assert [len(none["evaluation"][name]) for name in ("worst", "best", "worst_boundary")] + \
        [len(none["without_masks"]["examples"])] == [0, 0, 0, 0]
    assert min(r["miou_crf"] for r in scored) == worst[0]
    assert report["without_masks"]["count"] == 1
    assert report["run"]["counts"]["dead_letters"] == 1
    assert [d["stage"] for d in report["run"]["dead_letters_by_reason"]] == ["decode"]
    for metric in ("boundary_f1", "boundary_iou"):
        assert evaluation["aggregate"][metric]["crf"] == summary["crf"][metric]
    by_bf = [e["bf"] for e in evaluation["worst_boundary"]]
    assert by_bf == sorted(by_bf) and by_bf[0] == min(r["bf_crf"] for r in scored)
    assert evaluation["calibration"]["crf"]["ece"] == summary["crf"]["calibration"]["ece"]


def test_renderings_hold_every_section(runs):
    report = build_report(load_run(runs["with_masks"]), gallery_size=3)
    page = render_html(report)
    for section in SECTIONS_WITH_MASKS:
        assert f'id="{section}"' in page, section
    # worst and best 3 by mIoU, worst 3 by BF: image | ground truth | prediction | CRF; the
    # unmasked one: 3 panels
    assert all(entry["raw_mask_path"] for entry in report["evaluation"]["worst"])
    assert page.count("data:image/jpeg;base64,") == 9 * 4 + 3
    assert page.count("<figcaption>CRF</figcaption>") == 10
    assert page.count('<svg class="chart"') >= 2 + 5  # two reliability diagrams among them
    assert "ECE" in page and "## Calibration" in render_markdown(report)
    assert "http://" not in page and "https://" not in page  # opens offline
    markdown = render_markdown(report)
    assert "| mIoU |" in markdown and "| disc |" in markdown
    assert "\n- data: `" in markdown and "<th>started (UTC)</th>" in page
    assert json.loads(render_json(report))["evaluation"]["per_class"][1]["class"] == "disc"


def test_a_run_without_masks_gets_a_report_without_evaluation(runs):
    report = build_report(load_run(runs["without_masks"]))
    assert report["evaluation"] is None and report["without_masks"]["count"] == 10
    page = render_html(report)
    assert 'id="no-evaluation"' in page and 'id="without-masks"' in page
    assert 'id="confusion"' not in page
    assert "predictions only" in render_markdown(report)


def test_comparison_flags_only_drops_beyond_the_threshold(runs):
    current = build_report(load_run(runs["with_masks"]))
    same = compare_reports(current, current, 0.01)
    assert same["regressions"] == [] and all(r["delta"] == 0 for r in same["per_class"])
    better = copy.deepcopy(current)
    better["evaluation"]["per_class"][2]["iou_crf"] += 0.05  # the earlier run did 5 points better
    better["evaluation"]["per_class"][1]["iou_crf"] += 0.005  # within the threshold
    result = compare_reports(current, better, 0.01)
    assert [r["what"] for r in result["regressions"]] == ["IoU of box"]
    assert result["per_class"][2]["delta"] == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="different classes"):
        other = copy.deepcopy(current)
        other["class_names"] = ["a", "b", "c"]
        compare_reports(current, other, 0.01)


def test_a_comparison_says_what_makes_it_other_than_like_for_like(runs):
    """Deltas between runs that scored other pixels, other images or another stage read as
    regressions or gains of the model; the comparison names each difference."""
    current = build_report(load_run(runs["with_masks"]))
    assert compare_reports(current, current, 0.01)["caveats"] == []
    other = copy.deepcopy(current)
    other["evaluation"]["confusion_variant"] = "raw"
    other["run"]["masks"] = "elsewhere/*.png"
    other["run"]["convention"]["ignore_index"] = 7
    other["evaluation"]["labelled_pixels"] -= 100
    caveats = compare_reports(current, other, 0.01)["caveats"]
    assert caveats[0] == "the current figures are after the CRF, the previous without the CRF"
    assert caveats[1].startswith("the masks differ: ") and "elsewhere/*.png before" in caveats[1]
    assert caveats[2].startswith("--ignore_index differs (") and ", 7 before)" in caveats[2]
    assert "pixels are scored now" in caveats[3] and len(caveats) == 4
    report = dict(current, comparison=compare_reports(current, other, 0.01))
    assert f"- {caveats[1]}" in render_markdown(report)
    assert "Not like for like:" in render_html(report)


@pytest.mark.parametrize("flags, message", [
    (["--fail_on_regression"], "--fail_on_regression needs --compare PREVIOUS_RUN"),
    (["--regression_threshold", "-1"], "--regression_threshold must be a number of points, 0 "
                                       "or more; received -1.0"),
    (["--regression_threshold", "nan"], "--regression_threshold must be a number of points"),
    (["--gallery_size", "-3"], "--gallery_size must be 0 or more; received -3"),
    (["--regression_threshold", "2"], "--regression_threshold needs --compare PREVIOUS_RUN")])
def test_report_flags_out_of_range_are_errors(runs, tmp_path, capsys, flags, message):
    """A negative threshold flagged gains as regressions; a negative gallery size sliced the
    gallery from the wrong end."""
    assert main(["report", runs["with_masks"], "--output", str(tmp_path / "r"), *flags]) == 2
    assert f"segbeam report: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_fail_on_regression_exits_non_zero_against_a_better_run(runs, tmp_path, capsys):
    previous = tmp_path / "previous"
    shutil.copytree(runs["with_masks"], previous)
    with open(previous / "summary.json") as handle:
        summary = json.load(handle)
    summary["evaluation"]["crf"]["miou"] += 0.03
    with open(previous / "summary.json", "w") as handle:
        json.dump(summary, handle)
    out = tmp_path / "report"
    assert main(["report", runs["with_masks"], "--compare", str(previous), "--output",
                 str(out)]) == 0
    assert main(["report", runs["with_masks"], "--compare", str(previous), "--output",
                 str(out), "--fail_on_regression"]) == 4
    assert "regression: mIoU -3.00 points" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"report.html", "report.md", "report.json"}
    markdown = (out / "report.md").read_text()
    assert [line for line in markdown.splitlines() if "**regression**" in line] == [
        line for line in markdown.splitlines() if line.startswith("| mIoU |") and "-3.00" in line]
    assert 'class="regression"' in (out / "report.html").read_text()
    assert main(["report", runs["with_masks"], "--compare", runs["with_masks"], "--output",
                 str(out), "--fail_on_regression"]) == 0
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_fail_on_regression_against_a_run_without_masks_is_an_error(runs, tmp_path, capsys):
    """A run that scored no masks has no figures: the regression gate passed (exit 0) and the
    terminal said nothing of it."""
    out = str(tmp_path / "report")
    assert main(["report", runs["without_masks"], "--compare", runs["with_masks"],
                 "--output", out]) == 0
    assert "not compared: the current run scored no masks" in capsys.readouterr().out
    assert "Not compared: the current run scored no masks" in (
        tmp_path / "report" / "report.md").read_text()
    assert main(["report", runs["with_masks"], "--compare", runs["without_masks"],
                 "--output", out, "--fail_on_regression"]) == 2
    assert ("segbeam report: error: --fail_on_regression cannot check for regressions: the "
            "previous run scored no masks") in capsys.readouterr().err
    assert main(["report", runs["without_masks"], "--compare", runs["without_masks"],
                 "--output", out, "--fail_on_regression"]) == 2
    assert "the current and previous runs scored no masks" in capsys.readouterr().err


def test_a_report_output_that_is_a_file_is_a_usage_error(runs, tmp_path, capsys):
    """It was an internal error (FileExistsError) with a traceback file."""
    taken = tmp_path / "report.html"
    taken.write_text("mine")
    assert main(["report", runs["with_masks"], "--output", str(taken)]) == 2
    assert f"segbeam report: error: --output {taken} is a file; pass a folder" in \
        capsys.readouterr().err
    assert taken.read_text() == "mine"


def test_colourise_uses_class_colours_and_dims_ignored_pixels():
    colours = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    labels = np.array([[0, 1], [1, 7]], np.uint8)
    image = np.full((2, 2, 3), 100, np.uint8)
    plain = colourise(labels, colours, None, valid=2)
    assert plain[0, 1].tolist() == [255, 0, 0] and plain[1, 1].tolist() == [0, 0, 0]
    blended = colourise(labels, colours, image, valid=2)
    assert blended[0, 1].tolist() == [177, 50, 50] and blended[1, 1].tolist() == [30, 30, 30]


def test_normalised_confusion_leaves_absent_classes_null():
    assert normalised_confusion([[3, 1], [0, 0]]) == [[0.75, 0.25], [None, None]]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed; .ci/run installs "
                    "Debian's chromium package where it runs as root with apt-get")
@pytest.mark.parametrize("which", ["with_masks", "without_masks"])
def test_chromium_renders_the_report(runs, tmp_path, which):
    out = tmp_path / "report"
    assert main(["report", runs[which], "--output", str(out)]) == 0
    page = f"file://{out / 'report.html'}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--allow-file-access-from-files", "--user-data-dir=" + str(tmp_path / "profile")]
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), *flags, f"--screenshot={shot}", "--window-size=1280,2400",
                    page], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2400, 1280)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # not blank: text, charts
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    expected = SECTIONS_WITH_MASKS if which == "with_masks" else ("run", "no-evaluation",
                                                                  "without-masks")
    for section in expected:
        assert f'id="{section}"' in dom, section
    images = dom.count("<img ")
    assert images >= (3 if which == "without_masks" else 6)


def test_relative_paths_of_a_run_resolve_against_its_working_directory():
    from segbeam.pipeline.report import resolve

    assert resolve("../data/a.png", "/work/main") == "/work/data/a.png"
    assert resolve("/abs/a.png", "/work/main") == "/abs/a.png"
    assert resolve("gs://bucket/a.png", "/work/main") == "gs://bucket/a.png"
    assert resolve("a.png", None) == "a.png"


def test_reports_read_the_model_and_inputs_from_old_and_new_manifests():
    """Manifests written before the configuration objects hold one flat settings dict; newer
    ones nest the model source. A report over either names the model and the inputs."""
    from segbeam.layout import RunOutputs

    flat = {"settings": {"model": "/m/unet.keras", "input": "/d/*.png", "masks": "/d/masks"}}
    nested = {"settings": {"model": {"spec": "/m/unet.keras", "weights": None},
                           "input": "/d/*.png", "masks": "/d/masks"}}
    for manifest in (flat, nested):
        run = RunOutputs("/out", {}, manifest, [], [])
        assert (run.setting("model"), run.setting("input"), run.setting("masks")) == (
            "/m/unet.keras", "/d/*.png", "/d/masks")
    assert RunOutputs("/out", {}, {}, [], []).setting("model") is None


def test_a_folder_of_dated_runs_names_the_latest_and_one_being_written_says_so(tmp_path):
    """`segbeam report OUT` on a --run_date run's --output said only that OUT held no
    summary.json, though the runs lay one level down; so it did of a folder a run was
    writing, as if it held no run."""
    for date in ("2026-11-20", "2026-11-21"):
        (tmp_path / f"date={date}").mkdir()
        (tmp_path / f"date={date}" / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds 2 dated runs \(--run_date\), not one run: "
                                         r"pass one of them, e.g. the latest, "
                                         r".*date=2026-11-21 \(or, to `segbeam report`, "
                                         r"--standing for all of them as they stand\)$"):
        load_run(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no summary.json: pass the --output folder"):
        load_run(str(tmp_path / "empty"))
    # a path that does not exist was said to hold no summary.json
    with pytest.raises(ValueError, match="nothing does not exist: pass the --output folder"):
        load_run(str(tmp_path / "date=2026-11-20" / "nothing"))
    # a folder a run is writing: its summary comes at the end
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "_RUNNING").write_text("{}")
    with pytest.raises(ValueError, match="busy is being written by a run that has not ended"):
        load_run(str(tmp_path / "busy"))


def test_dark_16_bit_images_are_warned_about_from_the_summary_and_from_older_runs_counters():
    """The count moved from a Beam counter (which missed reused rows) into the summary; a
    report on a run made before keeps its warning, without the column it cannot name."""
    from segbeam.decode import dark_high_depth_warning
    from segbeam.pipeline.report import run_warnings

    def warnings(counts: dict, counters: dict) -> list:
        return run_warnings({"counts": {"outputs": 2, **counts}},
                            {"beam_counters": counters}, None, {}, None)

    assert warnings({"dark_16_bit_images": 1}, {}) == [
        f"{dark_high_depth_warning(1)}; their metrics rows' high_depth_peak column names them"]
    assert warnings({}, {"dark_16_bit_images": 2}) == [dark_high_depth_warning(2)]
    assert warnings({"dark_16_bit_images": 0}, {"dark_16_bit_images": 2}) == []
    assert warnings({}, {}) == []


def test_a_night_that_skipped_inputs_says_its_figures_are_not_the_datasets():
    """A --run_date night evaluates what it segmented; inputs skipped as unchanged keep their
    rows in earlier partitions. Its figures were printed as if they were the dataset's, and a
    night whose new images had no masks was told that its masks did not pair."""
    from segbeam.pipeline.report import run_warnings

    def warnings(**counts) -> list:
        return run_warnings({"counts": counts}, {}, "/data/masks", {}, None)

    assert warnings(outputs=3, images_with_mask=3, skipped=0) == []
    assert warnings(outputs=1, images_with_mask=1, skipped=1) == [
        "this run's figures cover only the 1 input it segmented or kept: 1 unchanged input was "
        "skipped, and its rows and figures stand in earlier partitions, not in these figures "
        "(segbeam report OUTPUT --standing evaluates every input's latest row)"]
    unpaired, scope = warnings(outputs=2, images_with_mask=0, skipped=7)
    assert unpaired.startswith("no input this run segmented found its mask, so nothing new "
                               "was scored; masks pair with images by file stem")
    assert scope.startswith("this run's figures cover only the 2 inputs it segmented or kept: "
                            "7 unchanged inputs were skipped, and their rows")
    assert warnings(outputs=2, images_with_mask=0, skipped=0)[0].startswith(
        "no input found its mask, so nothing was scored")


def test_a_run_folder_missing_rows_or_dead_letters_is_said_to_be_incomplete(runs, tmp_path,
                                                                            capsys):
    """A run folder copied in part (or with a metrics shard removed) gave a report whose
    per-image figures and gallery covered what was left, without a word."""
    import pyarrow.parquet as pq

    whole = runs["with_masks"]
    assert main(["report", whole, "--output", str(tmp_path / "whole")]) == 0
    assert "warning" not in capsys.readouterr().err
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    (shard,) = (cut / "metrics").glob("*.parquet")
    pq.write_table(pq.read_table(shard).slice(0, 7), shard)
    for letters in (cut / "dead_letters").glob("*.jsonl"):
        letters.write_text("")
    assert main(["report", str(cut), "--output", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    expected = ["the run's summary counts 10 metrics rows, but its folder holds 7",
                "the run's summary counts 1 dead letter, but its folder holds 0"]
    assert all(f"segbeam report: warning: {line}" in err for line in expected)
    warnings = json.loads((tmp_path / "out" / "report.json").read_text())["warnings"]
    assert all(any(w.startswith(line) for w in warnings) for line in expected)
