"""What a snapshot records besides its arrays: the metadata ``_snapshots`` writes, the storage
code of each array, and each array's policy and aliases.

* ``policies``: per array, ``"average"`` (the EMA blends it; ``reconstruct`` mixes it) or
  ``"copy"`` (the EMA holds the live value of its step, e.g. BatchNorm statistics under
  ``buffers="copy"``, integer counters; ``reconstruct`` takes it from the snapshot at ``at``).
  Given by the writer (an EMA bank knows them) or, where not, ``"average"`` for float arrays
  and ``"copy"`` for the others, which is also how files without the record are read.
* ``aliases``: other names the model gives a snapshot's array (tied weights:
  ``out.weight = emb.weight``), alias -> the array's name; ``reconstruct(like=...)`` fills an
  alias that ``like`` asks for from its array.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ema_core._safetensors import CODES, code_of, float32_to_bf16
from ema_core.posthoc._leaves import to_host
from ema_core.posthoc._listing import FLOATS, FORMAT, VERSION
from ema_core.posthoc._math import sigma_rel_to_gamma

__all__ = ["POLICIES", "check_count", "code_for", "dtype_name", "metadata", "policies_of"]

POLICIES = ("average", "copy")
_KEPT = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def check_count(value: Any, what: str) -> int:
    """``value`` as an int >= 1 (no bool)."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got bool")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None
    if count < 1:
        raise ValueError(f"{what} must be >= 1, got {count}")
    return count


def dtype_name(leaf: Any, where: str) -> str:
    """The dtype name of a float, integer or bool leaf (``TypeError`` for any other)."""
    dtype = getattr(leaf, "dtype", None)
    name = str(dtype).rpartition(".")[2] if dtype is not None else ""
    if name not in FLOATS + _KEPT:
        kind = f"dtype {name}" if name else f"type {type(leaf).__name__}"
        raise TypeError(f"{where} has {kind}; snapshots hold float, integer and bool arrays")
    return name


def code_for(dtype_name: str) -> str:
    """The safetensors code of a float, integer or bool dtype name."""
    code = code_of(dtype_name)
    if code is None:  # pragma: no cover - the callers pass floats, integers and bools only
        raise AssertionError(f"safetensors has no code for {dtype_name}")
    return code


def policies_of(
    names: Sequence[str], kinds: Sequence[str], given: Mapping[str, str] | None
) -> list[str]:
    """Each array's policy: ``given`` (checked: every name, a known policy, ``"average"`` only
    for floats), or ``"average"`` for floats and ``"copy"`` for the others."""
    if given is None:
        return ["average" if k in FLOATS else "copy" for k in kinds]
    if sorted(given) != sorted(names) or any(p not in POLICIES for p in given.values()):
        raise ValueError(
            f"policies must map each array name to one of {list(POLICIES)}, got "
            f"{dict(given)!r:.200}"
        )
    for name, kind in zip(names, kinds, strict=True):
        if given[name] == "average" and kind not in FLOATS:
            raise ValueError(f"policies[{name!r}] is 'average', but the array is {kind}")
    return [given[n] for n in names]


def check_aliases(names: Sequence[str], aliases: Mapping[str, str]) -> dict[str, str]:
    """``aliases`` (alias -> array name) checked: str names, no alias that is an array's name,
    every target an array of the snapshot."""
    known = set(names)
    for alias, name in aliases.items():
        if not (isinstance(alias, str) and isinstance(name, str)):
            raise TypeError(f"aliases must map str to str, got {alias!r}: {name!r}")
        if alias in known or name not in known:
            raise ValueError(
                f"aliases[{alias!r}] = {name!r}: an alias must not be an array's name and must "
                "name an array of the snapshot"
            )
    return dict(aliases)


def metadata(
    step: int,
    sigma: float,
    interval: int,
    names: list[str],
    kinds: list[str],
    frameworks: list[str],
    policies: list[str],
    aliases: dict[str, str],
) -> dict[str, str]:
    """A snapshot's header metadata (all strings)."""
    return {
        "format": FORMAT,
        "format_version": VERSION,
        "step": str(step),
        "sigma_rel": repr(sigma),
        "gamma": repr(sigma_rel_to_gamma(sigma)),
        "interval": str(interval),
        "names": json.dumps(names),
        "dtypes": json.dumps(kinds),
        "framework": ",".join(frameworks),
        "policies": json.dumps(policies),
        "aliases": json.dumps(aliases),
    }


def stored(
    leaves: list[Any], specs: list[tuple[str, str, tuple[int, ...]]]
) -> Iterator[np.ndarray]:
    """Each leaf on the host in its storage's bytes (bfloat16 as bit patterns), one at a time;
    values beyond float16's range become inf, as a cast does."""
    for leaf, (_, code, _) in zip(leaves, specs, strict=True):
        host = to_host(leaf)
        if code == "BF16":
            yield float32_to_bf16(host)
        else:
            with np.errstate(over="ignore"):
                yield np.asarray(host, dtype=CODES[code][1])
