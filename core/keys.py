"""Key derivation and sanitising: a key names output files, so no input may steer a write
outside the output root."""

from __future__ import annotations

from typing import Optional

import hashlib
import posixpath
import re

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._\-]+")
_HASH_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
_MAX_COMPONENT = 120
_MAX_COMPONENTS = 8
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                     *(f"lpt{i}" for i in range(10))}


def file_key(key: str, ignores_case: bool = False) -> str:
    """What tells a key's output files apart on the output's filesystem: the key itself, or
    the key case-folded where that filesystem ignores letter case (``a`` and ``A`` are one
    file there: ``layout.ignores_case``)."""
    return key.casefold() if ignores_case else key


def sanitise_key(raw: str) -> str:
    """Returns a relative POSIX path made of safe components that stays inside any root.

    Separators (``/`` and ``\\``) split components; empty, ``.`` and ``..`` components are
    dropped; characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``;
    leading dots and dashes are removed (no hidden files, nothing a command line reads as a
    flag). When anything had to change, a short hash of the original is appended so that two
    different raw keys never collapse into one. A key that already ends like such a hash
    (``-`` and 8 hex digits) gets one too: otherwise ``col a`` (-> ``col_a-209ca47e``) and a
    file named ``col_a-209ca47e`` would share a key.
    """
    if not isinstance(raw, str):
        raise TypeError(f"A key must be a string; received {type(raw).__name__}: {raw!r}")
    parts = []
    for part in re.split(r"[\\/]+", raw):
        if part in ("", ".", ".."):
            continue
        part = _SAFE_CHARS.sub("_", part).lstrip(".-")
        part = part[:_MAX_COMPONENT]
        if part.split(".")[0].lower() in _WINDOWS_RESERVED:
            part = "_" + part
        if part:
            parts.append(part)
    parts = parts[-_MAX_COMPONENTS:]
    key = "/".join(parts)
    if key != raw or not key or _HASH_SUFFIX.search(key):
        digest = hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        key = f"{key}-{digest}" if key else f"_-{digest}"
    return key


def strip_extension(path: str) -> str:
    """``dir/name.png`` -> ``dir/name`` (only the last extension goes)."""
    root, _ = posixpath.splitext(path)
    return root


def file_stem(path: str) -> str:
    """The base name without its extension, for pairing images with masks: ``a/b/x.png`` ->
    ``x``."""
    return strip_extension(posixpath.basename(path.replace("\\", "/")))


def glob_base(pattern: str) -> str:
    """The directory prefix of a glob before its first wildcard: ``gs://b/x/*/y*.png`` ->
    ``gs://b/x/``. Keys are paths relative to it, so that files in different sub-folders keep
    different keys. The prefix is literal: a class of one character (``[[]``, ``[*]``), a
    glob character escaped, stands for that character, so that a folder named ``set [v2]``,
    passed as ``set [[]v2]/*``, is the base (its files' keys were ``set [v2]/a``, not ``a``)."""
    head, i = [], 0
    while i < len(pattern):
        if pattern[i] == "[" and pattern[i + 2:i + 3] == "]" and pattern[i + 1] != "!":
            head.append(pattern[i + 1])
            i += 3
        elif pattern[i] in "*?[{":
            break
        else:
            head.append(pattern[i])
            i += 1
    text = "".join(head)
    slash = text.rfind("/")
    return text[: slash + 1] if slash != -1 else ""


def key_for_path(path: str, base: str) -> str:
    """The sanitised key of a matched file: its path below ``base`` without the extension."""
    relative = path[len(base):] if base and path.startswith(base) else posixpath.basename(path)
    return sanitise_key(strip_extension(relative))


def printable_path(path: str) -> Optional[str]:
    """None for a path that is valid UTF-8 text; otherwise the path with its undecodable bytes
    written as escapes (``caf\\xe9.png``). A file name that is not UTF-8 reaches Python as
    surrogate escapes, which no Beam coder, JSON writer or Parquet column can carry."""
    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
