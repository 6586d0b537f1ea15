"""A hostile corpus, generated: keys that collide, masks that could pair with the wrong image,
files Beam's matching used to drop, outputs inside the input glob, killed reruns. Every input
ends as an output or a dead letter with its reason."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from segbeam.dataset import pair_by_stem
from tests.conftest import assert_dead_letters_counted, write_random_pairs
from segbeam.keys import sanitise_key
from segbeam.matching import could_match_outputs, match_files, pattern_regex


def _image(path, value=0, size=16):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.full((size, size, 3), value, np.uint8)
    data[::2] = 200
    Image.fromarray(data).save(path, format="PNG" if path.endswith(".png") else "JPEG")


def _mask(path, size=16):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.ones((size, size), np.uint8)).save(path, format="PNG")


def test_a_name_that_looks_hashed_cannot_take_a_sanitised_key():
    hashed = sanitise_key("col a")
    assert hashed.startswith("col_a-")
    assert sanitise_key(hashed) != hashed  # the file literally named like the hashed key
    assert sanitise_key("col_a-1234567") == "col_a-1234567"  # 7 digits: not a hash suffix
    assert sanitise_key("x-ABCDEF12") == "x-ABCDEF12"  # upper case: not one either


@pytest.mark.parametrize("raw", ["-rf", "--help", "a/-b", "-"])
def test_no_key_or_key_component_starts_with_a_dash(raw):
    key = sanitise_key(raw)
    assert not any(part.startswith("-") for part in key.split("/")), key


def test_glob_syntax_is_beams_but_a_backslash_is_an_ordinary_character():
    assert pattern_regex("d/*.png").match("d/back\\slash.png")
    assert not pattern_regex("d/*.png").match("d/sub/a.png")
    assert pattern_regex("d/**").match("d/sub/a.png")
    assert pattern_regex("d/[ab]?.png").match("d/bx.png")
    assert not pattern_regex("d/[!ab]?.png").match("d/bx.png")


def test_matching_keeps_what_beams_matching_dropped(tmp_path):
    from apache_beam.io.filesystems import FileSystems

    folder = tmp_path / "d"
    _image(str(folder / "a.png"))
    _image(str(folder / "back\\slash.png"))
    os.symlink("missing.png", folder / "dangling.png")
    os.symlink("loop.png", folder / "loop.png")
    (folder / "sub").mkdir()
    beam_sees = {os.path.basename(m.path)
                 for m in FileSystems.match([f"{folder}/*"])[0].metadata_list}
    ours = {os.path.basename(path) for path in match_files(f"{folder}/*")}
    assert ours == {"a.png", "back\\slash.png", "dangling.png", "loop.png"}
    assert beam_sees < ours  # the defect this module exists for
    _image(str(folder / "masks" / "k.png"))  # as if an earlier run wrote under d/
    (folder / "summary.json").write_text("{}")
    assert "masks/k.png" not in {os.path.relpath(p, folder)
                                 for p in match_files(f"{folder}/**", exclude=str(folder))}
    assert "summary.json" not in {os.path.basename(p) for p in match_files(
        f"{folder}/*", exclude=str(folder))}
    assert len(list(match_files(f"{folder}/**", exclude=str(folder)))) == 4


def test_files_behind_a_link_to_a_folder_are_matched_once_and_a_loop_ends(tmp_path):
    """Beam's listing does not follow links to folders, so images on another disk linked into
    the data folder were silently not inputs."""
    from apache_beam.io.filesystems import FileSystems

    elsewhere = tmp_path / "elsewhere"
    _image(str(elsewhere / "far.png"))
    data = tmp_path / "data"
    _image(str(data / "near.png"))
    os.symlink(elsewhere, data / "camera1")
    os.symlink(data, data / "loop")  # a link back up: walked once, not forever
    found = sorted(os.path.relpath(p, data) for p in match_files(f"{data}/**"))
    assert found == ["camera1/far.png", "near.png"]
    beam_sees = sorted(os.path.relpath(m.path, data)
                       for m in FileSystems.match([f"{data}/**"])[0].metadata_list)
    assert "camera1/far.png" not in beam_sees  # the defect


def test_outputs_inside_the_input_glob_are_recognised(tmp_path):
    assert could_match_outputs(f"{tmp_path}/**", f"{tmp_path}/out")
    assert could_match_outputs(f"{tmp_path}/*/*/*.png", f"{tmp_path}/out")
    assert not could_match_outputs(f"{tmp_path}/*.png", f"{tmp_path}/out")
    assert not could_match_outputs(f"{tmp_path}/in/**", f"{tmp_path}/out")


def test_pairing_prefers_the_relative_path_and_refuses_to_guess():
    base, masks = "/d/", "/m/"
    mirrored = pair_by_stem("a", ["/d/s1/a.png", "/d/s2/a.png"], ["/m/s1/a.png", "/m/s2/a.png"],
                            base, masks)
    assert [(r.key, r.mask_source) for r in mirrored.refs] == [("s1/a", "/m/s1/a.png"),
                                                              ("s2/a", "/m/s2/a.png")]
    flat = pair_by_stem("a", ["/d/s1/a.png", "/d/s2/a.png"], ["/m/a.png"], base, masks)
    assert flat.refs == [] and [d.key for d in flat.dead] == ["s1/a", "s2/a"]
    assert "share the stem 'a'" in flat.dead[0].reason
    by_stem = pair_by_stem("a", ["/d/s1/a.png"], ["/m/a.png"], base, masks)
    assert [(r.key, r.mask_source) for r in by_stem.refs] == [("s1/a", "/m/a.png")]
    extra = pair_by_stem("b", ["/d/b.jpg"], ["/m/b.png", "/m/old/b.png"], base, masks)
    assert [r.mask_source for r in extra.refs] == ["/m/b.png"]
    assert extra.unclaimed_masks == ["/m/old/b.png"]
    twins = pair_by_stem("dup", ["/d/dup.jpg", "/d/dup.png"], ["/m/dup.png"], base, masks)
    assert twins.refs == [] and len(twins.dead) == 2 and twins.unclaimed_masks == []
    orphan = pair_by_stem("o", [], ["/m/o.png"], base, masks)
    assert orphan.unclaimed_masks == ["/m/o.png"]


def test_a_file_both_globs_match_is_a_mask_or_an_image_never_both():
    # --input 'data/**' --masks data/masks: the masks' folder lies inside the input glob's,
    # so its files are masks, not inputs (they made every stem ambiguous: all dead letters).
    nested = pair_by_stem("a", ["/data/images/a.png", "/data/masks/a.png"],
                          ["/data/masks/a.png"], "/data/", "/data/masks/")
    assert [(r.key, r.mask_source) for r in nested.refs] == [("images/a", "/data/masks/a.png")]
    assert nested.dead == [] and nested.unclaimed_masks == []
    # --input 'data/*.jpg' --masks data: the images are no masks (an image was its own).
    mixed = pair_by_stem("a", ["/data/a.jpg"], ["/data/a.jpg", "/data/a.png"], "/data/",
                         "/data/")
    assert [(r.key, r.mask_source) for r in mixed.refs] == [("a", "/data/a.png")]
    assert mixed.dead == [] and mixed.unclaimed_masks == []


def test_run_over_a_tree_with_its_masks_inside_counts_only_the_images(tmp_path):
    from segbeam.pipeline.run import run

    write_random_pairs(tmp_path, [np.full((8, 8), k, np.uint8) for k in range(3)])
    outcome = run(["--input", f"{tmp_path}/**", "--masks", str(tmp_path / "masks"),
                   "--model", "tiny_fcn", "--num_classes", "3", "--no-crf",
                   "--output", str(tmp_path / "out")])
    counts = outcome.summary["counts"]
    assert (counts["inputs"], counts["segmented"], counts["images_with_mask"]) == (3, 3, 3)
    assert counts["dead_letters"] == counts["masks_without_image"] == 0


def test_files_read_as_masks_and_jpeg_masks_are_still_accounted_for(tmp_path):
    """What the tree rule takes out of the inputs is a mask, so a mask no image takes is
    counted and named; an image whose mask is a JPEG is a dead letter saying why."""
    import json

    from segbeam.pipeline.run import run

    write_random_pairs(tmp_path, [np.full((8, 8), k, np.uint8) for k in range(3)])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "orphan.png")
    Image.open(tmp_path / "masks" / "i2.png").save(tmp_path / "masks" / "i2.jpg")
    (tmp_path / "masks" / "i2.png").unlink()
    outcome = run(["--input", f"{tmp_path}/**", "--masks", str(tmp_path / "masks"),
                   "--model", "tiny_fcn", "--num_classes", "3", "--no-crf",
                   "--output", str(tmp_path / "out")])
    counts = outcome.summary["counts"]
    assert (counts["inputs"], counts["segmented"], counts["dead_letters"]) == (3, 2, 1)
    assert counts["accounted_for"] and counts["masks_without_image"] == 1
    assert outcome.summary["masks_without_image"] == [str(tmp_path / "masks" / "orphan.png")]
    letters = [json.loads(line) for path in (tmp_path / "out" / "dead_letters").glob("*.jsonl")
               for line in path.read_text().splitlines() if line]
    assert [(d["key"], d["stage"]) for d in letters] == [("images/i2", "decode")]
    assert "is a JPEG image: its lossy compression" in letters[0]["reason"]


def test_masks_named_by_a_suffix_beside_their_images_are_no_inputs(tmp_path):
    from segbeam.dataset import Naming, find_pairs
    from segbeam.pipeline.run import run

    rng = np.random.default_rng(3)
    for index in range(2):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / f"s{index}.png")
        Image.fromarray(np.full((8, 8), index, np.uint8)).save(tmp_path / f"s{index}_mask.png")
    refs, dead, unclaimed = find_pairs(f"{tmp_path}/*", str(tmp_path),
                                       naming=Naming(mask_suffix="_mask"))
    assert [(r.key, os.path.basename(r.mask_source)) for r in refs] == [
        ("s0", "s0_mask.png"), ("s1", "s1_mask.png")] and dead == unclaimed == []
    outcome = run(["--input", str(tmp_path), "--masks", str(tmp_path), "--mask_suffix", "_mask",
                   "--model", "tiny_fcn", "--num_classes", "3", "--no-crf",
                   "--output", str(tmp_path / "out")])
    counts = outcome.summary["counts"]
    assert (counts["inputs"], counts["images_with_mask"], counts["dead_letters"]) == (2, 2, 0)


def test_shared_keys_across_stems_are_all_dead_letters():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from segbeam.records import ImageRef
    from segbeam.transforms.read import UniqueKeys

    refs = [ImageRef("k", "shard-1#x.png"), ImageRef("k", "shard-2#x.png"), ImageRef("j", "y")]
    with TestPipeline() as p:
        unique, dead = p | beam.Create(refs) | UniqueKeys()
        assert_that(unique | beam.Map(lambda r: r.key), equal_to(["j"]), label="unique")
        assert_that(dead | beam.Map(lambda d: (d.source, "2 inputs share the key 'k'" in
                                               d.reason and "also shard-" in d.reason)),
                    equal_to([("shard-1#x.png", True), ("shard-2#x.png", True)]), label="dead")


@pytest.fixture
def hostile_tree(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    hashed = sanitise_key("col a")
    for name in ("col a.png", f"{hashed}.png", "-rf.png", "s1/a.png", "s2/a.png", "s3/b.png",
                 "dup.jpg", "dup.png", "back\\slash.png", "c.png"):
        _image(str(images / name), value=len(name))
    os.symlink("missing.png", images / "dangling.png")
    os.symlink("loop.png", images / "loop.png")
    for name in ("a.png", "s3/b.png", "b.png", "dup.png", "orphan.png"):
        _mask(str(masks / name))
    os.symlink("c.png", masks / "c.png")  # a mask that is a link loop
    frames = [Image.new("RGB", (16, 16), (value, 0, 0)) for value in (10, 120, 240)]
    frames[0].save(images / "anim.gif", save_all=True, append_images=frames[1:])
    return tmp_path, hashed


def _run(root, output, *extra):
    from segbeam.pipeline.run import run

    return run(["--input", f"{root}/images/**", "--masks", str(root / "masks"),
                "--model", "tiny_fcn", "--num_classes", "3", "--input_size", "16", "--no-crf",
                "--output", str(output), *extra])


def _dead_letters(output):
    return {d["source"].split("/images/")[-1]: d
            for path in (output / "dead_letters").iterdir()
            for d in map(json.loads, path.read_text().splitlines())}


def test_a_hostile_corpus_is_accounted_for_input_by_input(hostile_tree):
    root, hashed = hostile_tree
    outcome = _run(root, root / "out")
    counts = outcome.summary["counts"]
    assert counts["accounted_for"]
    assert (counts["inputs"], counts["segmented"], counts["dead_letters"]) == (13, 6, 7)
    assert_dead_letters_counted(outcome)
    masks = sorted(str(p.relative_to(root / "out" / "masks"))
                   for p in (root / "out" / "masks").rglob("*.png"))
    # "col a" keeps its hashed key; the file named like that hash gets one of its own
    assert f"{hashed}.png" in masks and f"{sanitise_key(hashed)}.png" in masks
    assert len(masks) == 6
    assert not any(part.startswith("-") for m in masks for part in m.split("/"))
    dead = _dead_letters(root / "out")
    assert set(dead) == {"s1/a.png", "s2/a.png", "dup.jpg", "dup.png", "dangling.png",
                         "loop.png", "c.png"}
    assert "share the stem 'a'" in dead["s1/a.png"]["reason"]
    assert "2 files share the key 'dup'" in dead["dup.png"]["reason"]
    assert "does not exist" in dead["dangling.png"]["reason"]
    assert "loops" in dead["loop.png"]["reason"] and "loops" in dead["c.png"]["reason"]
    assert counts["masks_without_image"] == 2
    assert [os.path.basename(p) for p in outcome.summary["masks_without_image"]] == \
        ["b.png", "orphan.png"]
    assert counts["images_with_mask"] == 1  # s3/b, by its relative path
    import pyarrow.parquet as pq

    rows = pq.read_table(str(root / "out" / "metrics")).to_pylist()
    assert {row["key"]: row["image_frames"] for row in rows}["anim"] == 3  # the first is used
    assert sum(row["image_frames"] == 1 for row in rows) == 5
    assert counts["multi_frame_images"] == 1


def test_outputs_inside_the_input_glob_are_not_read_back(hostile_tree, caplog):
    root, _ = hostile_tree
    first = _run(root, root / "images" / "out")
    with caplog.at_level("WARNING"):
        second = _run(root, root / "images" / "out")
    assert first.summary["counts"]["inputs"] == second.summary["counts"]["inputs"] == 13
    assert any("lies inside the input glob" in r.getMessage() for r in caplog.records)


def test_a_rerun_invalidates_the_earlier_run_first_and_marks_completion_last(hostile_tree):
    from segbeam.layout import begin_run

    root, _ = hostile_tree
    out = root / "out"
    _run(root, out)
    assert (out / "_SUCCESS").exists() and (out / "summary.json").exists()
    leftover = out / "metrics" / "beam-temp-metrics-0123"
    leftover.mkdir()
    (leftover / "part").write_bytes(b"x")
    (out / "beam-temp-summary.json-4567").mkdir()
    removed = begin_run(str(out))  # what a rerun does first; a kill after it leaves no marker
    assert {os.path.basename(p.rstrip("/")) for p in removed} == {
        "_SUCCESS", "summary.json", "summary.parquet", "manifest.json",
        "beam-temp-metrics-0123", "beam-temp-summary.json-4567"}
    assert not (out / "_SUCCESS").exists() and not leftover.exists()
    assert (out / "masks").exists()  # masks stay: --skip_existing reuses them
    _run(root, out)
    assert (out / "_SUCCESS").exists() and (out / "manifest.json").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".", "beam-temp"))) == []


def test_an_output_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    from segbeam.pipeline.cli import main

    _image(str(tmp_path / "images" / "a.png"))
    (tmp_path / "taken").write_text("a file")
    for output in (tmp_path / "taken", tmp_path / "taken" / "below"):
        code = main(["run", "--input", f"{tmp_path}/images/*.png", "--model", "tiny_fcn",
                     "--num_classes", "3", "--input_size", "16", "--no-crf",
                     "--output", str(output)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "--output" in err[0], err


def test_an_unexpected_failure_is_one_line_and_exit_code_5(tmp_path, capsys, monkeypatch):
    from segbeam.pipeline import cli, run

    def broken(*_args, **_kwargs):
        raise RuntimeError("something segbeam did not expect\nsecond line")

    monkeypatch.setattr(run, "execute", broken)
    _image(str(tmp_path / "images" / "a.png"))
    code = cli.main(["run", "--input", f"{tmp_path}/images/*.png", "--output",
                     str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 5 and len(err) == 1
    assert "internal error: RuntimeError: something segbeam did not expect" in err[0]
    saved = err[0].split("traceback is in ")[1].split(";")[0]
    assert "Traceback" in open(saved).read()
    os.remove(saved)


def test_keys_differing_in_case_alone_are_shared_where_the_output_ignores_case():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from segbeam.records import ImageRef
    from segbeam.transforms.read import UniqueKeys

    refs = [ImageRef("a", "x/a.png"), ImageRef("A", "x/A.png"), ImageRef("b", "x/b.png")]
    with TestPipeline() as p:
        unique, dead = p | beam.Create(refs) | UniqueKeys(fold_case=True)
        assert_that(unique | beam.Map(lambda r: r.key), equal_to(["b"]), label="unique")
        assert_that(dead | beam.Map(lambda d: (d.source, "letter case aside" in d.reason)),
                    equal_to([("x/a.png", True), ("x/A.png", True)]), label="dead")
    with TestPipeline() as p:  # a filesystem that tells case apart: three outputs
        unique, dead = p | beam.Create(refs) | "Cased" >> UniqueKeys()
        assert_that(unique | beam.Map(lambda r: r.key), equal_to(["a", "A", "b"]))


def test_the_case_probe_reads_the_output_folders_filesystem(tmp_path, monkeypatch):
    from segbeam import layout

    assert not layout.ignores_case(str(tmp_path))  # Linux filesystems tell case apart
    assert not layout.ignores_case(str(tmp_path / "missing"))
    assert not layout.ignores_case("gs://bucket/out")
    real_exists = os.path.exists

    def exists_ignoring_case(path):  # as on macOS: a name matches whatever its case
        folder, name = os.path.split(path)
        return real_exists(path) or name.casefold() in {
            n.casefold() for n in os.listdir(folder or ".")}

    monkeypatch.setattr(layout.os.path, "exists", exists_ignoring_case)
    assert layout.ignores_case(str(tmp_path))
    assert os.listdir(tmp_path) == []  # the probe is gone


def test_a_run_into_a_folder_that_ignores_case_dead_letters_keys_differing_in_case(
        tmp_path, monkeypatch):
    """On macOS's or Windows' filesystem, masks/a.png and masks/A.png are one file: one
    input's mask overwrote the other's, and both rows named it."""
    from segbeam.pipeline import run as run_module

    for name in ("a", "A", "b"):
        _image(str(tmp_path / "images" / f"{name}.png"), value=ord(name))
    monkeypatch.setattr(run_module, "ignores_case", lambda folder: True)
    outcome = run_module.run(["--input", str(tmp_path / "images"), "--model", "tiny_fcn",
                              "--num_classes", "3", "--no-crf", "--output",
                              str(tmp_path / "out"), "--quiet"])
    counts = outcome.summary["counts"]
    assert (counts["inputs"], counts["outputs"], counts["dead_letters"]) == (3, 1, 2)
    letters = [json.loads(line) for path in (tmp_path / "out" / "dead_letters").rglob("*.jsonl")
               for line in path.read_text().splitlines() if line]
    assert sorted(d["key"] for d in letters) == ["A", "a"]
    assert all("letter case aside" in d["reason"] for d in letters)
    assert os.listdir(tmp_path / "out" / "masks") == ["b.png"]


def test_sixteen_bit_images_that_come_out_dark_are_counted_named_and_warned_about(tmp_path,
                                                                                   capsys):
    """A 16-bit PNG holding 12-bit data (or 8-bit data) is scaled from 0..65535 to at most 15
    of 255: the model saw near-black images, and the run said nothing. Now the run counts
    them, even in rows it reuses (a Beam counter saw only the images decoded), and each
    metrics row keeps its image's peak, so that the warning can say where to find them."""
    import pyarrow.parquet as pq

    from tests.conftest import colour16_bytes
    from segbeam.decode import dark_high_depth_warning
    from segbeam.pipeline.cli import main

    images = tmp_path / "images"
    images.mkdir()
    ramp = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)
    for name, values in (("twelve_bit", ramp * 16), ("eight_bit_in_16", ramp % 256),
                         ("full_range", ramp * 257)):
        Image.fromarray(values).save(images / f"{name}.png")
    (images / "twelve_bit_colour.png").write_bytes(  # Pillow reads it to 8 bits, dark too
        colour16_bytes(np.repeat(ramp[:, :, None] * 16, 3, axis=2)))
    _image(str(images / "rgb.png"))
    run = ["run", "--input", str(images), "--model", "tiny_fcn", "--num_classes", "3",
           "--no-crf", "--quiet", "--output", str(tmp_path / "out")]
    warning = (f"WARNING: {dark_high_depth_warning(3)}; their metrics rows' high_depth_peak "
               f"column names them")
    assert main(run) == 0
    assert warning in capsys.readouterr().out
    rows = pq.read_table(str(tmp_path / "out" / "metrics")).to_pylist()
    assert {row["key"]: row["high_depth_peak"] for row in rows} == {
        "twelve_bit": 4080, "eight_bit_in_16": 255, "full_range": 65535,
        "twelve_bit_colour": 15 * 257, "rgb": 0}
    assert main(run + ["--skip_existing"]) == 0
    assert warning in capsys.readouterr().out
    counts = json.loads((tmp_path / "out" / "summary.json").read_text())["counts"]
    assert (counts["reused"], counts["dark_16_bit_images"]) == (5, 3)
