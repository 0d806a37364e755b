"""The arguments of the Keras ``EMACallback``, read before anything is built."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Where the averages can stand in for the live weights: the validation inside ``fit``,
#: ``evaluate()`` called on its own, and ``predict()``.
SWAPS = ("validate", "evaluate", "predict")


def check_swap(swap: Any) -> frozenset[str]:
    """The phases that run with the averages: a tuple or list of names from ``SWAPS`` (one
    name alone is read as a tuple of it; an empty tuple swaps never).

    Raises:
        TypeError: not a str, tuple, list or set of str.
        ValueError: a name not in ``SWAPS``.

    Example:
        >>> sorted(check_swap(("predict", "evaluate")))
        ['evaluate', 'predict']
        >>> check_swap("validate")
        frozenset({'validate'})
    """
    names = (swap,) if isinstance(swap, str) else swap
    if not isinstance(names, tuple | list | set | frozenset):
        raise TypeError(
            f"swap must be a tuple of names from {list(SWAPS)}, got {type(swap).__name__}"
        )
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"swap must hold str names from {list(SWAPS)}, got {name!r}")
        if name not in SWAPS:
            raise ValueError(f"swap names must be among {list(SWAPS)}, got {name!r}")
    return frozenset(names)


def check_path(path: Any, what: str) -> str | os.PathLike[str] | None:
    """``path`` when it is a str, an ``os.PathLike`` or (for ``what="filepath"``) None, and
    can name a file (not empty, ``.``, ``..`` or an existing folder).

    Raises:
        TypeError: anything else (a path of bytes too). ValueError: a path that cannot be a
            file.
    """
    if path is None and what == "filepath":
        return None
    if not isinstance(path, str | os.PathLike):
        allowed = "a str, an os.PathLike" + (" or None" if what == "filepath" else "")
        raise TypeError(f"{what} must be {allowed}, got {type(path).__name__}")
    name = os.fspath(path)
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a path of str, got a {type(path).__name__} of bytes")
    if Path(name).name in ("", ".", "..") or Path(name).is_dir():
        why = "is a directory" if Path(name).is_dir() and name not in ("", ".") else "names none"
        raise ValueError(
            f"{what} must name a file, such as 'ema.safetensors', got {path!r} ({why}); "
            "missing folders above it are created"
        )
    return path
