import io

import numpy as np
from PIL import Image

from segbeam.masks_png import encode_label_png, voc_palette


def test_voc_palette_first_colours():
    palette = voc_palette()
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[15].tolist() == [192, 128, 128]  # VOC "person"


def test_label_png_pixel_values_are_class_ids():
    labels = np.array([[0, 1, 2], [20, 255, 7]], dtype=np.uint8)
    image = Image.open(io.BytesIO(encode_label_png(labels)))
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), labels)
    wide = np.array([[0, 300]], dtype=np.uint16)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_label_png(wide)))),
                                  wide)
