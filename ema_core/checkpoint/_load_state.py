"""Loading into an ``EMAState`` of any backend: every check first, then the arrays made.

Each leaf of ``like`` must be an array with values (not an abstract ``jax.ShapeDtypeStruct``,
not a meta tensor); one that a ``strict=False`` load keeps must not have been donated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat as compat
import numpy as np

from ema_core import _safetensors
from ema_core._checks import name_differences
from ema_core._config import Config, divisor
from ema_core._config_text import config_differences, config_text
from ema_core._core import compute_dtype
from ema_core._tree import flatten, path_str, unflatten
from ema_core._types import EMAState
from ema_core.checkpoint import _format
from ema_core.checkpoint._arrays import FLOAT, INTEGER, framework_of, like_array, scalar_array
from ema_core.checkpoint._format import dtype_name
from ema_core.checkpoint._load_file import scalar

__all__ = ["checked_state"]


def checked_state(
    reader: _safetensors.Reader,
    ours: dict[str, str],
    shadows: dict[str, str],
    like: EMAState,
    config: Config | None,
    strict: bool,
) -> Callable[[], EMAState]:
    """Check the file against ``like`` (config, names, shapes, dtypes, step and weight); return
    the function making the new ``EMAState`` (to call while ``reader`` is open)."""
    _check_config(reader.path, ours.get("config"), config)
    leaves, paths, treedef = flatten(like.shadow, "like.shadow")
    names = _format.shadow_names(paths, "like.shadow")
    _check_names(reader.path, names, list(shadows), strict)
    for name, leaf, path in zip(names, leaves, paths, strict=True):
        where = path_str("like.shadow", path)
        _check_like(leaf, where)
        if name in reader.entries:
            _check_leaf(reader, name, leaf, where)
        else:
            _check_alive(leaf, where)
    step = _scalar_like(reader, "step", like.step)
    weight = _scalar_like(reader, "weight", like.weight)
    kept = [i for i, n in enumerate(names) if n not in reader.entries and _floating(leaves[i])]
    factor = _kept_factor(reader, like, config, [names[i] for i in kept])

    def make() -> EMAState:
        loaded = [
            like_array(reader.read(name), leaf) if name in reader.entries else leaf
            for name, leaf in zip(names, leaves, strict=True)
        ]
        if factor != 1.0:
            for i in kept:
                loaded[i] = _rescaled(loaded[i], factor)
        return EMAState(step(), unflatten(treedef, loaded), weight())

    return make


def _check_config(path: str, text: str | None, config: Config | None) -> None:
    if config is None or text == config_text(config):
        return
    fix = (
        "pass the config the state was saved with (to the EMA, EMACallback or load/check), or "
        "config=None to load without comparing"
    )
    if text is None:
        raise ValueError(
            f"{path} holds no config (saved with config=None), but config is "
            f"{config_text(config)!r}; {fix}"
        )
    differ = config_differences(config, text, ("in config", f"in {path}"))
    raise ValueError(
        f"{path} was saved with another config: {differ}; {fix} (the file's config is {text!r})"
    )


def _check_names(path: str, names: list[str], saved: list[str], strict: bool) -> None:
    missing, unexpected = name_differences(names, saved)
    if strict and (missing or unexpected):
        raise ValueError(
            f"{path} does not match like: like has {missing[:5]} that the file lacks, the file "
            f"has {unexpected[:5]} that like lacks ({len(missing)} and {len(unexpected)} in "
            "all); pass strict=False to load the names both have"
        )


def _check_leaf(reader: _safetensors.Reader, name: str, leaf: Any, where: str) -> None:
    entry = reader.entries[name]
    shape, dtype = tuple(getattr(leaf, "shape", ())), dtype_name(getattr(leaf, "dtype", None))
    saved = _safetensors.name_of(entry.code)
    if entry.shape != shape or saved != dtype:
        raise ValueError(
            f"{reader.path}: {name!r} has shape {entry.shape} dtype {saved}; {where} has shape "
            f"{shape} dtype {dtype}"
        )


def _check_like(leaf: Any, where: str) -> None:
    """A leaf of ``like`` checked to be an array that ``load`` can make arrays like: of a known
    framework (not an abstract ``jax.ShapeDtypeStruct``), holding values (not a meta tensor).

    Raises:
        TypeError: not an array of a known framework, naming ``where``.
        ValueError: a torch tensor on the meta device.
    """
    framework = framework_of(leaf)
    if framework is None:
        abstract = hasattr(leaf, "shape") and hasattr(leaf, "dtype")  # jax.ShapeDtypeStruct
        hint = "; an abstract target (jax.eval_shape) has no device to put them on: build like "
        hint += "with ema_core.init(params, config)"
        raise TypeError(
            f"{where} is a {type(leaf).__name__}, not an array: load makes arrays of like's "
            "framework, dtype, device and JAX sharding (numpy, torch, JAX, CuPy, "
            f"array-api-strict){hint if abstract else ''}"
        )
    if framework == "torch" and leaf.is_meta:
        raise ValueError(
            f"{where} is a torch tensor on the meta device, which holds no values: the loaded "
            "state would have none; give like tensors on a real device (a model materialised "
            "with to_empty(device='cpu'))"
        )


def _check_alive(leaf: Any, where: str) -> None:
    """``ValueError`` for a JAX array of ``like`` deleted by donation (whose values a
    ``strict=False`` load keeps or reads), naming ``where``."""
    if callable(getattr(leaf, "is_deleted", None)) and leaf.is_deleted():
        raise ValueError(
            f"{where} was deleted (donated to a jitted update, which deletes the arrays it is "
            "given), and strict=False keeps like's values: pass the state that update returned"
        )


_INTEGER_NAMES = tuple(f"{u}int{b}" for b in (8, 16, 32, 64) for u in ("", "u"))
_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")


def _scalar_like(reader: _safetensors.Reader, name: str, like: Any) -> Any:
    """A thunk making the file's step or weight in ``like``'s type, dtype and device, checked
    now (it must fit ``like``'s integer dtype) and made later, after every check."""
    value = scalar(reader, name, INTEGER if name == "step" else FLOAT)
    python, names = (int, _INTEGER_NAMES) if name == "step" else (float, _FLOAT_NAMES)
    if type(like) is python:
        return lambda: python(value)
    found = dtype_name(like.dtype) if framework_of(like) is not None else None
    if found not in names or tuple(like.shape) != ():
        raise TypeError(
            f"like.{name} must be {'an int' if name == 'step' else 'a float'} or a 0-d "
            f"{'integer' if name == 'step' else 'floating'} array, got {type(like).__name__}"
            f"{'' if found is None else f' of dtype {found}'}"
        )
    _check_like(like, f"like.{name}")
    if name == "step" and not np.iinfo(found).min <= value <= np.iinfo(found).max:
        raise ValueError(f"{reader.path}: step {value} does not fit like.step's dtype {found}")
    return lambda: scalar_array(value, like)  # bfloat16 too (numpy may not know it)


def _kept_factor(
    reader: _safetensors.Reader,
    like: EMAState,
    config: Config | None,
    floating: list[str],
) -> float:
    """What the floating leaves of a zeros-started ``like`` that a ``strict=False`` load keeps
    (``floating``, by name) are multiplied by so that their averages stay what they were under
    the file's step and weight: the file's divisor over ``like``'s (1 where nothing needs it).

    Raises:
        ValueError: ``config`` is None and the weights differ (whether the leaves are read
            through a divisor is the config's to say); ``like`` or the file is zeros-started
            before its first update (divisor 0) and the other not.
    """
    if not floating:
        return 1.0
    file_step, file_weight = scalar(reader, "step", INTEGER), scalar(reader, "weight", FLOAT)
    _check_alive(like.weight, "like.weight")
    _check_alive(like.step, "like.step")
    like_weight = float(like.weight)
    if config is None:
        if like_weight == float(file_weight):
            return 1.0
        raise ValueError(
            f"{reader.path}: strict=False keeps like's {floating[:5]} ({len(floating)} in all) "
            f"under the file's weight {float(file_weight)!r} (like's is {like_weight!r}): pass "
            "config= so that, for a zeros-started state, their averages are kept"
        )
    if config.init != "zeros" or config.correction == "none":
        return 1.0
    old = float(divisor(config, like_weight, int(like.step)))
    new = float(divisor(config, float(file_weight), int(file_step)))
    if (old == 0.0) != (new == 0.0):
        when = "like has" if old == 0.0 else "the file was saved"
        raise ValueError(
            f"{reader.path}: strict=False would keep like's {floating[:5]} ({len(floating)} in "
            f"all), but {when} no update yet (a zeros-started weight of 0), so their averages "
            "could not be read after the load; update like once with the params first, or "
            "load with strict=True"
        )
    return 1.0 if old == 0.0 else new / old


def _floating(leaf: Any) -> bool:
    """A floating leaf (``bfloat16`` and ``float8`` names too), as ``average`` reads them."""
    name = dtype_name(leaf.dtype) if hasattr(leaf, "dtype") else ""
    return name.startswith(("float", "bfloat", "complex"))


def _rescaled(leaf: Any, factor: float) -> Any:
    """``leaf * factor`` computed in its compute dtype, in its own dtype."""
    xp = compat.array_namespace(leaf)
    return xp.astype(xp.astype(leaf, compute_dtype(xp, leaf.dtype)) * factor, leaf.dtype)
