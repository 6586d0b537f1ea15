"""Outputs are unchanged by refactors: the demo and six CamVid val images give exactly the mask
bytes, metrics rows and summary recorded in ``tests/golden/`` (see ``tests/golden_outputs``)."""

import json

import pytest

from tests.golden_outputs import camvid_outputs, demo_outputs, golden_path


def _recorded(name: str) -> dict:
    with open(golden_path(name)) as handle:
        return json.load(handle)


def _assert_same(actual: dict, expected: dict) -> None:
    assert actual["masks"] == expected["masks"]  # file names and SHA-256 of every PNG
    assert len(actual["rows"]) == len(expected["rows"])
    for row, golden in zip(actual["rows"], expected["rows"]):
        assert row == golden, row["key"]
    assert actual["summary"] == expected["summary"]


def test_demo_outputs_match_the_golden_record(tmp_path):
    _assert_same(demo_outputs(str(tmp_path)), _recorded("demo"))


def test_camvid_outputs_match_the_golden_record(tmp_path):
    actual = camvid_outputs(str(tmp_path))
    if actual is None:
        pytest.skip("CamVid not found beside the repository (../shared/data/camvid)")
    _assert_same(actual, _recorded("camvid_val6"))
