"""What an ema-core checkpoint holds: tensor names, metadata keys, the format version.

Tensors: ``"step"`` and ``"weight"`` (0-d, in the dtype they had), and one ``"shadow/<name>"``
per shadow. A torch ``EMA`` shadow's name is its tensor name (``"shadow/0.weight"``); an
``EMAState`` shadow's name joins the keys of its path in the nest with ``/`` (``{"a": [x]}``:
``"shadow/a/0"``; a shadow that is a single array: ``"shadow"``), each key escaped as in a JSON
pointer (``~`` as ``~0``, ``/`` as ``~1``) so that no two paths share a name; the same names as
``ema_core.jax.state_dict``. An ``EMA`` and an ``EMAState`` whose shadow is a dict keyed by the
EMA's tensor names therefore hold the same names, and load from each other's files.

Metadata (all strings, in the safetensors ``__metadata__``): the keys of ``KEYS`` under the
``"ema_core."`` prefix, and the user's own keys, which may not start with it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ema_core._paths import escape_key, leaf_names, unescape_key
from ema_core._tree import Path

__all__ = [
    "FORMAT",
    "KEYS",
    "PREFIX",
    "SHADOW",
    "VERSION",
    "check_path",
    "check_version",
    "dtype_name",
    "escape",
    "shadow_keys",
    "shadow_names",
    "unescape",
    "user_metadata",
]

#: The value of ``"ema_core.format"``: what marks a file as an ema-core checkpoint.
FORMAT = "ema_core.checkpoint"
#: The format version this library writes and the newest it reads.
VERSION = 1
PREFIX = "ema_core."
SHADOW = "shadow"
#: Our metadata keys (each stored as PREFIX + key): ``format``, ``format_version``,
#: ``library_version``, ``source`` ("EMA" or "EMAState"), ``framework`` (of the arrays saved),
#: ``dtypes`` (JSON: tensor name -> the saved array's dtype name) and, when known, ``config``
#: (``ema_core._config_text.config_text``: the same text in every process).
KEYS = ("format", "format_version", "library_version", "source", "framework", "dtypes", "config")


escape = escape_key
unescape = unescape_key


def is_escaped(part: str) -> bool:
    """Whether ``part`` is a name as ``escape`` writes it: every ``~`` followed by 0 or 1."""
    return re.search(r"~(?![01])", part) is None


def shadow_names(paths: Sequence[Path], what: str) -> list[str]:
    """The tensor names of the shadows at ``paths`` of the nest ``what`` (``shadow/`` and the
    escaped keys).

    Raises:
        ValueError: two paths would share a name.
    """
    names = leaf_names(paths, what, prefix=SHADOW, verb="saved as")
    for name in names:
        check_utf8(name, "a shadow's name")
    return names


def check_utf8(text: str, what: str) -> None:
    """A header's text must encode as UTF-8 (a lone surrogate does not).

    Raises:
        ValueError: naming ``what`` and ``text``.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{what} {text!r} is not UTF-8 text ({err.reason}: {text[err.start]!r} at "
            f"{err.start}); a safetensors header holds UTF-8 only"
        ) from None


def dtype_name(dtype: Any) -> str:
    """A dtype's Array API name in any framework (``torch.bfloat16`` -> ``"bfloat16"``; a
    big-endian numpy ``>f4`` -> ``"float32"``)."""
    if isinstance(dtype, np.dtype):
        return str(dtype.name)
    return str(dtype).rpartition(".")[2]


def check_path(path: Any, what: str) -> str:
    """``path`` as a str, checked: a str or ``os.PathLike`` (``TypeError``), not empty
    (``ValueError``); ``what`` is ``"file"`` or ``"folder"``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    text: str | bytes = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"path must be a str or os.PathLike of str, got {text!r:.80}")
    if not text:
        raise ValueError(f"path must name a {what}, got ''")
    return text


def user_metadata(metadata: Any) -> dict[str, str]:
    """``metadata`` checked: a mapping of str to str whose keys do not start with ``PREFIX``."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping of str to str, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"metadata must map str to str, got {type(key).__name__} {key!r} -> "
                f"{type(value).__name__} {value!r}"
            )
        check_utf8(key, "metadata key")
        check_utf8(value, f"metadata[{key!r}]")
        if key.startswith(PREFIX):
            raise ValueError(
                f"metadata key {key!r} starts with {PREFIX!r}, which ema-core keeps for its own "
                "keys; choose another key"
            )
    return dict(metadata)


def ours(metadata: Mapping[str, str]) -> dict[str, str]:
    """Our keys of a file's metadata, without the prefix."""
    return {k[len(PREFIX) :]: v for k, v in metadata.items() if k.startswith(PREFIX)}


def check_version(path: str, metadata: Mapping[str, str]) -> dict[str, str]:
    """Our metadata of the file at ``path``, after checking that it is an ema-core checkpoint
    of a format version this library reads.

    Raises:
        ValueError: the format key is missing or different, or the version is not a whole
            number from 1 to ``VERSION``.
    """
    found = ours(metadata)
    if found.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an ema-core checkpoint: its metadata has {PREFIX}format = "
            f"{found.get('format')!r}, expected {FORMAT!r} (files written by "
            "ema_core.checkpoint.save)"
        )
    text = found.get("format_version", "")
    version = int(text) if re.fullmatch(r"[0-9]{1,9}", text) else 0
    if version > VERSION:
        raise ValueError(
            f"{path} is an ema-core checkpoint of format version {version}; this ema-core reads "
            f"versions up to {VERSION}: upgrade ema-core to load it"
        )
    if version < 1:
        raise ValueError(
            f"{path} has {PREFIX}format_version = {text!r}, not a version 1..{VERSION}"
        )
    return found


def shadow_keys(path: str, names: Iterable[str], flat: bool = True) -> dict[str, str]:
    """Tensor name -> shadow name (the nest's name, ``""`` for a single-array shadow) of the
    shadows among ``names`` (a file's tensors, ``step`` and ``weight`` excepted), in order.
    ``flat``: the names are read as a torch ``EMA``'s flat names, where ``a~1b`` and ``a/b``
    are one name; a nest (an ``EMAState``) matches the escaped names, where they are two.

    Raises:
        ValueError: a name that is not a shadow's, not escaped as ``escape`` writes it, or two
            names of the same shadow (``a~1b`` and ``a/b``) when ``flat``.
    """
    found: dict[str, str] = {}
    by_key: dict[str, str] = {}
    for name in names:
        if name != SHADOW and not name.startswith(SHADOW + "/"):
            raise ValueError(f"{path} holds a tensor {name!r}: not a shadow, step or weight")
        if not is_escaped(name):
            raise ValueError(
                f"{path} holds a tensor {name!r}: a '~' must be followed by 0 or 1 (the "
                "escapes of '~' and '/' that save writes)"
            )
        key = unescape(name[len(SHADOW) + 1 :])
        if flat and key in by_key:
            first, second = sorted((by_key[key], name))
            raise ValueError(
                f"{path}: the tensors {first!r} and {second!r} are both the shadow {key!r}; "
                "a checkpoint holds each shadow once"
            )
        found[name], by_key[key] = key, name
    return found


def dtypes_text(names: Sequence[str], dtypes: Sequence[str]) -> str:
    return json.dumps(dict(zip(names, dtypes, strict=True)), separators=(",", ":"))
