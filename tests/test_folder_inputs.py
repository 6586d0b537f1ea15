"""A folder as ``--input``: every file in it, as ``segbeam train --images`` and Beam's trailing
``/`` read one; files in its sub-folders are named, never dropped without a word."""

import json
import logging
import os

import numpy as np
import pytest

from segbeam.matching import files_in_subfolders, first_file_and_subfolder_count, folder_as_glob
from segbeam.pipeline.cli import main
from tests.conftest import png_bytes, put, write_random_pairs


def _folder_with_a_subfolder(tmp_path):
    """data/images/i0..i2.png, data/images/more/i3.png, masks for all four."""
    write_random_pairs(tmp_path, [np.full((16, 24), k % 3, np.uint8) for k in range(4)])
    (tmp_path / "images" / "more").mkdir()
    (tmp_path / "images" / "i3.png").rename(tmp_path / "images" / "more" / "i3.png")
    (tmp_path / "masks" / "more").mkdir()
    (tmp_path / "masks" / "i3.png").rename(tmp_path / "masks" / "more" / "i3.png")
    return tmp_path / "images"


def test_a_local_folder_is_the_glob_of_its_files(tmp_path):
    images = _folder_with_a_subfolder(tmp_path)
    assert folder_as_glob(str(images)) == f"{images}/*"
    assert folder_as_glob(f"{images}/") == f"{images}/*"
    for unchanged in (f"{images}/i0.png", f"{images}/*.png", str(tmp_path / "nothing"), ""):
        assert folder_as_glob(unchanged) == unchanged
    assert files_in_subfolders(f"{images}/*") == 1
    assert first_file_and_subfolder_count(f"{images}/*")[1] == 1
    assert files_in_subfolders(f"{images}/more/*") == 0
    assert files_in_subfolders(f"{images}/*.png") == 0  # not a whole folder: not asked


def test_a_cloud_storage_prefix_is_a_folder(gcs_bucket, monkeypatch):
    gcs = gcs_bucket()
    image = png_bytes(np.zeros((4, 4, 3), np.uint8))
    for name in ("data/images/a.png", "data/images/b.png", "data/images/deep/c.png",
                 "data/imagesque.png"):
        put(f"{gcs}/{name}", image)
    assert folder_as_glob(f"{gcs}/data/images") == f"{gcs}/data/images/*"
    assert folder_as_glob(f"{gcs}/data/images/") == f"{gcs}/data/images/*"
    assert folder_as_glob(f"{gcs}/data/images/a.png") == f"{gcs}/data/images/a.png"
    assert folder_as_glob(f"{gcs}/data/nothing") == f"{gcs}/data/nothing"
    assert files_in_subfolders(f"{gcs}/data/images/*") == 1
    # The launcher's check answers both questions from one listing of the prefix.
    from apache_beam.io.filesystems import FileSystems

    listings = []
    match = FileSystems.match
    monkeypatch.setattr(FileSystems, "match",
                        lambda patterns, *a, **k: listings.append(patterns) or
                        match(patterns, *a, **k))
    first, deeper = first_file_and_subfolder_count(f"{gcs}/data/images/*")
    assert first in (f"{gcs}/data/images/a.png", f"{gcs}/data/images/b.png") and deeper == 1
    assert len(listings) == 1, listings
    assert first_file_and_subfolder_count(f"{gcs}/data/nothing/*") == (None, 0)


def _run(images, masks, output, tiny_model_path):
    return main(["run", "--input", str(images), "--masks", str(masks), "--model",
                 tiny_model_path, "--num_classes", "3", "--no-crf", "--output", str(output)])


