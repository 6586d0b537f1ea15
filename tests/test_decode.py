import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import jpeg_bytes, png_bytes, random_image
from segbeam.decode import InvalidInputError, decode_image, decode_mask, decode_pair


def test_rgb_png_round_trips(rng):
    image = random_image(rng, 5, 7)
    decoded = decode_image(png_bytes(image))
    assert decoded.dtype == np.uint8 and decoded.flags.writeable
    np.testing.assert_array_equal(decoded, image)


def test_jpeg_decodes_close_to_its_source(rng):
    image = np.full((16, 16, 3), (200, 30, 90), dtype=np.uint8)
    decoded = decode_image(jpeg_bytes(image))
    assert decoded.shape == (16, 16, 3)
    assert np.abs(decoded.astype(int) - image).max() < 8


def test_grayscale_becomes_three_equal_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    decoded = decode_image(png_bytes(gray))
    assert decoded.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], gray)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue())
    np.testing.assert_array_equal(decoded[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize("values, peak", [([[0, 100, 4095]], 4095), ([[0, 65535]], 65535)])
def test_a_sixteen_bit_image_gives_its_peak_and_others_none(values, peak):
    """12-bit data in a 16-bit file came out dark (at most 15 of 255) without a word: the
    peak lets the run count such images and warn."""
    from segbeam.decode import decode_input

    buffer = io.BytesIO()
    Image.fromarray(np.array(values, dtype=np.uint16)).save(buffer, format="PNG")
    decoded = decode_input(buffer.getvalue(), None)
    assert decoded.high_depth_peak == peak
    assert decoded.image.max() == round(peak * 255 / 65535)
    assert decode_input(png_bytes(np.full((2, 3, 3), 255, np.uint8)), None).high_depth_peak == 0


@pytest.mark.parametrize("channels, file_format", [(3, "PNG"), (4, "PNG"), (2, "PNG"),
                                                   (3, "TIFF")])
def test_sixteen_bit_colour_gives_its_peak_as_grayscale_does(channels, file_format):
    """Pillow reads 16-bit colour PNGs and TIFFs to 8 bits (the high byte): 12-bit data came
    out dark, as in grayscale, but only grayscale was counted and warned about."""
    from tests.conftest import colour16_bytes
    from segbeam.decode import DARK_HIGH_DEPTH_PEAK, decode_input

    ramp = np.arange(6 * 7, dtype=np.uint16).reshape(6, 7, 1)

    def peak(values):
        if channels in (2, 4):  # an opaque alpha channel last
            values = np.concatenate([values[..., :channels - 1],
                                     np.full_like(values[..., :1], 65535)], axis=2)
        return decode_input(colour16_bytes(values, file_format), None).high_depth_peak

    twelve_bit = np.repeat(ramp * 97, 3, axis=2)  # peaks at 3977 of 4095
    assert twelve_bit.max() == 3977 and 0 < peak(twelve_bit) < DARK_HIGH_DEPTH_PEAK
    assert peak(np.repeat(ramp * 1500, 3, axis=2)) >= DARK_HIGH_DEPTH_PEAK
    assert peak(np.zeros((6, 7, 3), np.uint16)) == 0


def test_a_16_bit_colour_mask_is_refused_not_read_by_its_high_bytes():
    """Pillow reads 16-bit colour to 8 bits by the high byte: a 16-bit RGB mask of gray class
    ids 0..2 read as all 0, every pixel scored as class 0."""
    from tests.conftest import colour16_bytes

    ids = np.repeat(np.arange(12, dtype=np.uint16).reshape(3, 4, 1) % 3, 3, axis=2)
    with pytest.raises(InvalidInputError, match="stores 16 bits per colour sample"):
        decode_mask(colour16_bytes(ids))
    with pytest.raises(InvalidInputError, match="stores 16 bits per colour sample"):
        decode_mask(colour16_bytes(ids * 257), colour=True)
    np.testing.assert_array_equal(decode_mask(png_bytes(ids.astype(np.uint8))), ids[..., 0])
    sixteen_bit_gray = io.BytesIO()
    Image.fromarray(ids[..., 0]).save(sixteen_bit_gray, format="PNG")
    np.testing.assert_array_equal(decode_mask(sixteen_bit_gray.getvalue()), ids[..., 0])


def test_eight_bit_colour_gives_no_peak_however_dark():
    from segbeam.decode import decode_input

    dark = np.full((4, 5, 3), 3, np.uint8)
    assert decode_input(png_bytes(dark), None).high_depth_peak == 0
    buffer = io.BytesIO()
    Image.fromarray(dark).save(buffer, format="TIFF")
    assert decode_input(buffer.getvalue(), None).high_depth_peak == 0


def test_a_float_tiff_in_0_1_is_read_as_0_1_and_one_with_nan_or_a_scale_unsure_refused():
    """Floats in [0, 1] were scaled as if 255 were white: the image came out black; so did
    floats just above 1."""
    def tiff(values):
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(values, np.float32), mode="F").save(buffer, format="TIFF")
        return buffer.getvalue()

    decoded = decode_image(tiff([[0.0, 0.5, 1.0]]))
    assert decoded[..., 0].tolist() == [[0, 128, 255]]
    assert (decoded[..., 2] == decoded[..., 0]).all()
    assert decode_image(tiff([[0.0, 100.0, 255.0]]))[..., 0].tolist() == [[0, 100, 255]]
    assert decode_image(tiff([[0.0, 16.0]]))[..., 0].tolist() == [[0, 16]]
    # [0, 1] data a resampling pushed just above 1 was read on the 0..255 scale: black
    for overshoot in (1.0002, 15.9):
        with pytest.raises(InvalidInputError, match=f"values up to {overshoot}: above"):
            decode_image(tiff([[0.0, 0.5, overshoot]]))
    with pytest.raises(InvalidInputError, match="NaN or infinite values"):
        decode_image(tiff([[0.0, np.nan]]))
    with pytest.raises(InvalidInputError, match="holds negative values"):  # standardised data
        decode_image(tiff([[-1.5, 0.3]]))
    # 32-bit values beyond 16 bits were clipped to white without a word
    with pytest.raises(InvalidInputError, match="values up to 100000, beyond 16 bits"):
        decode_image(tiff([[0.0, 100000.0]]))
    wide = io.BytesIO()
    Image.fromarray(np.array([[0, 70000]], np.int32), mode="I").save(wide, format="TIFF")
    with pytest.raises(InvalidInputError, match="values up to 70000, beyond 16 bits"):
        decode_image(wide.getvalue())


def test_rgba_is_composited_over_black():
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque
    rgba[0, 1] = (200, 100, 50, 0)  # fully transparent
    decoded = decode_image(png_bytes(rgba))
    np.testing.assert_array_equal(decoded[0], [[200, 100, 50], [0, 0, 0]])


def test_palette_image_is_expanded_to_its_colours():
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette_image.putpixel((1, 0), 1)
    buffer = io.BytesIO()
    palette_image.save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_image(buffer.getvalue())[0], [[0, 0, 0], [10, 20, 30]])


