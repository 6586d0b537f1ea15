"""Images in containers: TFRecord shards of DeepLab-style Examples, Parquet shards in the
Hugging Face ``datasets`` layout (written here with pyarrow) and WebDataset tar shards (written
with ``tarfile``). The same images as loose files, TFRecord and Parquet records and tar members
give the same masks and metrics rows; broken shards and records become dead letters that name
them, and a shard that breaks off keeps what precedes the break."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segbeam.containers import webdataset_samples
from segbeam.decode import InvalidInputError
from segbeam.records import DeadLetter
from tests.conftest import assert_close_calibration, assert_dead_letters_counted, png_bytes, \
    without_calibration

NAMES = ("a", "b", "sub/c", "sub/d")
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _dataset(seed=0):
    """{name: (image PNG bytes, mask PNG bytes)}; two image sizes, masks with classes 0..2."""
    rng = np.random.default_rng(seed)
    data = {}
    for index, name in enumerate(NAMES):
        height, width = (24, 32) if index % 2 else (32, 32)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        mask = rng.integers(0, 3, (height, width), dtype=np.uint8)
        data[name] = (png_bytes(image), png_bytes(mask))
    return data


def write_files(root, data):
    for name, (image, mask) in data.items():
        for folder, content in (("images", image), ("masks", mask)):
            path = os.path.join(root, folder, name + ".png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(content)


def parquet_table(data, names=None):
    names = list(names or data)
    return pa.table({
        "image": pa.array([{"bytes": data[n][0], "path": f"{n}.png"} for n in names],
                          IMAGE_STRUCT),
        "annotation": pa.array([{"bytes": data[n][1], "path": f"{n}.png"} for n in names],
                               IMAGE_STRUCT),
        "label": pa.array([index for index, _ in enumerate(names)], pa.int64()),
    })


def write_tar(path, members):
    with tarfile.open(path, "w") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))


def tfrecord_bytes(data, names=None, features=None):
    """A TFRecord file of Examples, one per name, framed with their CRCs; ``features``: the
    names of the image, mask and file-name features (DeepLab's by default)."""
    from segbeam.example_proto import FILENAME_FEATURE, IMAGE_FEATURE, MASK_FEATURE, \
        encode_example
    from segbeam.tfrecord import masked_crc32c

    image, mask, filename = features or (IMAGE_FEATURE, MASK_FEATURE, FILENAME_FEATURE)
    records = [encode_example({image: [data[n][0]], mask: [data[n][1]],
                               filename: [f"{n}.png".encode()]})
               for n in (names or data)]
    framed = []
    for record in records:
        length = struct.pack("<Q", len(record))
        framed += [length, struct.pack("<I", masked_crc32c(length)), record,
                   struct.pack("<I", masked_crc32c(record))]
    return b"".join(framed)


def tar_members(data, names=None):
    return [member for n in (names or data)
            for member in ((f"{n}.png", data[n][0]), (f"{n}.seg.png", data[n][1]))]


def _run(tmp_path, name, *input_args):
    from segbeam.pipeline.run import run

    output = tmp_path / name
    outcome = run([*input_args, "--model", "tiny_fcn", "--num_classes", "3", "--input_size", "32",
                   "--crf_iterations", "2", "--output", str(output), "--quiet"])
    assert_dead_letters_counted(outcome)
    rows = pq.read_table(str(output / "metrics")).to_pylist()
    masks = {str(p.relative_to(output / "masks")): p.read_bytes()
             for p in (output / "masks").rglob("*.png")}
    return outcome.summary, rows, masks


def _comparable(rows):
    varying = {"source", "mask_source", "mask_path"}
    return sorted(({k: v for k, v in row.items() if k not in varying} for row in rows),
                  key=lambda row: row["key"])


def test_files_tfrecord_parquet_and_webdataset_give_identical_outputs(tmp_path):
    data = _dataset()
    write_files(str(tmp_path / "files"), data)
    os.makedirs(tmp_path / "tfr")
    (tmp_path / "tfr" / "s-0.tfrecord").write_bytes(tfrecord_bytes(data, NAMES[:1]))
    (tmp_path / "tfr" / "s-1.tfrecord.gz").write_bytes(gzip.compress(tfrecord_bytes(
        data, NAMES[1:])))  # read as Beam reads it, decompressed by its suffix
    os.makedirs(tmp_path / "pq")
    pq.write_table(parquet_table(data, NAMES[:3]), str(tmp_path / "pq" / "train-0.parquet"),
                   row_group_size=2)  # two row groups in the first shard
    pq.write_table(parquet_table(data, NAMES[3:]), str(tmp_path / "pq" / "train-1.parquet"))
    os.makedirs(tmp_path / "wds")
    write_tar(str(tmp_path / "wds" / "shard-0.tar"), tar_members(data, NAMES[:2]))
    write_tar(str(tmp_path / "wds" / "shard-1.tar"), tar_members(data, NAMES[2:]))

    files = _run(tmp_path, "out_files", "--input", f"{tmp_path}/files/images/**",
                 "--masks", str(tmp_path / "files" / "masks"))
    parquet = _run(tmp_path, "out_parquet", "--input", f"{tmp_path}/pq/*.parquet",
                   "--mask_column", "annotation")
    webdataset = _run(tmp_path, "out_wds", "--input", f"{tmp_path}/wds/*.tar",
                      "--mask_ext", "seg.png")
    tfrecord = _run(tmp_path, "out_tfr", "--input", f"{tmp_path}/tfr/*", "--input_format",
                    "tfrecord")
    shards = (parquet, webdataset, tfrecord)
    for summary, rows, masks in (files, *shards):
        assert summary["counts"]["inputs"] == summary["counts"]["segmented"] == 4
        assert summary["counts"]["images_with_mask"] == 4
        assert sorted(masks) == ["a.png", "b.png", "sub/c.png", "sub/d.png"]
    assert all(run[2] == files[2] for run in shards)
    exact = [without_calibration(_comparable(run[1]))[0] for run in shards]
    assert all(rows == without_calibration(_comparable(files[1]))[0] for rows in exact)
    evaluations = [without_calibration(run[0]["evaluation"])[0] for run in shards]
    assert all(e == without_calibration(files[0]["evaluation"])[0] for e in evaluations)
    for run in shards:
        assert_close_calibration(run[0], files[0])
    assert parquet[1][0]["source"].split("#")[0].endswith(".parquet")


def test_a_key_column_of_file_names_gives_the_keys_the_files_give():
    """A key column holding file names (``0001.jpg``, as datasets keep them) named masks
    ``0001.jpg.png``, under keys that the same images as files do not get."""
    from segbeam.containers import ContainerFields, parquet_rows

    names = ["a.jpg", "sub/c.PNG", "scan.v2", "plain", "dotted.dir/x", ".png"]
    table = pa.table({"image": pa.array([{"bytes": b"x", "path": None}] * len(names),
                                        IMAGE_STRUCT), "name": names})
    rows = parquet_rows("s.parquet", table, ContainerFields("image", None, "name"))
    assert [row.key for row in rows] == ["a", "sub/c", "scan.v2", "plain", "dotted.dir/x",
                                         ".png"]


def test_broken_parquet_shards_and_rows_are_dead_letters_naming_them(tmp_path):
    data = _dataset(1)
    os.makedirs(tmp_path / "pq")
    table = parquet_table(data, NAMES[:3])
    cells = table.column("image").to_pylist()
    cells[1] = {"bytes": None, "path": "b.png"}  # a row without image bytes
    table = table.set_column(0, "image", pa.array(cells, IMAGE_STRUCT))
    # A mask by path alone (a dataset saved without embedding its files): the image was
    # segmented as if it had no mask, and nothing said why it was not scored.
    cells = table.column("annotation").to_pylist()
    cells[2] = {"bytes": None, "path": "sub/c.png"}
    cells[1] = {"bytes": b"", "path": None}  # b's image is refused first
    table = table.set_column(1, "annotation", pa.array(cells, IMAGE_STRUCT))
    pq.write_table(table, str(tmp_path / "pq" / "good.parquet"))
    whole = io.BytesIO()
    pq.write_table(parquet_table(data, NAMES[3:]), whole)
    (tmp_path / "pq" / "cut.parquet").write_bytes(whole.getvalue()[:-20])  # footer cut off
    duplicate = parquet_table(data, ["a"])
    pq.write_table(duplicate, str(tmp_path / "pq" / "again.parquet"))  # key a, second time
    # A damaged row group failed the whole run; now it alone is lost, with its row count.
    pq.write_table(parquet_table({"e": data["a"], "f": data["b"]}),
                   str(tmp_path / "pq" / "damaged.parquet"), row_group_size=1)
    page = pq.ParquetFile(str(tmp_path / "pq" / "damaged.parquet")).metadata.row_group(1) \
        .column(0).data_page_offset
    damaged = bytearray((tmp_path / "pq" / "damaged.parquet").read_bytes())
    damaged[page:page + 8] = b"\xff" * 8  # row group 1's first page header
    (tmp_path / "pq" / "damaged.parquet").write_bytes(bytes(damaged))
    summary, _, masks = _run(tmp_path, "out", "--input", f"{tmp_path}/pq/*.parquet",
                             "--mask_column", "annotation")
    counts = summary["counts"]
    assert counts["accounted_for"]
    assert (counts["inputs"], counts["segmented"], counts["dead_letters"]) == (7, 1, 6)
    assert sorted(masks) == ["e.png"]
    dead = {(d["source"].rsplit("/", 1)[-1], d["stage"]): d["reason"]
            for path in (tmp_path / "out" / "dead_letters").iterdir()
            for d in map(json.loads, path.read_text().splitlines())}
    assert "no bytes in column 'image', only the path 'b.png': the dataset was saved " \
        "without embedding its files" in dead[("good.parquet#b", "parse")]
    assert "no bytes in mask column 'annotation', only the path 'sub/c.png'" in \
        dead[("c", "parse")]  # the source good.parquet#sub/c, split at its last slash
    assert "not a readable Parquet shard" in dead[("cut.parquet", "read")]
    assert dead[("damaged.parquet", "read")].startswith(
        "row group 1 of this Parquet shard cannot be read, so its 1 row is lost: ")
    assert "2 inputs share the key 'a'" in dead[("again.parquet#a", "pair")]
    assert "2 inputs share the key 'a'" in dead[("good.parquet#a", "pair")]


def test_a_parquet_column_that_does_not_exist_is_a_usage_error(tmp_path, capsys):
    from segbeam.pipeline.cli import main

    os.makedirs(tmp_path / "pq")
    pq.write_table(parquet_table(_dataset(), ["a"]), str(tmp_path / "pq" / "x.parquet"))
    code = main(["run", "--input", f"{tmp_path}/pq/*.parquet", "--mask_column", "mask",
                 "--model", "tiny_fcn", "--num_classes", "3", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "no column 'mask' (--mask_column)" in err[0] and "annotation" in err[0]


def test_a_mask_column_of_nulls_says_that_nothing_was_scored(tmp_path):
    """A Parquet split whose mask column holds only nulls (a test split without annotations)
    scored nothing, and the run said only "0 with masks"."""
    from segbeam.pipeline.report import write_report
    from segbeam.pipeline.run import run
    from segbeam.pipeline.terminal import format_report

    data = _dataset()
    table = parquet_table(data, ["a", "b"])
    table = table.set_column(1, "annotation", pa.nulls(2, IMAGE_STRUCT))
    os.makedirs(tmp_path / "pq")
    pq.write_table(table, str(tmp_path / "pq" / "x.parquet"))
    outcome = run(["--input", f"{tmp_path}/pq/*.parquet", "--mask_column", "annotation",
                   "--model", "tiny_fcn", "--num_classes", "3", "--input_size", "32",
                   "--no-crf", "--output", str(tmp_path / "out"), "--quiet"])
    assert outcome.summary["counts"]["segmented"] == 2
    warning = ("no input found its mask, so nothing was scored: --mask_column annotation named "
               "no mask in any record")
    assert warning in format_report(outcome)
    write_report(str(tmp_path / "out"))
    assert warning in (tmp_path / "out" / "report" / "report.md").read_text()


def test_webdataset_samples_stream_and_say_what_is_wrong():
    data = _dataset(2)
    buffer = io.BytesIO()
    members = tar_members(data, ["a", "b"]) + [("odd.json", b"{}"), ("two.jpg", data["a"][0]),
                                               ("two.png", data["a"][0])]
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    items = list(webdataset_samples("s.tar", io.BytesIO(buffer.getvalue()), "seg.png"))
    assert [(i.key, i.mask_bytes is not None) for i in items[:2]] == [("a", True), ("b", True)]
    assert isinstance(items[2], DeadLetter) and "no image member (found json)" in items[2].reason
    assert isinstance(items[3], DeadLetter) and "several image members" in items[3].reason
    cut = list(webdataset_samples("s.tar", io.BytesIO(buffer.getvalue()[:1500]), "seg.png"))
    assert isinstance(cut[-1], DeadLetter) and cut[-1].stage == "read"
    assert "breaks off" in cut[-1].reason and "s.tar" == cut[-1].source


def test_a_truncated_tar_shard_loses_only_what_follows_the_break(tmp_path):
    data = _dataset(3)
    os.makedirs(tmp_path / "wds")
    write_tar(str(tmp_path / "whole.tar"), tar_members(data))
    whole = (tmp_path / "whole.tar").read_bytes()
    (tmp_path / "wds" / "cut.tar").write_bytes(whole[: len(whole) // 2])
    summary, _, masks = _run(tmp_path, "out", "--input", f"{tmp_path}/wds/*.tar",
                             "--mask_ext", "seg.png")
    counts = summary["counts"]
    assert counts["accounted_for"] and counts["dead_letters"] == 1
    assert counts["segmented"] == len(masks) >= 1


def test_tfrecord_records_are_checked_and_a_damaged_file_keeps_what_precedes_the_damage():
    """Records are read as Beam writes them, each checked against both CRCs; a file that
    breaks off or is damaged gives the records before the damage, then says where."""
    from apache_beam.io.tfrecordio import _TFRecordUtil

    from segbeam.tfrecord import DamagedTFRecord, check_record, read_records, record_spans

    records = [b"first", b"", b"third record" * 50]
    beam_written = io.BytesIO()
    for record in records:
        _TFRecordUtil.write_record(beam_written, record)
    whole = beam_written.getvalue()
    assert list(read_records(io.BytesIO(whole))) == records
    spans = list(record_spans(io.BytesIO(whole), len(whole)))
    assert [whole[s.offset:s.offset + s.length] for s in spans] == records
    assert [check_record(whole[s.offset:s.offset + s.length + 4], s, i)
            for i, s in enumerate(spans)] == records

    def damaged(data):
        read = []
        with pytest.raises(DamagedTFRecord) as caught:
            for record in read_records(io.BytesIO(data)):
                read.append(record)
        return read, caught.value

    third = spans[2].offset - 12
    for cut, what in ((third + 5, "breaks off: 5 of its 12 header bytes"),
                      (len(whole) - 1, "breaks off: 603 of its 604 bytes")):
        read, error = damaged(whole[:cut])
        assert read == records[:2] and (error.good_records, error.offset) == (2, third)
        assert what in str(error) and str(error).startswith(f"record 3 (at byte {third})")
        with pytest.raises(DamagedTFRecord, match="record 3 .* breaks off"):
            list(record_spans(io.BytesIO(whole[:cut]), cut))
    flipped = bytearray(whole)
    flipped[spans[2].offset + 7] ^= 1
    read, error = damaged(bytes(flipped))
    assert read == records[:2] and "has data whose checksum does not match" in str(error)
    with pytest.raises(DamagedTFRecord, match="record 3 .*checksum"):
        check_record(bytes(flipped[spans[2].offset:]), spans[2], 2)
    flipped = bytearray(whole)
    flipped[spans[1].offset - 12] ^= 1  # the second record's length
    read, error = damaged(bytes(flipped))
    assert read == records[:1] and "a length whose checksum does not match" in str(error)
    assert damaged(b"not a TFRecord file")[0] == []


def test_a_damaged_tfrecord_shard_loses_only_what_follows_the_damage(tmp_path):
    """A shard cut short (an upload that broke off) failed the whole run with a traceback and
    a megabyte of the record's bytes in hex, its own good records and every other shard's
    lost; each damaged shard is now one dead letter saying where, after the records before."""
    data = _dataset(6)
    os.makedirs(tmp_path / "tfr")
    (tmp_path / "tfr" / "whole.tfrecord").write_bytes(tfrecord_bytes(data, ["a"]))
    cut = tfrecord_bytes(data, ["b", "sub/c"])
    (tmp_path / "tfr" / "cut.tfrecord").write_bytes(cut[:-10])
    flipped = bytearray(tfrecord_bytes(data, ["sub/d"]))
    flipped[40] ^= 1
    (tmp_path / "tfr" / "flipped.tfrecord.gz").write_bytes(gzip.compress(bytes(flipped)))
    summary, _, masks = _run(tmp_path, "out", "--input", f"{tmp_path}/tfr/*",
                             "--input_format", "tfrecord")
    counts = summary["counts"]
    assert counts["accounted_for"] and sorted(masks) == ["a.png", "b.png"]
    assert (counts["inputs"], counts["segmented"], counts["dead_letters"]) == (4, 2, 2)
    dead = {d["source"].rsplit("/", 1)[-1]: d["reason"]
            for path in (tmp_path / "out" / "dead_letters").iterdir()
            for d in map(json.loads, path.read_text().splitlines())}
    assert set(dead) == {"cut.tfrecord", "flipped.tfrecord.gz"}
    assert "record 2 " in dead["cut.tfrecord"] and "breaks off" in dead["cut.tfrecord"]
    assert "the 1 record before it is read (the last: b)" in dead["cut.tfrecord"]
    assert "checksum does not match; no record before it is intact" in \
        dead["flipped.tfrecord.gz"]
    assert all("\n" not in reason and len(reason) < 300 for reason in dead.values())


@pytest.mark.parametrize("suffix, expected", [(".parquet", "parquet"), (".tar", "webdataset"),
                                              (".tar.gz", "webdataset"), (".png", None)])
def test_the_container_is_told_by_the_suffix(suffix, expected):
    from segbeam.containers import container_format

    assert container_format(f"data/*{suffix}") == expected


def test_a_parquet_shard_on_cloud_storage(tmp_path, gcs_bucket):
    from tests.conftest import put

    gcs = gcs_bucket()
    data = _dataset(4)
    buffer = io.BytesIO()
    pq.write_table(parquet_table(data), buffer, row_group_size=3)
    put(f"{gcs}/data/train-0.parquet", buffer.getvalue())
    from segbeam.pipeline.run import run

    outcome = run(["--input", f"{gcs}/data/*.parquet", "--mask_column", "annotation",
                   "--model", "tiny_fcn", "--num_classes", "3", "--input_size", "32",
                   "--no-crf", "--output", str(tmp_path / "out"), "--no_auth", "--quiet"])
    counts = outcome.summary["counts"]
    assert (counts["inputs"], counts["segmented"], counts["images_with_mask"]) == (4, 4, 4)
    assert sorted(str(p.relative_to(tmp_path / "out" / "masks"))
                  for p in (tmp_path / "out" / "masks").rglob("*.png")) == \
        ["a.png", "b.png", "sub/c.png", "sub/d.png"]


def test_tfrecord_shards_on_cloud_storage_plain_and_gzip(tmp_path, gcs_bucket):
    """TFRecord shards are read by segbeam's own reader (checksums checked) through Beam's
    FileSystems: from gs://, and decompressed by the name's suffix there too."""
    from tests.conftest import put

    gcs = gcs_bucket()
    data = _dataset(11)
    put(f"{gcs}/tfr/s-0.tfrecord", tfrecord_bytes(data, NAMES[:2]))
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(f"{gcs}/tfr/s-1.tfrecord.gz",  # as stored: compressed here
                            compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(gzip.compress(tfrecord_bytes(data, NAMES[2:])))
    from segbeam.pipeline.run import run

    outcome = run(["--input", f"{gcs}/tfr/s-*", "--input_format", "tfrecord", "--model",
                   "tiny_fcn", "--num_classes", "3", "--input_size", "32", "--no-crf",
                   "--output", str(tmp_path / "out"), "--no_auth", "--quiet"])
    counts = outcome.summary["counts"]
    assert (counts["inputs"], counts["segmented"], counts["images_with_mask"]) == (4, 4, 4)


def test_training_reads_parquet_and_webdataset_shards_as_it_reads_files(tmp_path):
    from segbeam.containers import ContainerFields
    from segbeam.pipeline.train import train_command
    from segbeam.training_items import find_shard_entries, find_training_pairs, load_item

    data = _dataset(5)
    write_files(str(tmp_path / "files"), data)
    os.makedirs(tmp_path / "pq")
    pq.write_table(parquet_table(data), str(tmp_path / "pq" / "t.parquet"), row_group_size=3)
    os.makedirs(tmp_path / "wds")
    write_tar(str(tmp_path / "wds" / "t.tar"), tar_members(data) + [("lonely.png", data["a"][0])])

    def by_content(pairs):
        return sorted((image.tobytes() + mask.tobytes() for image, mask in pairs))

    files = by_content(load_item(ref) for ref in find_training_pairs(
        str(tmp_path / "files" / "images" / "**"), str(tmp_path / "files" / "masks")))
    parquet = find_shard_entries(str(tmp_path / "pq" / "*.parquet"),
                                 ContainerFields(mask_column="annotation"))
    tar = find_shard_entries(str(tmp_path / "wds" / "*.tar"), ContainerFields(mask_ext="seg.png"))
    assert len(parquet) == len(tar) == 4  # the sample without a mask is left out
    assert by_content(map(load_item, parquet)) == files == by_content(map(load_item, tar))
    with pytest.raises(ValueError, match="needs --mask_column"):
        find_shard_entries(str(tmp_path / "pq" / "*.parquet"))

    code = train_command(["--model", "tiny_fcn", "--num_classes", "3", "--input_size", "32",
                          "--shards", f"{tmp_path}/pq/*.parquet", "--mask_column", "annotation",
                          "--epochs", "1", "--batch_size", "2", "--output",
                          str(tmp_path / "run"), "--quiet"])
    assert code == 0 and (tmp_path / "run" / "model.keras").exists()


def test_training_on_a_damaged_tfrecord_shard_uses_the_records_before_the_damage(tmp_path,
                                                                              caplog):
    """Training indexed a shard by its length fields alone: a cut-off last record was indexed
    and a damaged record's bytes decoded unchecked. Headers are now checked when indexing,
    each record's data when it is read, and a compressed shard is refused by name."""
    from segbeam.tfrecord import DamagedTFRecord
    from segbeam.training_items import find_shard_entries, find_training_pairs, load_item

    data = _dataset(7)
    write_files(str(tmp_path / "files"), data)
    whole = tfrecord_bytes(data)
    os.makedirs(tmp_path / "tfr")
    (tmp_path / "tfr" / "whole.tfrecord").write_bytes(whole)
    files = sorted(image.tobytes() + mask.tobytes() for image, mask in map(
        load_item, find_training_pairs(str(tmp_path / "files" / "images" / "**"),
                                       str(tmp_path / "files" / "masks"))))
    entries = find_shard_entries(str(tmp_path / "tfr" / "whole.tfrecord"))
    assert sorted(image.tobytes() + mask.tobytes()
                  for image, mask in map(load_item, entries)) == files

    (tmp_path / "tfr" / "cut.tfrecord").write_bytes(whole[:-10])
    with caplog.at_level("WARNING"):
        cut = find_shard_entries(str(tmp_path / "tfr" / "cut.tfrecord"))
    assert cut == [entry._replace(shard=cut[0].shard) for entry in entries[:3]]
    assert "cut.tfrecord is damaged: record 4 " in caplog.text and "breaks off" in caplog.text
    assert "the 3 records before it are used" in caplog.text

    flipped = bytearray(whole)
    flipped[entries[1].offset + 9] ^= 1
    (tmp_path / "tfr" / "flipped.tfrecord").write_bytes(bytes(flipped))
    damaged = find_shard_entries(str(tmp_path / "tfr" / "flipped.tfrecord"))
    assert len(damaged) == 4 and load_item(damaged[0]) is not None
    with pytest.raises(DamagedTFRecord, match="record 2 .*checksum does not match"):
        load_item(damaged[1])

    (tmp_path / "tfr" / "t.tfrecord.gz").write_bytes(gzip.compress(whole))
    with pytest.raises(ValueError, match="uncompressed TFRecord shards .*/t.tfrecord.gz is "
                                         "compressed"):
        find_shard_entries(str(tmp_path / "tfr" / "*.gz"))


def test_a_damaged_tar_member_header_is_said_not_taken_for_the_end_of_the_shard(tmp_path,
                                                                               caplog):
    """``tarfile`` takes a member header that fails its checksum for the end of the archive:
    the samples after it were lost without a word, in run and in training."""
    from segbeam.containers import ContainerFields
    from segbeam.training_items import find_shard_entries, tar_entries

    data = _dataset(8)
    write_tar(str(tmp_path / "whole.tar"), tar_members(data))
    with tarfile.open(str(tmp_path / "whole.tar")) as archive:
        third = archive.getmembers()[4].offset  # sub/c.png, the third sample's first member
    damaged = bytearray((tmp_path / "whole.tar").read_bytes())
    damaged[third + 148:third + 156] = b"0000001\0"  # its header's checksum
    for name, content in (("s.tar", bytes(damaged)), ("s.tar.gz", gzip.compress(damaged))):
        items = list(webdataset_samples(name, io.BytesIO(content), "seg.png"))
        # b, whose members precede the damage, may lack a member: it goes with the rest
        assert items[0].key == "a" and len(items) == 2
        assert isinstance(items[1], DeadLetter) and items[1].source == name
        assert "is damaged after sample 'a'" in items[1].reason
        assert "the samples after it are lost" in items[1].reason

    (tmp_path / "t.tar").write_bytes(bytes(damaged))
    with caplog.at_level("WARNING"):
        entries = tar_entries(str(tmp_path / "t.tar"), "seg.png")
    assert [entry.key for entry in entries] == ["a", "b"]
    assert "t.tar is damaged after 4 members" in caplog.text
    os.makedirs(tmp_path / "junk")
    (tmp_path / "junk" / "x.tar").write_bytes(b"\x07" * 3000)
    with pytest.raises(ValueError, match="the 1 WebDataset shard matching .* holds no training "
                                         "record that can be read"):
        find_shard_entries(str(tmp_path / "junk" / "*.tar"), ContainerFields(mask_ext="seg.png"))


def test_tfrecord_shards_name_their_features_by_flag(tmp_path, capsys):
    """Shards of other conventions (TensorFlow Datasets: ``image``, ``segmentation_mask``)
    were dead letters record by record; --image_feature, --mask_feature and --key_feature name
    the features, and a name the first record lacks is a usage error that lists its
    features."""
    from segbeam.dataset import ShardRecord, parse_shard_record
    from segbeam.containers import ContainerFields
    from segbeam.example_proto import encode_example
    from segbeam.pipeline.cli import main
    from segbeam.pipeline.run import run
    from segbeam.pipeline.terminal import format_report, outcome_warnings

    data = _dataset(9)
    os.makedirs(tmp_path / "tfds")
    (tmp_path / "tfds" / "x.tfrecord").write_bytes(tfrecord_bytes(
        data, features=("image", "segmentation_mask", "image/filename")))
    common = ["--model", "tiny_fcn", "--num_classes", "3", "--input_size", "32", "--no-crf",
              "--quiet", "--input", f"{tmp_path}/tfds/*.tfrecord"]
    outcome = run(common + ["--output", str(tmp_path / "out"), "--image_feature", "image",
                            "--mask_feature", "segmentation_mask"])
    counts = outcome.summary["counts"]
    assert (counts["inputs"], counts["segmented"], counts["images_with_mask"]) == (4, 4, 4)
    assert sorted(str(p.relative_to(tmp_path / "out" / "masks"))
                  for p in (tmp_path / "out" / "masks").rglob("*.png")) == \
        ["a.png", "b.png", "sub/c.png", "sub/d.png"]

    mistyped = run(common + ["--output", str(tmp_path / "typo"), "--image_feature", "image",
                             "--mask_feature", "segmentation_mak"])
    assert mistyped.summary["counts"]["images_with_mask"] == 0
    assert any("--mask_feature segmentation_mak named no mask in any record" in w
               for w in outcome_warnings(mistyped))
    assert "segmentation_mak" in format_report(mistyped)

    for flags, missing in (([], "'image/encoded' (--image_feature)"),
                           (["--image_feature", "image", "--key_feature", "id"],
                            "'id' (--key_feature)")):
        assert main(["run", *common, "--output", str(tmp_path / "bad"), *flags]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and f"has no feature {missing}" in error[0]
        assert "its features are image, image/filename, segmentation_mask" in error[0]

    fields = ContainerFields(image_feature="image", key_feature="id")
    record = encode_example({"image": [data["a"][0]], "id": [1234]})
    assert parse_shard_record(ShardRecord("s@1", "s", record), fields).key == "1234"
    record = encode_example({"image": [data["a"][0]], "id": [b"scan.v2.jpg"]})
    assert parse_shard_record(ShardRecord("s@1", "s", record), fields).key == "scan.v2"
    record = encode_example({"image": [data["a"][0]], "id": [0.5]})
    with pytest.raises(ValueError, match="key feature 'id' holds floats; a key is bytes or an "
                                         "integer"):  # was named by a hash without a word
        parse_shard_record(ShardRecord("s@1", "s", record), fields)
    for doubled in ("image", "image/segmentation/class/encoded"):
        features = {"image": [data["a"][0]], "id": [b"x"],
                    "image/segmentation/class/encoded": [data["a"][1]]}
        features[doubled] = features[doubled] * 2  # two values: the second was dropped unsaid
        with pytest.raises(ValueError, match=f"record 'x' holds 2 values in '{doubled}'"):
            parse_shard_record(ShardRecord("s@1", "s", encode_example(features)), fields)


def test_a_parquet_mask_cell_that_holds_no_mask_bytes_is_refused_unless_it_is_null():
    """A null cell is an image without a mask; an empty one, or one with only a path, was
    read the same way: its image went unscored without a word."""
    from segbeam.containers import ContainerFields, ParquetRow, parse_parquet_row

    fields = ContainerFields(mask_column="m")

    def parsed(cell):
        return parse_parquet_row(ParquetRow("k", "s#k", {"image": b"x", "m": cell}), fields)

    assert parsed(None).mask_bytes is None and parsed({"bytes": None, "path": None}) \
        .mask_bytes is None
    assert parsed({"bytes": b"png", "path": "k.png"}).mask_bytes == b"png"
    for cell in (b"", {"bytes": b"", "path": None}, {"bytes": None, "path": "k.png"}):
        with pytest.raises(ValueError, match="row 'k' has no bytes in mask column 'm'"):
            parsed(cell)


def test_a_runs_own_outputs_inside_a_shard_glob_are_not_read_as_shards(tmp_path):
    """Shard globs were matched without leaving out the run's own outputs: a second run into
    a folder inside ``data/**.parquet`` read the first run's metrics Parquet as a shard."""
    data = _dataset(10)
    os.makedirs(tmp_path / "data")
    pq.write_table(parquet_table(data), str(tmp_path / "data" / "train.parquet"))
    for _ in range(2):
        summary, _, masks = _run(tmp_path, "data/out", "--input",
                                 f"{tmp_path}/data/**.parquet", "--mask_column", "annotation")
        counts = summary["counts"]
        assert (counts["inputs"], counts["segmented"], counts["dead_letters"]) == (4, 4, 0)
    assert len(masks) == 4


def test_a_mask_column_or_feature_that_names_the_images_is_a_usage_error(tmp_path, capsys):
    """--mask_column image read each image as its own mask: colour images were dead letters,
    but grayscale ones were scored, their gray levels as class ids."""
    from segbeam.pipeline.cli import main

    os.makedirs(tmp_path / "pq")
    pq.write_table(parquet_table(_dataset(), ["a"]), str(tmp_path / "pq" / "x.parquet"))
    common = ["--model", "tiny_fcn", "--num_classes", "3", "--output", str(tmp_path / "o")]
    for flags in (["--input", f"{tmp_path}/pq/*.parquet", "--mask_column", "image"],
                  ["--input", f"{tmp_path}/x.tfrecord", "--image_feature", "i",
                   "--mask_feature", "i"]):
        assert main(["run", *flags, *common]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "names the images' own" in err[0]
    assert main(["train", "--shards", f"{tmp_path}/pq/*.parquet", "--mask_column", "image",
                 "--input_size", "32", *common]) == 2
    assert "names the images' own column (--image_column)" in capsys.readouterr().err
    # A key column or feature that names the images (or masks): their bytes named outputs.
    for flags, message in (
            (["--input", f"{tmp_path}/pq/*.parquet", "--key_column", "image"],
             "--key_column image names the images' own column (--image_column)"),
            (["--input", f"{tmp_path}/pq/*.parquet", "--mask_column", "annotation",
              "--key_column", "annotation"], "names the masks' own column (--mask_column)"),
            (["--input", f"{tmp_path}/x.tfrecord", "--key_feature", "image/encoded"],
             "--key_feature image/encoded names the images' own feature")):
        assert main(["run", *flags, *common]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_a_key_column_that_holds_no_names_refuses_its_rows():
    """A --key_column of image structs named outputs by the struct's printed bytes; one of
    floats by a spelling ("2.0") that a float's rounding can change."""
    from segbeam.containers import ContainerFields, parquet_rows, parse_parquet_row

    table = parquet_table(_dataset(2), NAMES[:2])
    table = table.append_column("score", pa.array([1.5, 2.0]))
    table = table.append_column("name", pa.array(["x.png", None]))
    for column, refused in (("label", None), ("name", None), ("score", "float"),
                            ("image", "dict")):
        fields = ContainerFields("image", "annotation", column)
        rows = list(parquet_rows("s.parquet", table, fields))
        assert all(len(row.key) < 40 for row in rows)  # never the bytes printed
        for row in rows:
            if refused is None:
                parse_parquet_row(row, fields)
            else:
                with pytest.raises(InvalidInputError, match=f"--key_column {column!r} holds "
                                                            f"{refused}, not a name"):
                    parse_parquet_row(row, fields)
    named = [row.key for row in parquet_rows("s.parquet", table,
                                             ContainerFields("image", "annotation", "name"))]
    assert named == ["x", "b"]  # without a name, the stored path names the row


def test_nightly_runs_over_shards_skip_records_and_segment_one_whose_mask_is_gone(tmp_path):
    """Shard records under --skip_existing --run_date: a second night skips every record
    (its bytes hashed from the shard, no inference); a record whose standing mask PNG was
    deleted from the first night's partition is segmented again, from the shard's bytes."""
    from segbeam.pipeline.run import run

    os.makedirs(tmp_path / "tf")
    (tmp_path / "tf" / "part-0.tfrecord").write_bytes(tfrecord_bytes(_dataset()))
    out = tmp_path / "nightly"

    def night(date):
        outcome = run(["--input", f"{tmp_path}/tf/*.tfrecord", "--model", "tiny_fcn",
                       "--num_classes", "3", "--input_size", "32", "--crf_iterations", "2",
                       "--output", str(out), "--skip_existing", "--run_date", date, "--quiet"])
        counts = outcome.summary["counts"]
        assert counts["accounted_for"]
        return (counts["segmented"], counts["skipped"]), outcome.manifest["beam_counters"]

    assert night("2026-11-20")[0] == (4, 0)
    assert night("2026-11-21")[0] == (0, 4)
    os.remove(out / "date=2026-11-20" / "masks" / "sub" / "c.png")
    (counts, counters) = night("2026-11-22")
    assert counts == (1, 3) and counters["skipped_rows_without_mask_file"] == 1
    assert [str(p.relative_to(out)) for p in out.rglob("date=2026-11-22/masks/**/*.png")] == [
        "date=2026-11-22/masks/sub/c.png"]
