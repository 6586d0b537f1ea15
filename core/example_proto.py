"""A small codec for ``tf.train.Example`` records, so that TFRecord shards can be read and
written without TensorFlow (workers may run Keras on JAX or PyTorch).

Only what Examples use is implemented: a map from feature name to a bytes, float or int64 list.
The wire format is protobuf's; tests check it against TensorFlow's own implementation.
"""

from __future__ import annotations

import struct
from typing import Union

FeatureValue = Union[list[bytes], list[float], list[int]]

# The DeepLab / TF-Models segmentation convention, which `segbeam shard` writes and the
# pipeline and training read.
IMAGE_FEATURE = "image/encoded"
FILENAME_FEATURE = "image/filename"
FORMAT_FEATURE = "image/format"
HEIGHT_FEATURE = "image/height"
WIDTH_FEATURE = "image/width"
MASK_FEATURE = "image/segmentation/class/encoded"
MASK_FORMAT_FEATURE = "image/segmentation/class/format"

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_BYTES_LIST, _FLOAT_LIST, _INT64_LIST = 1, 2, 3


class ExampleDecodeError(ValueError):
    """The bytes are not a well-formed tf.train.Example."""


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values are sent as their two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    head = _varint((number << 3) | wire_type)
    if wire_type == _LENGTH:
        return head + _varint(len(payload)) + payload
    return head + payload


def _encode_feature(values: FeatureValue) -> bytes:
    if all(isinstance(v, (bytes, bytearray)) for v in values):
        body = b"".join(_field(1, _LENGTH, bytes(v)) for v in values)
        return _field(_BYTES_LIST, _LENGTH, body)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        body = _field(1, _LENGTH, b"".join(_varint(v) for v in values))
        return _field(_INT64_LIST, _LENGTH, body)
    if all(isinstance(v, (int, float)) for v in values):
        body = _field(1, _LENGTH, struct.pack(f"<{len(values)}f", *values))
        return _field(_FLOAT_LIST, _LENGTH, body)
    raise TypeError("an Example feature must be a list of bytes, of ints or of floats; "
                    f"received {[type(v).__name__ for v in values]}")


def encode_example(features: dict[str, FeatureValue]) -> bytes:
    """Serialises ``{name: [values]}`` as a tf.train.Example (keys sorted, like TensorFlow)."""
    entries = b""
    for name in sorted(features):
        entry = _field(1, _LENGTH, name.encode("utf-8")) + _field(
            2, _LENGTH, _encode_feature(list(features[name])))
        entries += _field(1, _LENGTH, entry)
    return _field(1, _LENGTH, entries)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ExampleDecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ExampleDecodeError("varint too long")


def _fields(data: bytes):
    """Yields (field number, wire type, value) for each field of a message."""
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type == _LENGTH:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ExampleDecodeError("truncated length-delimited field")
            value, pos = data[pos:pos + length], pos + length
        elif wire_type == _FIXED64:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire_type == _FIXED32:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ExampleDecodeError(f"unsupported wire type {wire_type}")
        if pos > len(data):
            raise ExampleDecodeError("truncated fixed-width field")
        yield number, wire_type, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _decode_list(kind: int, payload: bytes) -> FeatureValue:
    values: list = []
    for number, wire_type, value in _fields(payload):
        if number != 1:
            continue
        if kind == _BYTES_LIST:
            values.append(bytes(value))
        elif kind == _INT64_LIST:
            if wire_type == _LENGTH:  # packed
                pos = 0
                while pos < len(value):
                    item, pos = _read_varint(value, pos)
                    values.append(_signed(item))
            else:
                values.append(_signed(value))
        elif kind == _FLOAT_LIST:
            if wire_type == _LENGTH:
                values.extend(struct.unpack(f"<{len(value) // 4}f", value))
            else:
                values.append(struct.unpack("<f", value)[0])
    return values


def decode_example(data: bytes) -> dict[str, FeatureValue]:
    """Parses a serialised tf.train.Example into ``{name: [values]}``."""
    features: dict[str, FeatureValue] = {}
    for number, _, features_msg in _fields(data):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(features_msg):
            if entry_number != 1:
                continue
            name, value = "", []
            for part_number, _, part in _fields(entry):
                if part_number == 1:
                    name = bytes(part).decode("utf-8")
                elif part_number == 2:
                    for kind, _, payload in _fields(part):
                        value = _decode_list(kind, payload)
            features[name] = value
    return features