def test_exif_orientation_is_applied():
    image = np.zeros((2, 4, 3), dtype=np.uint8)  # 4 wide, 2 high
    image[0, 0] = 255  # top-left marker
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", exif=exif)
    decoded = decode_image(buffer.getvalue())
    assert decoded.shape == (4, 2, 3)  # displayed as 2 wide, 4 high
    assert decoded[0, 1].tolist() == [255, 255, 255]  # the marker is now top-right


@pytest.mark.parametrize("data, fragment", [
    (b"", "empty"),
    (b"hello, not an image", "not in an image format"),
])
def test_unusable_bytes_are_rejected_with_a_reason(data, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        decode_image(data)


def test_truncated_png_is_rejected(rng):
    data = png_bytes(random_image(rng, 64, 64))
    with pytest.raises(InvalidInputError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_rejected_before_decoding():
    data = png_bytes(np.zeros((100, 100, 3), dtype=np.uint8))
    with pytest.raises(InvalidInputError, match="over the limit of 9,999"):
        decode_image(data, max_pixels=9_999)
    assert decode_image(data, max_pixels=10_000).shape == (100, 100, 3)


def test_masks_keep_their_class_ids():
    mask = np.array([[0, 1, 11], [255, 3, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_mask(png_bytes(mask)), mask)  # mode L
    palette_mask = Image.frombytes("P", (3, 2), mask.tobytes())
    palette_mask.putpalette(list(range(256)) * 3)  # VOC-style: palette index = class id
    buffer = io.BytesIO()
    palette_mask.save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_mask(buffer.getvalue()), mask)


def test_colour_mask_is_refused():
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[0, 0] = (128, 0, 0)
    with pytest.raises(InvalidInputError, match="colour"):
        decode_mask(png_bytes(colour))


@pytest.mark.parametrize("channels", [2, 4])
def test_a_mask_with_transparent_pixels_is_refused_and_an_opaque_one_read(channels):
    mask = np.full((4, 5, channels), 3, dtype=np.uint8)
    mask[..., -1] = 255
    np.testing.assert_array_equal(decode_mask(png_bytes(mask)), np.full((4, 5), 3))
    mask[0, :2, -1] = 0  # two pixels "unlabelled" by transparency, class 3 under them
    with pytest.raises(InvalidInputError, match=r"mask has 2 transparent or translucent pixels "
                       r"\((LA|RGBA) alpha below 255\).*save the mask without alpha"):
        decode_mask(png_bytes(mask))


def test_a_jpeg_mask_is_refused_since_its_compression_moves_class_ids():
    mask = np.full((32, 32), 2, dtype=np.uint8)
    mask[5:21, 7:27] = 11  # a class-11 region on class 2, edges off JPEG's 8x8 blocks
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="JPEG")  # Pillow's default quality, 75
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
    assert set(np.unique(decoded)) - {2, 11}  # what reading it would score: other classes
    with pytest.raises(InvalidInputError, match="mask is a JPEG image: its lossy compression"):
        decode_mask(buffer.getvalue())
    np.testing.assert_array_equal(decode_mask(png_bytes(mask)), mask)


def test_a_lossy_webp_mask_is_refused_and_a_lossless_one_read():
    mask = np.full((32, 32), 2, dtype=np.uint8)
    mask[5:21, 7:27] = 11
    animated = {"save_all": True, "duration": 100,
                "append_images": [Image.fromarray(mask + 50), Image.fromarray(mask + 100)]}
    for options in ({}, {"lossless": True}, {"lossless": True, **animated}):
        buffer = io.BytesIO()
        Image.fromarray(mask).save(buffer, format="WEBP", **options)
        if options:
            np.testing.assert_array_equal(decode_mask(buffer.getvalue()), mask)
            continue
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))
        assert set(np.unique(decoded)) - {2, 11}  # lossy WebP moves class ids too
        with pytest.raises(InvalidInputError, match="mask is a lossy WebP image"):
            decode_mask(buffer.getvalue())
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="WEBP", **animated)
    assert b"ANMF" in buffer.getvalue()
    with pytest.raises(InvalidInputError, match="lossy WebP"):  # an animation's first frame
        decode_mask(buffer.getvalue())


