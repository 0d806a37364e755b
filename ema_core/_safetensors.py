"""The safetensors file format, written and read with numpy alone, one tensor at a time.

A safetensors file is an 8-byte little-endian length N, N bytes of JSON, then the tensors' raw
little-endian bytes back to back. The JSON maps each tensor name to ``{"dtype": code, "shape":
[...], "data_offsets": [start, end]}`` (offsets into the bytes after the header) and may hold
``"__metadata__"``, a mapping of strings to strings; it is padded with spaces to a multiple of 8
bytes. The files read and write with the ``safetensors`` package too, but this module needs
neither it nor torch: ``write`` streams each tensor from whatever produces its bytes (no copy of
the whole model in memory), bfloat16 included, and ``Reader`` reads one tensor into a new,
writeable numpy array. bfloat16 values travel as their raw 2-byte patterns (numpy ``uint16``)
and float8 ones as bytes (``uint8``), so any framework's round-trip bit for bit.

Shared by ``ema_core.checkpoint`` and anything else that writes safetensors files.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np

from ema_core._bf16 import bf16_to_float32, float32_to_bf16
from ema_core._safetensors_header import CODES, METADATA, Entry, code_of, name_of, parse

__all__ = [
    "CODES",
    "METADATA",
    "Entry",
    "Reader",
    "bf16_to_float32",
    "check_names",
    "code_of",
    "float32_to_bf16",
    "name_of",
    "write",
]


def check_names(names: Iterable[str], what: str) -> None:
    """Refuse the name the format keeps for the file's metadata: a tensor named
    ``__metadata__`` would replace it in the header, and no reader could open the file.

    Raises:
        ValueError: naming ``what``.

    Example:
        >>> check_names(["w", "b"], "averages")
    """
    if METADATA in names:
        raise ValueError(
            f"{what} is named {METADATA!r}, the name a safetensors header keeps for the file's "
            "metadata; rename it"
        )


def write(
    file: BinaryIO,
    specs: Sequence[tuple[str, str, tuple[int, ...]]],
    data: Iterable[np.ndarray],
    metadata: Mapping[str, str],
) -> None:
    """Write a safetensors file to ``file``, an open binary file positioned at its start.

    Args:
        file: where to write (for a crash-safe file: ``ema_core._atomic.write_atomic``).
        specs: ``(name, code, shape)`` of each tensor, in file order; the header is written from
            these before any data is asked for.
        data: yields each tensor's values in ``specs`` order, one at a time, as a C-contiguous
            numpy array of any dtype whose bytes are the tensor's little-endian bytes (a
            ``uint8`` view, or bfloat16 bit patterns as ``uint16``).
        metadata: string keys and values, stored as ``__metadata__``.

    Raises:
        ValueError: a tensor named ``__metadata__`` (``check_names``), before any byte.
        RuntimeError: an array of ``data`` does not have the byte size its spec says.
    """
    check_names([name for name, _, _ in specs], "a tensor")
    header: dict[str, Any] = {METADATA: dict(metadata)}
    sizes, offset = [], 0
    for name, code, shape in specs:
        size = math.prod(shape) * CODES[code][1].itemsize
        header[name] = {
            "dtype": code,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        sizes.append(size)
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    file.write(len(text).to_bytes(8, "little"))
    file.write(text)
    for (name, _, _), size, array in zip(specs, sizes, data, strict=True):
        flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        if flat.size != size:
            raise RuntimeError(f"tensor {name!r} gave {flat.size} bytes, its header says {size}")
        file.write(flat.data)


class Reader:
    """An open safetensors file: its ``metadata``, its ``entries`` by name, one tensor at a time.

    The file stays open until ``close`` (or the end of a ``with`` block), so a file replaced on
    disk meanwhile (an atomic save by another process) is still read whole, old version.

    Raises:
        ValueError: naming the file, when it is not a complete, valid safetensors file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close / __exit__
        try:
            self.metadata, self.entries, self._base = parse(self._file, self.path)
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a new writeable numpy array of its code's byte dtype (bfloat16 as
        ``uint16`` bit patterns), in its shape."""
        entry = self.entries[name]
        out = np.empty(entry.end - entry.start, dtype=np.uint8)
        self._file.seek(self._base + entry.start)
        if self._file.readinto(out.data) != out.size:
            raise ValueError(f"{self.path} is truncated: {name!r} ends past the end of the file")
        return out.view(CODES[entry.code][1]).reshape(entry.shape)
