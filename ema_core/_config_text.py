"""A config as text that is the same in every process (``config_text``), as checkpoints store
it, and the fields in which two such texts differ (``config_differences``), as a strict load
names them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ema_core._config import Config

__all__ = ["config_differences", "config_text", "stable_text"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_CALL = re.compile(r"([A-Za-z_][\w.]*)\((.*)\)", re.DOTALL)


def config_text(config: Config) -> str:
    """``config`` as text that is the same in every process: its ``repr`` with object
    addresses removed, so a callable schedule reads as its qualified name
    (``FromCallable(fn=<function make.<locals>.<lambda>>)``). Checkpoints store it, and a
    strict load of the same config (the same schedule source) compares equal.

    Example:
        >>> from ema_core import Config
        >>> text = config_text(Config(schedule=lambda t: 0.5))
        >>> text[:50]
        'Config(schedule=FromCallable(fn=<function <lambda>'
        >>> text == config_text(Config(schedule=lambda t: 0.5))  # another object, same source
        True
    """
    return stable_text(repr(config))


def stable_text(text: str) -> str:
    """``text`` without the `` at 0x...`` addresses Python's default reprs hold."""
    return _ADDRESS.sub("", text)


def config_differences(
    a: Config | str, b: Config | str, labels: tuple[str, str] = ("here", "there")
) -> str:
    """The fields in which two configs (or their ``config_text``) differ, each named at its
    depth with both values: a schedule that differs only inside its wrapper is named
    ``schedule.inner``. Text is compared, as checkpoints store it; ``""`` when none differ.

    Example:
        >>> from ema_core import Config
        >>> here, saved = Config(schedule=0.99, buffers="skip"), Config(buffers="copy")
        >>> print(config_differences(here, saved, ("here", "in the file")))
        schedule.decay: 0.99 here, 0.9999 in the file; buffers: 'skip' here, 'copy' in the file
    """
    texts = [x if isinstance(x, str) else config_text(x) for x in (a, b)]
    found: list[str] = []
    _differences("", stable_text(texts[0]), stable_text(texts[1]), found, labels)
    return "; ".join(found)


def _differences(path: str, x: str, y: str, found: list[str], labels: tuple[str, str]) -> None:
    """Append ``path: x <labels[0]>, y <labels[1]>`` for each differing field under ``path``."""
    fx, fy = _fields(x), _fields(y)
    if fx is not None and fy is not None and fx[0] == fy[0] and fx[1].keys() == fy[1].keys():
        for key, value in fx[1].items():
            if value != fy[1][key]:
                _differences(f"{path}.{key}" if path else key, value, fy[1][key], found, labels)
    elif x != y:
        found.append(f"{path or 'config'}: {_cut(x)} {labels[0]}, {_cut(y)} {labels[1]}")


def _fields(text: str) -> tuple[str, dict[str, str]] | None:
    """``("Head", {field: value text})`` of a dataclass-style repr ``Head(a=1, b=...)``, split
    at its top-level commas; None for any other text."""
    match = _CALL.fullmatch(text)
    if match is None:
        return None
    parts, depth, quote, start, inner = [], 0, "", 0, match.group(2)
    for i, char in enumerate(inner):
        if quote:
            quote = "" if char == quote and inner[i - 1] != "\\" else quote
        elif char in "'\"":
            quote = char
        else:
            depth += (char in "([{") - (char in ")]}")
            if char == "," and depth == 0:
                parts.append(inner[start:i].strip())
                start = i + 1
    parts.append(inner[start:].strip())
    pairs = [part.partition("=") for part in parts if part]
    if not all(key.isidentifier() and eq for key, eq, _ in pairs):
        return None
    return match.group(1), {key: value for key, _, value in pairs}


def _cut(text: str, size: int = 120) -> str:
    return text if len(text) <= size else text[: size - 3] + "..."