def test_a_bilevel_mask_stores_classes_0_and_1():
    """A 1-bit PNG read through Pillow's convert('L') gave 255 for its foreground: the
    default ignore index, so every foreground pixel went unscored without a word."""
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:5] = True
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "1"
    np.testing.assert_array_equal(decode_mask(buffer.getvalue()), mask.astype(np.uint8))


def test_a_mask_matching_the_image_before_its_exif_rotation_is_refused_with_the_cause(rng):
    stored = random_image(rng, 4, 6)  # 6 wide, 4 high as stored; shown 4 wide, 6 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", exif=exif)
    mask = png_bytes(np.zeros((4, 6), dtype=np.uint8))  # drawn on the stored pixels
    with pytest.raises(InvalidInputError, match="mask is 6x4 but its image is 4x6 .*turned "
                                                "by its EXIF orientation"):
        decode_pair(buffer.getvalue(), mask)
    with pytest.raises(InvalidInputError, match="pixel for pixel$"):  # no orientation: no hint
        decode_pair(png_bytes(random_image(rng, 6, 4)), mask)


def test_mask_size_must_match_image(rng):
    image = png_bytes(random_image(rng, 4, 6))
    with pytest.raises(InvalidInputError, match="mask is 5x4 but its image is 6x4"):
        decode_pair(image, png_bytes(np.zeros((4, 5), dtype=np.uint8)))
    decoded, mask = decode_pair(image, png_bytes(np.ones((4, 6), dtype=np.uint8)))
    assert decoded.shape == (4, 6, 3) and mask.shape == (4, 6)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_a_multi_frame_file_gives_its_first_frame_and_its_frame_count(fmt):
    from segbeam.decode import decode_image_frames, decode_input

    frames = [Image.new("RGB", (12, 8), (value, value, value)) for value in (30, 130, 230)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:])
    image, count = decode_image_frames(buffer.getvalue())
    assert count == 3 and image.shape == (8, 12, 3)
    assert abs(int(image.mean()) - 30) <= 2  # the first frame, not the last
    assert decode_input(buffer.getvalue(), None).frames == 3
    assert decode_input(png_bytes(np.zeros((8, 12, 3), np.uint8)), None).frames == 1


