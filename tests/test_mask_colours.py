"""Colour-coded masks: exact colours read through a palette (a preset's or --mask_palette),
unknown colours counted as unexpected, never guessed."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from segbeam.dataset_presets import resolve_convention
from segbeam.decode import InvalidInputError, decode_mask
from segbeam.labels import MaskLabels, format_values
from segbeam.mask_colours import colour_code, decode_colours, format_value, parse_mask_palette
from segbeam.masks_png import encode_label_png, palette_bytes, voc_palette


def _paint(rows):
    """An HxWx3 mask from rows of RGB triples."""
    return np.array(rows, dtype=np.uint8)


def test_exact_colours_become_values_and_others_are_reported():
    colours = (((128, 64, 128), 0), ((0, 0, 142), 1))
    stored, unknown, codes = decode_colours(
        _paint([[(128, 64, 128), (0, 0, 142), (0, 0, 143)]]), colours)
    assert stored[0, :2].tolist() == [0, 1] and unknown.tolist() == [[False, False, True]]
    assert codes == (colour_code(0, 0, 143),) and format_value(codes[0]) == "#00008f"
    assert format_value(7) == "7"


def test_labels_read_colour_masks_and_count_unknown_colours():
    labels = MaskLabels(2, 255, colours=(((10, 20, 30), 0), ((40, 50, 60), 1)))
    mask, count, values = labels.prepare(_paint([[(10, 20, 30), (40, 50, 60), (9, 9, 9)]]))
    assert mask.tolist() == [[0, 1, 255]]  # the unknown colour is not scored
    assert count == 1 and format_values(values) == "[#090909]"
    strict = MaskLabels(2, 255, strict=True, colours=labels.colours)
    with pytest.raises(InvalidInputError, match="#090909"):
        strict.prepare(_paint([[(9, 9, 9)]]))
    with pytest.raises(InvalidInputError, match="--mask_palette"):
        MaskLabels(2, 255).prepare(_paint([[(10, 20, 30)]]))


def test_cityscapes_colour_masks_follow_the_official_ids_to_train_ids():
    convention = resolve_convention("cityscapes", None, None, None, None)
    labels = MaskLabels(convention.num_classes, convention.ignore_index,
                        label_map=convention.label_map, colours=convention.mask_colours)
    painted = _paint([[(128, 64, 128), (244, 35, 232), (0, 0, 142), (119, 11, 32)],
                      [(0, 0, 0), (250, 170, 160), (153, 153, 153), (1, 2, 3)]])
    mask, count, values = labels.prepare(painted)
    # road 7 -> 0, sidewalk 8 -> 1, car 26 -> 13, bicycle 33 -> 18; unlabeled and parking are
    # ignored; grey reads as pole (17 -> 5, polegroup shares it); 1,2,3 is no colour of theirs
    assert mask.tolist() == [[0, 1, 13, 18], [255, 255, 5, 255]]
    assert count == 1 and values == (colour_code(1, 2, 3),)


def test_camvid_colour_labels_read_with_the_preset():
    convention = resolve_convention("camvid", None, None, None, None)
    labels = MaskLabels(convention.num_classes, convention.ignore_index,
                        colours=convention.mask_colours)
    painted = _paint([[(128, 128, 128), (0, 0, 192), (60, 40, 222), (0, 0, 0),
                       (128, 0, 192)]])  # sky, sidewalk twice, void, lane marking
    mask, count, values = labels.prepare(painted)
    assert mask.tolist() == [[0, 4, 4, 11, 11]]
    assert count == 1 and format_values(values) == "[#8000c0]"


def test_mask_palette_files(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"#804080": 0, "0, 0, 142": 1}))
    (tmp_path / "p.csv").write_text("r,g,b,value\n128,64,128,0\n0,0,142,1\n")
    (tmp_path / "hex.csv").write_text("#804080,0\n#00008e,1\n")
    expected = (((0, 0, 142), 1), ((128, 64, 128), 0))
    for name in ("p.json", "p.csv", "hex.csv"):
        assert parse_mask_palette(str(tmp_path / name)) == expected
    (tmp_path / "bad.csv").write_text("128,64,128,300\n")
    with pytest.raises(ValueError, match="is not a colour"):
        parse_mask_palette(str(tmp_path / "bad.csv"))
    # one colour given twice (a JSON object's key, or one colour in two spellings) kept its
    # last value without a word
    (tmp_path / "twice.json").write_text('{"#804080": 0, "0,0,142": 1, "#804080": 2}')
    (tmp_path / "spelt_twice.csv").write_text("#804080,0\n128,64,128,3\n")
    for name, second in (("twice.json", 2), ("spelt_twice.csv", 3)):
        with pytest.raises(ValueError, match=rf"gives colour \(128, 64, 128\) twice, as 0 and "
                                             rf"as {second}; name each colour once"):
            parse_mask_palette(str(tmp_path / name))


def test_a_run_scores_colour_masks_through_a_palette_file(tmp_path):
    from segbeam.pipeline.run import run

    rng = np.random.default_rng(0)
    palette = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"i{index}.png")
        classes = rng.integers(0, 3, (16, 16))
        painted = np.array(palette, np.uint8)[classes]
        painted[0, 0] = (7, 7, 7)  # one pixel of a colour the palette lacks
        Image.fromarray(painted).save(tmp_path / "masks" / f"i{index}.png")
    (tmp_path / "palette.csv").write_text("".join(f"{r},{g},{b},{value}\n" for value, (r, g, b)
                                                  in enumerate(palette)))
    argv = ["--input", f"{tmp_path}/images/*.png", "--masks", str(tmp_path / "masks"),
            "--model", "tiny_fcn", "--num_classes", "3", "--input_size", "16", "--no-crf",
            "--quiet"]
    outcome = run(argv + ["--mask_palette", str(tmp_path / "palette.csv"),
                          "--output", str(tmp_path / "out")])
    counts, labels = outcome.summary["counts"], outcome.summary["labels"]
    assert counts["images_with_mask"] == 3 and counts["dead_letters"] == 0
    assert labels["unexpected_pixels"] == 3 and labels["unexpected_values"] == \
        [colour_code(7, 7, 7)]
    assert outcome.summary["evaluation"]["raw"]["labelled_pixels"] == 3 * (16 * 16 - 1)
    without = run(argv + ["--output", str(tmp_path / "out2")])
    assert without.summary["counts"]["dead_letters"] == 3  # refused, with the hint, not guessed


def _palette_png(indices: np.ndarray, palette) -> bytes:
    """A palette (P) PNG of ``indices`` drawn with ``palette`` (RGB per index)."""
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(np.asarray(palette, dtype=np.uint8).ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _camvid_labels() -> MaskLabels:
    convention = resolve_convention("camvid", None, None, None, None)
    return MaskLabels(convention.num_classes, convention.ignore_index,
                      colours=convention.mask_colours)


def test_a_colour_mask_saved_as_a_palette_png_is_read_by_its_colours():
    """An image editor (or PIL's convert('P')) stores CamVid's colour labels with a palette of
    its own order: the indices are arbitrary, the colours are what the mask says."""
    sky, road, car = (128, 128, 128), (128, 64, 128), (64, 0, 128)
    indices = np.array([[0, 0, 2], [1, 1, 2]])
    data = _palette_png(indices, [sky, road, car])
    mask, count, _ = _camvid_labels().prepare(decode_mask(data, colour=True))
    assert mask.tolist() == [[0, 0, 8], [3, 3, 8]] and count == 0  # not 0, 1, 2


def test_palette_masks_whose_palette_is_only_for_viewing_keep_their_indices():
    """VOC's colour map and grey levels colour class ids for viewing: the index is the value,
    even where a palette colour happens to be another class's mask colour (VOC draws index 7
    in CamVid's sky grey, index 0 in its void black)."""
    indices = np.array([[0, 3, 7], [7, 3, 0]])
    for palette in (voc_palette(), [(value,) * 3 for value in range(256)]):
        mask, count, _ = _camvid_labels().prepare(
            decode_mask(_palette_png(indices, palette), colour=True))
        assert mask.tolist() == indices.tolist() and count == 0


def test_masks_written_by_a_run_read_back_as_the_same_classes():
    """A run's mask PNGs hold class ids drawn in the preset's colours. Read back under the
    Cityscapes preset (colours name label ids, which map to train ids), their colours say the
    classes; their indices, taken as label ids, would not (train id 0, road, is label id 0,
    unlabeled)."""
    convention = resolve_convention("cityscapes", None, None, None, None)
    labels = MaskLabels(convention.num_classes, convention.ignore_index,
                        label_map=convention.label_map, colours=convention.mask_colours)
    classes = np.array([[0, 1, 13], [18, 0, 11]], dtype=np.uint8)
    data = encode_label_png(classes, palette_bytes(convention.palette))
    mask, count, _ = labels.prepare(decode_mask(data, colour=True))
    assert mask.tolist() == classes.tolist() and count == 0


def test_a_palette_mask_that_reads_two_ways_is_refused_with_both_ways_out():
    indices = np.array([[0, 1, 2]])  # index 0 drawn in road's colour, 1 and 2 in none
    data = _palette_png(indices, [(128, 64, 128), (1, 2, 3), (4, 5, 6)])
    with pytest.raises(InvalidInputError, match="reads two ways.*index 0 is drawn #804080.*"
                                                "convert it to RGB.*grayscale"):
        _camvid_labels().prepare(decode_mask(data, colour=True))
    assert decode_mask(data).tolist() == indices.tolist()  # no colours configured: indices


def test_a_run_scores_indexed_colour_masks_and_dead_letters_the_ambiguous_one(tmp_path):
    """Every input is accounted for: a colour mask saved with its own palette is scored by
    colour, a palette mask that reads two ways is a dead letter at decode saying so."""
    from segbeam.pipeline.run import run

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("indexed", "ambiguous", "plain"):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"{name}.png")
    sky, road = (128, 128, 128), (128, 64, 128)
    indices = np.zeros((8, 8), np.uint8)
    indices[4:] = 1
    (tmp_path / "masks" / "indexed.png").write_bytes(_palette_png(indices, [road, sky]))
    (tmp_path / "masks" / "ambiguous.png").write_bytes(
        _palette_png(indices, [road, (1, 2, 3)]))
    Image.fromarray(np.full((8, 8), 3, np.uint8)).save(tmp_path / "masks" / "plain.png")
    outcome = run(["--input", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                   "--model", "tiny_fcn", "--dataset", "camvid", "--no-crf", "--quiet",
                   "--output", str(tmp_path / "out")])
    counts = outcome.summary["counts"]
    assert counts["accounted_for"] and counts["inputs"] == 3
    assert (counts["segmented"], counts["dead_letters_by_stage"]) == (2, {"decode": 1})
    letters = [json.loads(line) for path in (tmp_path / "out" / "dead_letters").rglob("*.jsonl")
               for line in path.read_text().splitlines() if line]
    assert [d["key"] for d in letters] == ["ambiguous"]
    assert "palette PNG that reads two ways" in letters[0]["reason"]
    # indexed: road on top (class 3), sky below (0), read by colour; plain: all road
    truth = outcome.summary["evaluation"]["raw"]["confusion"]
    assert [sum(row) for row in truth] == [32, 0, 0, 96] + [0] * 7
    assert outcome.summary["labels"]["ignored_pixels"] == 0
