import numpy as np
import pytest

from segbeam.example_proto import ExampleDecodeError, decode_example, encode_example


def test_our_encoding_is_parsed_by_tensorflow():
    tf = pytest.importorskip("tensorflow")
    data = encode_example({"image/encoded": [b"\x89PNG..."], "image/height": [360, -2],
                           "score": [0.5, 1.25], "image/filename": [b"a.png"]})
    example = tf.train.Example.FromString(data)
    feature = example.features.feature
    assert feature["image/encoded"].bytes_list.value == [b"\x89PNG..."]
    assert list(feature["image/height"].int64_list.value) == [360, -2]
    assert list(feature["score"].float_list.value) == [0.5, 1.25]
    assert data == example.SerializeToString(deterministic=True)


def test_tensorflow_encoding_is_parsed_by_us():
    tf = pytest.importorskip("tensorflow")
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"abc", b""])),
        "n": tf.train.Feature(int64_list=tf.train.Int64List(value=[1, 2 ** 40, -7])),
        "f": tf.train.Feature(float_list=tf.train.FloatList(value=[np.float32(0.1)])),
    }))
    parsed = decode_example(example.SerializeToString())
    assert parsed["image/encoded"] == [b"abc", b""]
    assert parsed["n"] == [1, 2 ** 40, -7]
    assert parsed["f"] == [pytest.approx(0.1)]


def test_garbage_is_reported():
    with pytest.raises(ExampleDecodeError):
        decode_example(b"\x0a\xff\xff\xff")