def _with_orientation(array: np.ndarray, orientation: int, file_format: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=file_format, exif=exif)
    return buffer.getvalue()


def test_an_image_its_exif_orientation_turns_apart_from_its_mask_is_flagged(rng):
    """A half turn (orientation 3) keeps the shape, so a mask drawn on the stored pixels was
    scored upside down against the image as shown, without a word; now the decode says the
    image was turned and its mask was not."""
    from segbeam.decode import decode_input

    stored = random_image(rng, 4, 6)
    mask = np.arange(24, dtype=np.uint8).reshape(4, 6) % 3
    turned = decode_input(_with_orientation(stored, 3), png_bytes(mask))
    assert turned.turned_apart and turned.image.shape[:2] == turned.mask.shape
    # A mask turned by the same tag, an image without one, or no mask: nothing to say.
    assert not decode_input(_with_orientation(stored, 3),
                            _with_orientation(mask, 3, "PNG")).turned_apart
    assert not decode_input(png_bytes(stored), png_bytes(mask)).turned_apart
    assert not decode_input(_with_orientation(stored, 1), png_bytes(mask)).turned_apart
    assert not decode_input(_with_orientation(stored, 3), None).turned_apart


def test_a_run_counts_and_warns_of_images_turned_apart_from_their_masks(rng, tmp_path):
    from segbeam.decode import TURNED_APART_COUNTER
    from segbeam.pipeline.run import run
    from segbeam.pipeline.terminal import format_report

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name, orientation in (("a", 3), ("b", 1), ("c", 2)):
        (tmp_path / "images" / f"{name}.jpg").write_bytes(
            _with_orientation(random_image(rng, 16, 16), orientation))
        (tmp_path / "masks" / f"{name}.png").write_bytes(png_bytes(np.zeros((16, 16), np.uint8)))
    outcome = run(["--input", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                   "--model", "tiny_fcn", "--num_classes", "3", "--no-crf", "--quiet",
                   "--output", str(tmp_path / "out")])
    assert outcome.manifest["beam_counters"][TURNED_APART_COUNTER] == 2
    assert "WARNING: 2 images with a mask carry an EXIF orientation that turns or mirrors " \
           "the image, and not the mask" in format_report(outcome)
