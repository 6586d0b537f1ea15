"""A list file as ``--input``: one image path per line, each line ending as an output or as a
dead letter that names its list and line."""

import json
import logging

import numpy as np
import pytest

from segbeam.file_lists import ListedLine, id_suffix, missing_reason, read_lines, \
    resolve
from segbeam.pipeline.cli import main
from tests.conftest import assert_dead_letters_counted, jpeg_bytes, png_bytes, put, \
    write_random_pairs


def _lines(text: bytes, base: str = "/data/"):
    return [(line.number, line.path, line.problem)
            for line in read_lines(text.splitlines(keepends=True), "/data/val.txt", base)]


def test_lines_are_read_against_the_base_and_each_problem_is_named():
    lines = _lines(b"\xef\xbb\xbf# a comment\r\n\n  images/a.png  \r\n/data/sub/./b.png\n"
                   b"../elsewhere/c.png\n/other/d.png\nimages/\xff.png\nx\x00y\n")
    assert [(n, path) for n, path, problem in lines if not problem] == [
        (3, "/data/images/a.png"), (4, "/data/sub/b.png")]
    problems = {n: problem for n, _, problem in lines if problem}
    assert set(problems) == {5, 6, 7, 8}
    assert "/elsewhere/c.png lies outside /data/" in problems[5]
    assert "--input_base" in problems[6]
    assert "not valid UTF-8" in problems[7] and "UTF-16" in problems[8]
    # URLs keep their scheme and an object name's "//"; relative lines join a remote base.
    assert resolve("gs://b/x//y.png", "/data/") == "gs://b/x//y.png"
    assert resolve("sub/../y.png", "gs://b/set/") == "gs://b/set/y.png"


def _list_run(tmp_path, list_text: str, *flags: str, model: str, output: str = "out"):
    (tmp_path / "val.txt").write_text(list_text)
    code = main(["run", "--input", str(tmp_path / "val.txt"), "--masks", str(tmp_path / "masks"),
                 "--model", model, "--num_classes", "3", "--no-crf",
                 "--output", str(tmp_path / output), *flags])
    folder = tmp_path / output
    summary = json.loads((folder / "summary.json").read_text()) if folder.exists() else None
    letters = [json.loads(line) for path in sorted((folder / "dead_letters").glob("*"))
               for line in path.read_text().splitlines()] if folder.exists() else []
    return code, summary, letters


def test_every_line_of_a_list_is_an_output_or_a_dead_letter_that_names_it(tmp_path,
                                                                         tiny_model_path):
    write_random_pairs(tmp_path, [np.full((16, 24), k % 3, np.uint8) for k in range(3)])
    listed = ("# validation images\n"
              "images/i0.png\n\n"
              f"{tmp_path}/images/i1.png\n"
              "images/missing.png\n"
              "images/i0.png\n"          # the same file again
              "../outside.png\n"
              "images/*.png\n"            # a glob: lists name files
              "images/i2.png\t3\n")       # a second column
    code, summary, letters = _list_run(tmp_path, listed, model=tiny_model_path)
    assert code == 0
    counts = summary["counts"]
    assert counts["inputs"] == 7 and counts["segmented"] == 2 and counts["accounted_for"]
    assert counts["dead_letters_by_stage"] == {"list": 5}
    assert counts["images_with_mask"] == 2  # paired by relative path or stem, as with a glob
    assert sorted(p.name for p in (tmp_path / "out" / "masks" / "images").iterdir()) == [
        "i0.png", "i1.png"]
    reasons = sorted(letter["reason"] for letter in letters)
    where = f"of {tmp_path}/val.txt"
    assert any(f"no file at {tmp_path}/images/missing.png (line 5 {where})" in r
               for r in reasons)
    assert any(f"line 6 {where} repeats line 2 {where}" in r for r in reasons)
    assert any("outside.png lies outside" in r and "--input_base" in r for r in reasons)
    assert any("a list is not globbed" in r for r in reasons)
    assert any("one path per line, with no other columns" in r for r in reasons)

    # --input_base: keys below it, and the same masks, byte for byte, as a glob's run.
    code, based, _ = _list_run(tmp_path, "i0.png\ni1.png\ni2.png\n", "--input_base",
                               str(tmp_path / "images"), model=tiny_model_path, output="based")
    assert code == 0 and based["counts"]["dead_letters"] == 0
    assert main(["run", "--input", str(tmp_path / "images"), "--masks",
                 str(tmp_path / "masks"), "--model", tiny_model_path, "--num_classes", "3",
                 "--no-crf", "--output", str(tmp_path / "glob")]) == 0
    for name in ("i0.png", "i1.png", "i2.png"):
        assert (tmp_path / "based" / "masks" / name).read_bytes() == \
            (tmp_path / "glob" / "masks" / name).read_bytes()
    glob = json.loads((tmp_path / "glob" / "summary.json").read_text())
    assert based["evaluation"] == glob["evaluation"]


