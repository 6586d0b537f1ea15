import pytest

from segbeam.keys import file_stem, glob_base, key_for_path, sanitise_key


@pytest.mark.parametrize("raw", ["0001TP_006690", "sub/dir/img-01.v2", "a_b"])
def test_safe_keys_are_unchanged(raw):
    assert sanitise_key(raw) == raw


@pytest.mark.parametrize("raw, prefix", [
    ("../../x", "x-"),
    ("/etc/passwd", "etc/passwd-"),
    ("..\\..\\windows\\evil", "windows/evil-"),
    ("a/./b//c", "a/b/c-"),
    (".hidden", "hidden-"),
    ("with space & ;", "with_space_-"),
    ("..", "_-"),
    ("", "_-"),
    ("con", "_con-"),
])
def test_unsafe_keys_are_made_relative_and_tagged(raw, prefix):
    key = sanitise_key(raw)
    assert key.startswith(prefix), key
    assert not key.startswith("/")
    assert ".." not in key.split("/")
    assert len(key) == len(prefix) + 8  # the 8-hex-digit hash of the original


def test_distinct_raw_keys_never_collapse():
    assert sanitise_key("../../x") != sanitise_key("x")
    assert sanitise_key("../../x") != sanitise_key("../x")


def test_long_and_deep_keys_are_bounded():
    key = sanitise_key("/".join(["d" * 500] * 20))
    assert len(key.split("/")) <= 8
    assert all(len(part) <= 120 + 9 for part in key.split("/"))


def test_key_for_path_is_relative_to_the_glob_base():
    assert glob_base("gs://b/x/*/y*.png") == "gs://b/x/"
    assert glob_base("/data/img/*.png") == "/data/img/"
    assert glob_base("*.png") == ""
    # escaped glob characters are literal: the folder "set [v2]" and "a*b"
    assert glob_base("/d/set [[]v2]/images/*.png") == "/d/set [v2]/images/"
    assert glob_base("/d/a[*]b/x[?]/[!a]/*") == "/d/a*b/x?/"
    assert glob_base("/d/[ab]/x") == "/d/"
    assert key_for_path("/data/img/a/b.png", "/data/img/") == "a/b"
    assert key_for_path("gs://b/x/q/y1.png", "gs://b/x/") == "q/y1"
    assert file_stem("gs://b/x/q/y1.png") == "y1"
