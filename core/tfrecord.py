"""Reading TFRecord files record by record, each record checked against its two CRCs: pure
functions over a readable file object, no Beam and no TensorFlow.

A record is an 8-byte little-endian length, the masked CRC-32C of those 8 bytes, the data, and
the masked CRC-32C of the data. A file that breaks off (an upload cut short) or is damaged
part-way gives the records before the damage, then ``DamagedTFRecord`` saying where and what:
the caller decides what becomes of the rest, rather than losing the good records with it.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterator, NamedTuple

import google_crc32c

HEADER_BYTES = 12  # the length and its CRC
FOOTER_BYTES = 4  # the data's CRC


class DamagedTFRecord(ValueError):
    """A TFRecord file is damaged at ``offset``, after ``good_records`` intact records."""

    def __init__(self, good_records: int, offset: int, what: str):
        super().__init__(f"record {good_records + 1} (at byte {offset}) {what}")
        self.good_records, self.offset, self.what = good_records, offset, what


class RecordSpan(NamedTuple):
    """Where one record's data lies in its file."""

    offset: int  # of the data, past the 12-byte header
    length: int


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C: the CRC rotated right by 15 bits plus a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _length(header: bytes, count: int, offset: int) -> int:
    """The data length a record's header gives, once the header is checked."""
    if len(header) < HEADER_BYTES:
        raise DamagedTFRecord(count, offset, f"breaks off: {len(header)} of its "
                                             f"{HEADER_BYTES} header bytes are there")
    length, crc = struct.unpack("<QI", header)
    if masked_crc32c(header[:8]) != crc:
        raise DamagedTFRecord(count, offset, "has a length whose checksum does not match "
                                             "(not TFRecord data, or damaged)")
    return length


def read_records(handle: BinaryIO) -> Iterator[bytes]:
    """The data of each record of a TFRecord file, in order, each checked against its CRCs.
    Raises ``DamagedTFRecord`` at the first record that is cut short or fails a check, after
    yielding every record before it."""
    count = offset = 0
    while True:
        header = handle.read(HEADER_BYTES)
        if not header:
            return
        length = _length(header, count, offset)
        body = handle.read(length + FOOTER_BYTES)
        if len(body) < length + FOOTER_BYTES:
            raise DamagedTFRecord(count, offset, f"breaks off: {len(body)} of its "
                                                 f"{length + FOOTER_BYTES} bytes are there")
        data = body[:length]
        if masked_crc32c(data) != struct.unpack("<I", body[length:])[0]:
            raise DamagedTFRecord(count, offset, "has data whose checksum does not match")
        yield data
        count += 1
        offset += HEADER_BYTES + length + FOOTER_BYTES


def record_spans(handle: BinaryIO, size: int) -> Iterator[RecordSpan]:
    """Where each record of a TFRecord file of ``size`` bytes lies, read from the headers
    alone (each checked against its CRC), so that records can be read on demand. Raises
    ``DamagedTFRecord`` where a header fails its check or a record runs past the end, after
    yielding the spans before it; the data's own CRC is checked when it is read
    (``check_record``)."""
    count = offset = 0
    while offset < size:
        handle.seek(offset)
        length = _length(handle.read(HEADER_BYTES), count, offset)
        end = offset + HEADER_BYTES + length + FOOTER_BYTES
        if end > size:
            raise DamagedTFRecord(count, offset, f"breaks off: it needs {end - offset} "
                                                 f"bytes and {size - offset} are there")
        yield RecordSpan(offset + HEADER_BYTES, length)
        count, offset = count + 1, end


def check_record(data_and_footer: bytes, span: RecordSpan, index: int) -> bytes:
    """A record's data, read with its 4-byte CRC, once the CRC matches."""
    data = data_and_footer[:span.length]
    if (len(data_and_footer) != span.length + FOOTER_BYTES
            or masked_crc32c(data) != struct.unpack("<I", data_and_footer[span.length:])[0]):
        raise DamagedTFRecord(index, span.offset - HEADER_BYTES,
                              "has data whose checksum does not match")
    return data