def test_a_list_reruns_only_what_changed_under_skip_existing(tmp_path, tiny_model_path):
    write_random_pairs(tmp_path, [np.full((16, 24), k % 3, np.uint8) for k in range(2)])
    flags = ("--skip_existing", "--change_detection", "stamp", "--input_base",
             str(tmp_path / "images"))
    for reused in (0, 2):
        code, summary, _ = _list_run(tmp_path, "i0.png\ni1.png\nnone.png\n", *flags,
                                     model=tiny_model_path)
        assert code == 0
        assert (summary["counts"]["reused"], summary["counts"]["dead_letters"]) == (reused, 1)


def test_a_list_that_cannot_be_read_is_one_line_and_writes_nothing(tmp_path, tiny_model_path,
                                                                   capsys):
    write_random_pairs(tmp_path, [np.zeros((8, 8), np.uint8)])
    (tmp_path / "utf16.txt").write_text("images/i0.png\n", encoding="utf-16")
    for listed, flags, message in (
            ("# nothing yet\n\n", (), "names no file: each line of the list is blank"),
            (None, ("--input", str(tmp_path / "utf16.txt")), "is not valid UTF-8"),
            (f"{tmp_path}/images/i0.png\n", ("--input_base", str(tmp_path / "masks")),
             f"lies outside {tmp_path}/masks/, the folder keys are taken relative to; pass "
             f"--input_base"),
            ("i0.png\n", ("--input_base", str(tmp_path / "imagez")),
             f"--input_base '{tmp_path}/imagez' is not a folder"),
            (None, ("--input", str(tmp_path / "images")), "--input_base applies to a list "
                                                          "input")):
        if listed is None:
            code = main(["run", "--model", tiny_model_path, "--num_classes", "3", "--no-crf",
                         "--output", str(tmp_path / "out"), "--input_base", str(tmp_path),
                         *flags])
        else:
            code, _, _ = _list_run(tmp_path, listed, *flags, model=tiny_model_path)
        error = capsys.readouterr().err
        assert code == 2 and message in error, error
        assert "Traceback" not in error and len(error.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()


def test_a_list_on_cloud_storage_names_objects_below_its_folder(gcs_bucket, tiny_model_path):
    gcs = gcs_bucket()
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        put(f"{gcs}/set/images/{name}.png",
            png_bytes(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)))
    put(f"{gcs}/set/val.txt", b"images/a.png\nimages/b.png\nimages/c.png\n")
    from segbeam.pipeline.run import run

    outcome = run(["--input", f"{gcs}/set/val.txt", "--model", tiny_model_path,
                   "--num_classes", "3", "--no-crf", "--output", f"{gcs}/out"])
    counts = outcome.summary["counts"]
    assert (counts["inputs"], counts["segmented"], counts["dead_letters"]) == (3, 2, 1)
    assert_dead_letters_counted(outcome)