def test_run_on_a_folder_reads_its_files_and_names_the_ones_below(tmp_path, tiny_model_path,
                                                                   caplog, capsys):
    images = _folder_with_a_subfolder(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert _run(images, tmp_path / "masks", tmp_path / "folder", tiny_model_path) == 0
    assert "not the 1 in its sub-folders" in caplog.text and f"'{images}/**'" in caplog.text
    assert _run(f"{images}/*", tmp_path / "masks", tmp_path / "glob", tiny_model_path) == 0
    folder = json.loads((tmp_path / "folder" / "summary.json").read_text())
    glob = json.loads((tmp_path / "glob" / "summary.json").read_text())
    assert folder["counts"]["inputs"] == folder["counts"]["images_with_mask"] == 3
    assert folder["evaluation"] == glob["evaluation"]
    assert sorted(p.name for p in (tmp_path / "folder" / "masks").iterdir()) == [
        "i0.png", "i1.png", "i2.png"]
    capsys.readouterr()

    # Only sub-folders: an error that says where the files are, and nothing is written.
    (tmp_path / "only").mkdir()
    (images / "more").rename(tmp_path / "only" / "more")
    code = _run(tmp_path / "only", tmp_path / "masks", tmp_path / "empty", tiny_model_path)
    error = capsys.readouterr().err
    assert code == 2 and "whose 1 files all lie in sub-folders" in error
    assert f"'{tmp_path}/only/**'" in error and "Traceback" not in error
    assert not (tmp_path / "empty").exists()


def test_shard_takes_a_folder_says_what_it_packed_and_refuses_a_glob_matching_nothing(
        tmp_path, capsys):
    images = _folder_with_a_subfolder(tmp_path)
    assert main(["shard", "--input", str(images), "--masks", str(tmp_path / "masks"),
                 "--output", str(tmp_path / "shards" / "s"), "--num_shards", "1"]) == 0
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    with beam.Pipeline() as pipeline:
        keys = (pipeline | beam.io.ReadFromTFRecord(str(tmp_path / "shards" / "s-*"))
                | beam.combiners.Count.Globally())
        assert_that(keys, equal_to([3]))
    account = capsys.readouterr().out  # the sub-folder's mask had no image to go with
    assert "3 images -> 3 examples" in account and "0 dead letters" in account
    assert "1 masks had no image" in account
    code = main(["shard", "--input", str(tmp_path / "nothing" / "*.png"),
                 "--output", str(tmp_path / "shards2" / "s")])
    error = capsys.readouterr().err
    assert code == 2 and "matches no file" in error and "Traceback" not in error
    assert not (tmp_path / "shards2").exists()
    # A mistyped --masks packed images without masks; a folder as the prefix wrote shards
    # named "-00000-of-00001.tfrecord" in it.
    for flags, message in (
            (["--masks", str(tmp_path / "nothing"), "--output", str(tmp_path / "shards2" / "s")],
             "matches no file; check the path (without masks, drop --masks: the shards would "
             "hold images only)"),
            (["--output", str(tmp_path / "shards") + "/"], "is a folder; add a name, e.g. "),
            (["--output", str(tmp_path / "shards")], f"add a name, e.g. {tmp_path}/shards/train"),
            # --num_shards -1 was taken as "the runner chooses"; an unknown flag pointed to
            # another command's help
            (["--output", str(tmp_path / "shards2" / "s"), "--num_shards", "-1"],
             "--num_shards must be 0 (the runner chooses) or more; received -1"),
            (["--output", str(tmp_path / "shards2" / "s"), "--zzz", "1"],
             "unknown flag --zzz; see `segbeam shard --help`"),
            # An internal error in Beam's sink, a beam-temp folder left behind
            (["--output", str(tmp_path / "shards2" / "s[1]")], "holds a glob character")):
        assert main(["shard", "--input", str(images), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "shards2").exists()


def test_shard_refuses_jpeg_transparent_and_16_bit_colour_masks_and_records_formats(tmp_path,
                                                                                   capsys):
    from PIL import Image

    from segbeam.pipeline.shard import example_for
    from segbeam.records import ImageRef

    from tests.conftest import colour16_bytes

    write_random_pairs(tmp_path, [np.zeros((8, 8), np.uint8)] * 5)
    (tmp_path / "masks" / "i4.png").write_bytes(  # class ids 0..2 as 16-bit gray RGB
        colour16_bytes(np.repeat(np.arange(64, dtype=np.uint16).reshape(8, 8, 1) % 3, 3, 2)))
    Image.open(tmp_path / "masks" / "i1.png").save(tmp_path / "masks" / "i1.jpg")
    (tmp_path / "masks" / "i1.png").unlink()
    seethrough = np.zeros((8, 8, 2), np.uint8)  # gray + alpha: one pixel transparent
    seethrough[..., 1] = 255
    seethrough[0, 0, 1] = 0
    Image.fromarray(seethrough).save(tmp_path / "masks" / "i2.png")
    Image.fromarray(np.dstack([seethrough[..., 0]] * 3 + [np.full((8, 8), 255, np.uint8)])
                    ).save(tmp_path / "masks" / "i3.png")  # RGBA, opaque: packed
    assert main(["shard", "--input", str(tmp_path / "images"), "--masks",
                 str(tmp_path / "masks"), "--output", str(tmp_path / "s" / "x")]) == 0
    assert "5 images -> 2 examples" in capsys.readouterr().out
    letters = sorted((json.loads(line) for path in (tmp_path / "s" / "x_dead_letters").rglob(
        "*.jsonl") for line in path.read_text().splitlines() if line), key=lambda d: d["key"])
    assert [(d["key"], d["stage"]) for d in letters] == [("i1", "shard"), ("i2", "shard"),
                                                         ("i4", "shard")]
    assert "is a JPEG image: its lossy compression" in letters[0]["reason"]
    assert "i2.png has 1 transparent or translucent pixels (LA alpha" in letters[1]["reason"]
    assert "i4.png stores 16 bits per colour sample (RGB)" in letters[2]["reason"]
    from segbeam.example_proto import MASK_FORMAT_FEATURE, decode_example

    example = decode_example(example_for(ImageRef("i0", str(tmp_path / "images" / "i0.png"),
                                                 str(tmp_path / "masks" / "i0.png"))))
    assert example[MASK_FORMAT_FEATURE] == [b"png"]


def test_shard_pairs_masks_by_suffix_and_says_when_no_image_found_its_mask(tmp_path, capsys):
    """Masks named x_mask.png beside x.png paired with nothing (segbeam shard had no
    --mask_suffix), and the account only counted them as masks without an image."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from segbeam.example_proto import FILENAME_FEATURE, MASK_FEATURE, decode_example

    write_random_pairs(tmp_path, [np.full((8, 8), k, np.uint8) for k in range(2)])
    for k in range(2):  # every file in one folder, the masks with a suffix
        (tmp_path / "masks" / f"i{k}.png").rename(tmp_path / "images" / f"i{k}_mask.png")
    images = str(tmp_path / "images")
    assert main(["shard", "--input", images, "--masks", images, "--output",
                 str(tmp_path / "plain" / "s")]) == 0
    account = capsys.readouterr().out  # each mask was taken for an image, of its own
    assert "4 images -> 4 examples" in account
    assert "warning: no input found its mask, so no example holds a mask" in account
    assert main(["shard", "--input", images, "--masks", images, "--mask_suffix", "_mask",
                 "--output", str(tmp_path / "paired" / "s")]) == 0
    account = capsys.readouterr().out
    assert "2 images -> 2 examples" in account and "had no image" not in account
    with beam.Pipeline() as pipeline:
        packed = (pipeline | beam.io.ReadFromTFRecord(str(tmp_path / "paired" / "s-*"))
                  | beam.Map(decode_example)
                  | beam.Map(lambda e: (e[FILENAME_FEATURE][0], MASK_FEATURE in e)))
        assert_that(packed, equal_to([(b"i0.png", True), (b"i1.png", True)]))
    code = main(["shard", "--input", images, "--mask_suffix", "_mask", "--output",
                 str(tmp_path / "none" / "s")])
    error = capsys.readouterr().err
    assert code == 2 and "--mask_suffix _mask names mask files, but no --masks" in error


def test_shard_refuses_an_earlier_runs_prefix_unless_told_and_guards_other_shard_sets(
        tmp_path, capsys):
    """Sharding again with another --num_shards left the earlier shards beside the new ones
    (a glob read both); and Beam's sink deletes every file matching PREFIX-*-of-N.tfrecord,
    another shard set's (PREFIX-extra-...) included."""
    write_random_pairs(tmp_path, [np.zeros((8, 8), np.uint8)] * 2)
    images, out = str(tmp_path / "images"), tmp_path / "shards"
    argv = ["shard", "--input", images, "--output", str(out / "s")]
    assert main(argv + ["--num_shards", "2"]) == 0
    capsys.readouterr()
    assert main(argv + ["--num_shards", "1"]) == 2
    assert "has 2 files of an earlier run" in capsys.readouterr().err
    assert main(argv + ["--num_shards", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("*.tfrecord")) == ["s-00000-of-00001.tfrecord"]
    (out / "s-extra-00000-of-00001.tfrecord").write_bytes(b"another set")
    assert main(argv + ["--num_shards", "1", "--overwrite"]) == 2
    assert "s-extra-00000-of-00001.tfrecord (another shard set's)" in capsys.readouterr().err
    assert (out / "s-extra-00000-of-00001.tfrecord").read_bytes() == b"another set"


def test_a_shard_read_as_an_image_is_a_dead_letter_that_says_how_to_read_it():
    """A folder of shards (or of lists) as --input is read as images (the glob has no shard
    suffix): each shard was a dead letter saying only that it is not an image."""
    from segbeam.dataset import decode_encoded
    from segbeam.records import EncodedImage

    for name, flag in (("data/s-00000-of-00004.tfrecord", "tfrecord"),
                       ("data/train-0.parquet", "parquet"), ("data/shard.tar.gz", "webdataset")):
        with pytest.raises(ValueError, match=f"its name says it is a .* shard, read here as an "
                                             f"image: .* pass --input_format {flag}$"):
            decode_encoded(EncodedImage("k", name, b"not an image", None, None, "h"))
    with pytest.raises(ValueError, match="its name says it is a list of image paths, read here "
                                         "as an image: .* pass --input_format list$"):
        decode_encoded(EncodedImage("k", "lists/val.txt", b"images/a.png\n", None, None, "h"))
    with pytest.raises(ValueError, match="check that the file is a JPEG or PNG$"):
        decode_encoded(EncodedImage("k", "data/k.png", b"not an image", None, None, "h"))


def test_a_folder_whose_name_holds_glob_characters_is_named_with_its_escaped_glob(
        tmp_path, tiny_model_path, capsys):
    """``photos [2024]`` is read as a pattern (one of p, h, ...): the folder that exists was
    said to match no file, with advice to quote the glob. Now the error gives the glob that
    reads it, and that glob does."""
    import warnings

    from segbeam.matching import pattern_regex

    root = tmp_path / "set [v2]"
    root.mkdir()
    write_random_pairs(root, [np.full((16, 24), k % 3, np.uint8) for k in range(2)])
    images, masks = root / "images", root / "masks"
    assert _run(images, masks, tmp_path / "out", tiny_model_path) == 2
    error = capsys.readouterr().err
    escaped = f"{tmp_path}/set [[]v2]"
    assert error.splitlines() == [
        f"segbeam run: error: --input '{images}' matches no file; '{images}' exists, but its "
        f"name holds glob characters (* ? [), read as a pattern: pass it escaped, "
        f"'{escaped}/images/*'"]
    assert _run(f"{escaped}/images/*", masks, tmp_path / "out", tiny_model_path) == 2
    assert f"pass it escaped, '{escaped}/masks/*'" in capsys.readouterr().err
    assert _run(f"{escaped}/images/*", f"{escaped}/masks/*", tmp_path / "out",
                tiny_model_path) == 0
    counts = json.loads((tmp_path / "out" / "summary.json").read_text())["counts"]
    assert counts["segmented"] == counts["images_with_mask"] == 2
    # keys below the folder, as for any folder (they held "set [v2]/images/")
    assert sorted(os.listdir(tmp_path / "out" / "masks")) == \
        sorted(f"{os.path.splitext(name)[0]}.png" for name in os.listdir(images))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "[[]" compiled with a nested set warned
        assert pattern_regex("a[[]b]").match("a[b]")
