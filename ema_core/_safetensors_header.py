"""The safetensors header: the format's dtype codes and the parse of a file's JSON header.

The header is an 8-byte little-endian length N and N bytes of JSON mapping each tensor name to
its dtype code, shape and byte range after the header (see ``ema_core._safetensors`` for the whole
format). ``parse`` checks every entry before any tensor is read: codes, shapes an array can have,
byte ranges back to back that fill the file, no name twice, string metadata.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, BinaryIO, NamedTuple

import numpy as np

__all__ = ["CODES", "METADATA", "Entry", "code_of", "name_of", "parse"]

#: safetensors dtype code -> (dtype name, numpy dtype of its bytes; BF16 as uint16, float8 as
#: uint8). Every code of the format whose elements are whole bytes (the format has no complex128;
#: its sub-byte F4 / F6 codes no framework saves here); the float8 names are torch's and
#: ml_dtypes' (JAX's), ``F8_E4M3`` the finite-only e4m3fn that safetensors maps it to.
CODES: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool", np.dtype("?")),
    "U8": ("uint8", np.dtype("u1")),
    "I8": ("int8", np.dtype("i1")),
    "U16": ("uint16", np.dtype("<u2")),
    "I16": ("int16", np.dtype("<i2")),
    "U32": ("uint32", np.dtype("<u4")),
    "I32": ("int32", np.dtype("<i4")),
    "U64": ("uint64", np.dtype("<u8")),
    "I64": ("int64", np.dtype("<i8")),
    "F16": ("float16", np.dtype("<f2")),
    "BF16": ("bfloat16", np.dtype("<u2")),
    "F32": ("float32", np.dtype("<f4")),
    "F64": ("float64", np.dtype("<f8")),
    "C64": ("complex64", np.dtype("<c8")),
    "F8_E4M3": ("float8_e4m3fn", np.dtype("u1")),
    "F8_E5M2": ("float8_e5m2", np.dtype("u1")),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", np.dtype("u1")),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", np.dtype("u1")),
    "F8_E8M0": ("float8_e8m0fnu", np.dtype("u1")),
}
_CODE_OF = {name: code for code, (name, _) in CODES.items()}
#: The header key of the file's metadata, which no tensor may take.
METADATA = "__metadata__"
_MAX_HEADER = 100_000_000  # the safetensors package's own limit
_MAX_NDIM = 64  # numpy's limit
_MAX_BYTES = 2**63 - 1  # numpy's limit on an array's bytes, empty dimensions counted as 1


class Entry(NamedTuple):
    """One tensor's place in a file: its code, shape and byte range after the header."""

    code: str
    shape: tuple[int, ...]
    start: int
    end: int


def code_of(dtype_name: str) -> str | None:
    """The safetensors code of a dtype name (``"bfloat16"`` -> ``"BF16"``), or None for a dtype
    the format has no code for (complex128, int4, float8_e4m3 without ``fn``)."""
    return _CODE_OF.get(dtype_name)


def name_of(code: str) -> str:
    """The dtype name of a safetensors code (``"F32"`` -> ``"float32"``)."""
    return CODES[code][0]


def parse(file: BinaryIO, path: str) -> tuple[dict[str, str], dict[str, Entry], int]:
    """The metadata, the entries and the offset of the data of an open file."""
    size = os.fstat(file.fileno()).st_size
    head = file.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < n <= min(size - 8, _MAX_HEADER):
        raise ValueError(f"{path} is not a safetensors file (header length {n}, file size {size})")
    try:
        header = json.loads(file.read(n), object_pairs_hook=_unique)
    except _DuplicateKeyError as err:
        raise ValueError(
            f"{path}: the header names {err.args[0]!r} twice; each tensor has one entry"
        ) from None
    except (ValueError, RecursionError) as err:  # also an int of over 4,300 digits
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ValueError(
            f"{path} is not a safetensors file: its header is not JSON ({reason})"
        ) from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file: its header is not a JSON object")
    metadata = header.pop(METADATA, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: its __metadata__ is not a mapping of strings to strings")
    entries = {name: _entry(path, name, spec) for name, spec in header.items()}
    offset = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.start != offset:
            raise ValueError(f"{path}: tensor {name!r} starts at byte {entry.start}, not {offset}")
        offset = entry.end
    if offset != size - 8 - n:
        raise ValueError(
            f"{path} is truncated or padded: its tensors take {offset} bytes, it holds "
            f"{size - 8 - n}"
        )
    return metadata, entries, 8 + n


class _DuplicateKeyError(Exception):
    """A JSON object of the header has one key twice (``args[0]``)."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice (``json`` would keep the last)."""
    found = dict(pairs)
    if len(found) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return found


def _entry(path: str, name: str, spec: Any) -> Entry:
    try:
        code, shape, (start, end) = spec["dtype"], tuple(spec["shape"]), spec["data_offsets"]
        ok = code in CODES and all(type(v) is int and v >= 0 for v in (*shape, start, end))
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{path}: the header entry of {name!r} is not valid: {spec!r}")
    if len(shape) > _MAX_NDIM or math.prod(max(n, 1) for n in shape) > _MAX_BYTES // 8:
        raise ValueError(
            f"{path}: the shape of {name!r} ({len(shape)} dimensions, {list(shape)!r:.80}) is "
            f"not one an array can have: at most {_MAX_NDIM} dimensions and 2**60 elements"
        )
    if end - start != math.prod(shape) * CODES[code][1].itemsize:
        raise ValueError(f"{path}: {name!r} has {end - start} bytes for shape {list(shape)} {code}")
    return Entry(code, shape, start, end)