def test_shard_packs_the_files_a_list_names(tmp_path, capsys):
    write_random_pairs(tmp_path, [np.full((8, 8), k, np.uint8) for k in range(3)])
    (tmp_path / "val.txt").write_text("i0\ni2\nnone\n")  # IDs, as a split file names them
    assert main(["shard", "--input", str(tmp_path / "val.txt"), "--input_base",
                 str(tmp_path / "images"), "--list_suffix", ".png", "--masks",
                 str(tmp_path / "masks"), "--output", str(tmp_path / "shards" / "s"),
                 "--num_shards", "1"]) == 0
    account = capsys.readouterr().out
    assert "3 images -> 2 examples" in account and "1 dead letters" in account
    from segbeam.example_proto import decode_example
    from segbeam.tfrecord import read_records

    with open(tmp_path / "shards" / "s-00000-of-00001.tfrecord", "rb") as handle:
        names = sorted(decode_example(record)["image/filename"][0]
                       for record in read_records(handle))
    assert names == [b"i0.png", b"i2.png"]
    letters = (tmp_path / "shards" / "s_dead_letters").rglob("*.jsonl")
    assert f"no file at {tmp_path}/images/none.png" in "".join(path.read_text()
                                                             for path in letters)


def test_a_split_file_of_ids_reads_with_a_suffix(tmp_path, tiny_model_path, capsys,
                                                  caplog):
    """PASCAL VOC's layout: ImageSets/Segmentation/val.txt names IDs, JPEGImages/ID.jpg the
    images, SegmentationClass/ID.png the masks. Read as paths, every line would have been a
    dead letter (no file at .../2007_000001); with --list_suffix .jpg each names its image."""
    voc, rng = tmp_path / "VOC2012", np.random.default_rng(5)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    ids = ["2007_000001", "2007_000002", "2007_000003"]
    for name in ids:
        (voc / "JPEGImages" / f"{name}.jpg").write_bytes(
            jpeg_bytes(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)))
        (voc / "SegmentationClass" / f"{name}.png").write_bytes(
            png_bytes(np.full((16, 24), int(name[-1]) % 3, np.uint8)))
    split = voc / "ImageSets" / "Segmentation" / "val.txt"
    split.write_text("\n".join([*ids, "2007_000009"]) + "\n")  # the last has no image
    flags = ["run", "--input", str(split), "--input_base", str(voc / "JPEGImages"),
             "--masks", str(voc / "SegmentationClass"), "--model", tiny_model_path,
             "--num_classes", "3", "--no-crf"]
    # As paths: one line, naming the flag that reads them, before any work.
    assert main([*flags, "--output", str(tmp_path / "as_paths")]) == 2
    error = capsys.readouterr().err
    assert (f"{voc}/JPEGImages/2007_000001, which is no file, but "
            f"{voc}/JPEGImages/2007_000001.jpg is: the list names images by ID; pass "
            f"--list_suffix .jpg") in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "as_paths").exists()

    output = tmp_path / "out"
    assert main([*flags, "--list_suffix", ".jpg", "--output", str(output)]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["counts"]["inputs"] == 4 and summary["counts"]["segmented"] == 3
    assert summary["counts"]["images_with_mask"] == 3 and summary["counts"]["accounted_for"]
    assert sorted(path.name for path in (output / "masks").iterdir()) == [
        f"{name}.png" for name in ids]
    letters = [json.loads(line) for path in (output / "dead_letters").glob("*")
               for line in path.read_text().splitlines()]
    assert [(d["key"], d["stage"]) for d in letters] == [("2007_000009", "list")]
    assert f"no file at {voc}/JPEGImages/2007_000009.jpg (line 4 of {split})" in \
        letters[0]["reason"]

    # Read against the list's own folder (no --input_base), no image is found by an ID: the
    # launcher warns, naming the base and the flag, and each line's dead letter says so too.
    from segbeam.pipeline.flags import check_list_input

    with caplog.at_level(logging.WARNING):
        assert check_list_input(str(split), f"{split.parent}/") is None
    assert (f"relative lines are read against {split.parent}/ (--input_base); a line with no "
            f"extension may be an image's ID (--list_suffix)") in caplog.text

    # A suffix for another input is refused, as --input_base is.
    assert main(["run", "--input", str(voc / "JPEGImages"), "--list_suffix", ".jpg",
                 "--model", tiny_model_path, "--num_classes", "3",
                 "--output", str(tmp_path / "glob")]) == 2
    assert "--list_suffix applies to a list input" in capsys.readouterr().err


def test_a_line_with_no_extension_and_no_file_says_how_to_read_ids(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.JPG").write_bytes(b"")
    assert id_suffix(f"{tmp_path}/a") == ".png" and id_suffix(f"{tmp_path}/b") == ".JPG"
    assert id_suffix(f"{tmp_path}/c") is None  # no image by that ID either
    assert id_suffix(f"{tmp_path}/a.jpg") is None  # a path with an extension is one
    assert resolve("2007_000001", "/voc/JPEGImages/", ".jpg") == \
        "/voc/JPEGImages/2007_000001.jpg"
    hint = "if the list names images by ID (a dataset's split file), pass --list_suffix"
    assert hint in missing_reason(ListedLine("/l.txt", 3, f"{tmp_path}/c"))
    assert hint not in missing_reason(ListedLine("/l.txt", 3, f"{tmp_path}/c.png"))


def test_a_list_that_cannot_be_read_is_a_dead_letter_among_the_others(tmp_path,
                                                                      tiny_model_path, capsys):
    write_random_pairs(tmp_path, [np.zeros((8, 8), np.uint8)])
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "a.txt").write_text(f"{tmp_path}/images/i0.png\n")
    (tmp_path / "lists" / "b.txt").symlink_to(tmp_path / "gone.txt")
    argv = ["run", "--model", tiny_model_path, "--num_classes", "3", "--no-crf",
            "--input_base", str(tmp_path)]
    assert main([*argv, "--input", str(tmp_path / "lists" / "*.txt"),
                 "--output", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["counts"]["inputs"], summary["counts"]["segmented"]) == (2, 1)
    letters = [json.loads(line) for path in (tmp_path / "out" / "dead_letters").glob("*")
               for line in path.read_text().splitlines()]
    assert [(d["source"], d["stage"]) for d in letters] == [(f"{tmp_path}/lists/b.txt", "list")]
    assert "the list cannot be read (FileNotFoundError" in letters[0]["reason"]
    assert "none of its lines was read" in letters[0]["reason"]
    capsys.readouterr()
    assert main([*argv, "--input", str(tmp_path / "lists" / "b.txt"),
                 "--output", str(tmp_path / "out2")]) == 2
    error = capsys.readouterr().err
    assert f"--input: {tmp_path}/lists/b.txt cannot be read: FileNotFoundError" in error
    assert "Traceback" not in error and not (tmp_path / "out2").exists()


def test_train_takes_the_pairs_a_list_names(tmp_path, caplog):
    from segbeam.training_items import find_training_pairs

    write_random_pairs(tmp_path, [np.full((8, 8), k % 3, np.uint8) for k in range(4)])
    (tmp_path / "train.txt").write_text("images/i0.png\nimages/i2.png\nimages/i0.png\n"
                                        f"{tmp_path}/images/i3.png\nimages/gone.png\n")
    pairs = find_training_pairs(str(tmp_path / "train.txt"), str(tmp_path / "masks"))
    assert [(p.source, p.mask_source) for p in pairs] == [
        (f"{tmp_path}/images/i{k}.png", f"{tmp_path}/masks/i{k}.png") for k in (0, 2, 3)]
    assert "line 3 of" in caplog.text and "repeats line 1" in caplog.text
    assert f"no file at {tmp_path}/images/gone.png (line 5" in caplog.text
    (tmp_path / "none.txt").write_text("images/gone.png\n")
    with pytest.raises(ValueError, match="no line of the list .* names a file"):
        find_training_pairs(str(tmp_path / "none.txt"), str(tmp_path / "masks"))


def test_train_reads_a_split_file_of_ids_with_a_base_and_a_suffix(tmp_path, capsys, caplog):
    """A VOC split file names IDs; segbeam train read each line as a path below the list's
    folder, so ImageSets/Segmentation/train.txt named no image and could not be trained on.
    --input_base and --list_suffix read it as segbeam run does, for --val_images too."""
    import json as json_module

    from segbeam.models.training_resume import CHECKPOINT, STARTED_WITH, _settings, \
        resume_point
    from segbeam.pipeline.train import config_from

    voc, rng = tmp_path / "VOC", np.random.default_rng(2)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets"):
        (voc / folder).mkdir(parents=True)
    for index in range(6):
        (voc / "JPEGImages" / f"2007_{index:06d}.png").write_bytes(
            png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
        (voc / "SegmentationClass" / f"2007_{index:06d}.png").write_bytes(
            png_bytes(np.full((32, 32), index % 3, np.uint8)))
    (voc / "ImageSets" / "train.txt").write_text("2007_000000\n2007_000001\n2007_000002\n"
                                                 "2007_000003\n2007_000042\n")
    (voc / "ImageSets" / "val.txt").write_text("2007_000004\n2007_000005\n")
    flags = ["train", "--model", "tiny_fcn", "--num_classes", "3", "--input_size", "32",
             "--epochs", "1", "--batch_size", "2", "--quiet",
             "--images", str(voc / "ImageSets" / "train.txt"),
             "--masks", str(voc / "SegmentationClass"),
             "--val_images", str(voc / "ImageSets" / "val.txt"),
             "--val_masks", str(voc / "SegmentationClass"),
             "--input_base", str(voc / "JPEGImages")]
    # Read as paths: one line that names the suffix to pass, before any work.
    assert main([*flags, "--output", str(tmp_path / "as_paths")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "the list names images by ID; pass --list_suffix .png" in \
        error[0], error
    assert not (tmp_path / "as_paths").exists()

    assert main([*flags, "--list_suffix", ".png", "--output", str(tmp_path / "model")]) == 0
    pairs = json_module.loads((tmp_path / "model" / "checkpoints" / "pairs.json").read_text())
    assert (pairs["training_pairs"], pairs["validation_pairs"]) == (4, 2), pairs
    recorded = json_module.loads((tmp_path / "model" / "training.json").read_text())["config"]
    assert (recorded["input_base"], recorded["list_suffix"]) == (f"{voc}/JPEGImages/", ".png")
    assert f"no file at {voc}/JPEGImages/2007_000042.png (line 5" in caplog.text
    capsys.readouterr()

    # Given with no list, either flag would change nothing: refused.
    for flag, value in (("--input_base", str(voc)), ("--list_suffix", ".png")):
        assert main(["train", "--model", "tiny_fcn", "--num_classes", "3", "--input_size",
                     "32", "--images", str(voc / "JPEGImages"), "--masks",
                     str(voc / "SegmentationClass"), flag, value,
                     "--output", str(tmp_path / "no_list")]) == 2
        assert f"{flag} applies to a list (.txt) given as --images or --val_images; neither " \
               f"is one" in capsys.readouterr().err

    # A training started before these settings existed resumes: they were at their defaults.
    config = config_from([*flags[1:], "--output", str(tmp_path / "old")])
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    (tmp_path / "old" / CHECKPOINT).write_bytes(b"")
    before = {k: v for k, v in _settings(config).items() if k not in ("input_base",
                                                                        "list_suffix")}
    (tmp_path / "old" / STARTED_WITH).write_text(json_module.dumps(before))
    config.input_base = None
    assert resume_point(config).history == {}


def test_the_pairing_suffixes_apply_to_a_list_as_to_a_glob():
    import argparse

    from segbeam.pipeline.flags import UsageError, check_container_flags

    suffixes = argparse.Namespace(image_suffix="_leftImg8bit", mask_suffix="_gtFine_labelIds")
    for input_format in ("images", "list"):
        check_container_flags(input_format, suffixes)
    with pytest.raises(UsageError, match="--image_suffix pairs image files with mask files"):
        check_container_flags("tfrecord", suffixes)
    with pytest.raises(UsageError, match="--mask_column applies to parquet shards, but the "
                                         "input is read as list"):
        check_container_flags("list", argparse.Namespace(mask_column="label"))
