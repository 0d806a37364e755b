"""``load``: a checkpoint into a torch ``EMA`` (in place) or an ``EMAState`` of any backend."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from ema_core import _safetensors
from ema_core._config import Config, config_text
from ema_core._tree import flatten, path_str, unflatten
from ema_core._types import EMAState
from ema_core.checkpoint import _format
from ema_core.checkpoint._arrays import (
    FLOAT,
    INTEGER,
    MAX_STEP,
    host_dtype,
    like_array,
    torch_tensor,
)
from ema_core.checkpoint._format import dtype_name
from ema_core.checkpoint._save import TORCH_FORMAT

__all__ = ["load"]

_INTEGER, _FLOAT = INTEGER, FLOAT


def load(
    path: str | os.PathLike[str],
    like: Any,
    /,
    *,
    config: Config | None = None,
    strict: bool = True,
) -> Any:
    """Load a checkpoint written by ``save`` into a torch ``EMA`` or an ``EMAState``.

    Every name, shape and dtype (and, where known, the config) is checked before anything is
    written. Shadows load bit for bit, in ``like``'s dtype only: a dtype that differs is an
    error, never a cast. The step and weight take ``like``'s dtypes (a torch checkpoint's int64
    step loads into a JAX state's int32 one; a float64 weight rounds to a float32 one).

    Args:
        path: a file written by ``save``.
        like: an ``ema_core.torch.EMA``, filled in place (its live model is not touched; the
            same checks and errors as ``EMA.load_state_dict``; an FSDP2 EMA's shards are cut
            from the full tensors on every rank), or an ``EMAState`` of numpy, torch, JAX, CuPy
            or array-api-strict arrays giving the nest, dtypes, devices and JAX shardings of
            the result.
        config: for an ``EMAState``, the ``Config`` the file's must equal (as ``config_text``);
            ``None`` checks none. Must be ``None`` for an ``EMA``, whose own config is checked.
        strict: ``True`` requires the same shadow names on both sides (and, for an ``EMA``,
            the same config); ``False`` loads the names both have and keeps ``like``'s others.

    Returns:
        ``like`` itself for an ``EMA``; a new ``EMAState`` for an ``EMAState``.

    Raises:
        TypeError: ``like``, ``config`` or ``strict`` of the wrong type.
        ValueError: ``path`` is a directory; the file is not an ema-core checkpoint (not
            safetensors, no ``ema_core.format`` key) or of a newer format version; names,
            shapes, dtypes or config differ; a step or weight out of range or not fitting
            ``like``'s dtype.

    Example:
        >>> import tempfile, pathlib, numpy as np, ema_core as ema
        >>> from ema_core.checkpoint import load, save
        >>> cfg = ema.Config(schedule=0.5)
        >>> state = ema.update(ema.init({"w": np.zeros(2)}, cfg), {"w": np.ones(2)}, cfg)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save(pathlib.Path(d) / "ema.safetensors", state, cfg)
        ...     back = load(path, ema.init({"w": np.zeros(2)}, cfg), config=cfg)
        >>> back.shadow["w"], int(back.step)
        (array([0.5, 0.5]), 1)
    """
    path = _format.check_path(path, "file")
    if os.path.isdir(path):
        raise ValueError(
            f"path {path!r} is a directory; load reads a file written by "
            "ema_core.checkpoint.save (such as 'ema.safetensors')"
        )
    ema = _torch_ema(like)
    if ema is None and not isinstance(like, EMAState):
        raise TypeError(
            f"like must be an ema_core.torch.EMA or an ema_core.EMAState, got {type(like).__name__}"
        )
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be an ema_core.Config or None, got {type(config).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    if ema is not None and config is not None:
        raise ValueError(
            "config must be None when loading into an EMA: its own config is compared with the "
            f"file's, got {config!r}"
        )
    with _safetensors.Reader(path) as reader:
        ours = _format.check_version(reader.path, reader.metadata)
        shadows = _shadow_names(reader)
        if ema is not None:
            return _into_ema(reader, ours, shadows, ema, strict)
        return _into_state(reader, ours, shadows, like, config, strict)


def _torch_ema(like: Any) -> Any:
    module = sys.modules.get("ema_core.torch._module")  # an EMA exists only once it is imported
    return like if module is not None and isinstance(like, module.EMA) else None


def _shadow_names(reader: _safetensors.Reader) -> dict[str, str]:
    """File name -> shadow name (the nest's name, ``""`` for a single-array shadow), after
    checking that ``step`` and ``weight`` are there and valid and nothing else is."""
    _scalar(reader, "step", _INTEGER)
    _scalar(reader, "weight", _FLOAT)
    names = [name for name in reader.entries if name not in ("step", "weight")]
    return _format.shadow_keys(reader.path, names)


def _scalar(reader: _safetensors.Reader, name: str, codes: tuple[str, ...]) -> Any:
    """The value of the 0-d tensor ``name`` (a step >= 0, a weight in [0, 1])."""
    entry = reader.entries.get(name)
    if entry is None or entry.shape != () or entry.code not in codes:
        got = "none" if entry is None else f"shape {list(entry.shape)} dtype {entry.code}"
        raise ValueError(
            f"{reader.path}: {name!r} must be a 0-d {'/'.join(codes)} tensor, got {got}"
        )
    data = reader.read(name)
    value = float(_safetensors.bf16_to_float32(data)) if entry.code == "BF16" else data.item()
    if name == "step" and value < 0:
        raise ValueError(f"{reader.path}: 'step' must be >= 0, got {value}")
    if name == "step" and value > MAX_STEP:
        raise ValueError(f"{reader.path}: 'step' must be <= 2**63 - 1 (int64), got {value}")
    if name == "weight" and not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(
            f"{reader.path}: 'weight' (bias correction) must be in [0, 1], got {value}"
        )
    return value


def _into_ema(
    reader: _safetensors.Reader,
    ours: dict[str, str],
    shadows: dict[str, str],
    ema: Any,
    strict: bool,
) -> Any:
    """Fill ``ema`` through its ``load_state_dict`` (every check there, before any write)."""
    text = ours.get("config")
    if text is None and strict:
        raise ValueError(
            f"{reader.path} was saved without a config (an EMAState saved with config=None); "
            f"this EMA has {config_text(ema.config)!r}: pass strict=False to load it anyway"
        )
    wanted, read = set(ema.names), reader.read
    state = {
        "format": TORCH_FORMAT,
        "version": sys.modules["ema_core.torch._state"].VERSION,
        "config": config_text(ema.config) if text is None else text,
        "step": torch_tensor(reader.read("step"), reader.entries["step"].code),
        "weight": torch_tensor(reader.read("weight"), reader.entries["weight"].code),
        # a name this EMA lacks is only counted (a strict load refuses it before reading any
        # tensor, a loose one skips it): no need to read its bytes
        "shadow": {
            key: torch_tensor(read(name), reader.entries[name].code) if key in wanted else None
            for name, key in shadows.items()
        },
    }
    try:
        ema.load_state_dict(state, strict=strict)
    except TypeError as err:
        raise TypeError(f"{reader.path}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{reader.path}: {err}") from None
    return ema


def _into_state(
    reader: _safetensors.Reader,
    ours: dict[str, str],
    shadows: dict[str, str],
    like: EMAState,
    config: Config | None,
    strict: bool,
) -> EMAState:
    """A new ``EMAState`` like ``like`` holding the file's values (checked first)."""
    _check_config(reader.path, ours.get("config"), config)
    leaves, paths, treedef = flatten(like.shadow, "like.shadow")
    names = _format.shadow_names(paths, "like.shadow")
    _check_names(reader.path, names, list(shadows), strict)
    for name, leaf, where in zip(names, leaves, paths, strict=True):
        if name in reader.entries:
            _check_leaf(reader, name, leaf, path_str("like.shadow", where))
    step = _scalar_like(reader, "step", like.step)
    weight = _scalar_like(reader, "weight", like.weight)
    loaded = [
        like_array(reader.read(name), leaf) if name in reader.entries else leaf
        for name, leaf in zip(names, leaves, strict=True)
    ]
    return EMAState(step(), unflatten(treedef, loaded), weight())


def _check_config(path: str, text: str | None, config: Config | None) -> None:
    if config is None or text == config_text(config):
        return
    saved = "no config (saved with config=None)" if text is None else f"config {text!r}"
    raise ValueError(
        f"{path} holds {saved}, but config is {config_text(config)!r}; pass the config the "
        "state was saved with, or config=None to load without comparing"
    )


def _check_names(path: str, names: list[str], saved: list[str], strict: bool) -> None:
    saved_set, ours = set(saved), set(names)
    missing = [n for n in names if n not in saved_set]
    unexpected = [n for n in saved if n not in ours]
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


def _scalar_like(reader: _safetensors.Reader, name: str, like: Any) -> Any:
    """A thunk making the file's step or weight in ``like``'s type, dtype and device, checked
    now (it must fit ``like``'s integer dtype) and made later, after every check."""
    value = _scalar(reader, name, _INTEGER if name == "step" else _FLOAT)
    python, kinds = (int, "iu") if name == "step" else (float, "f")
    if type(like) is python:
        return lambda: python(value)
    dtype = host_dtype(like) if hasattr(like, "dtype") and hasattr(like, "shape") else None
    if dtype is None or dtype.kind not in kinds or tuple(like.shape) != ():
        raise TypeError(
            f"like.{name} must be {'an int' if name == 'step' else 'a float'} or a 0-d "
            f"{'integer' if name == 'step' else 'floating'} array, got {type(like).__name__}"
            f"{'' if dtype is None else f' of dtype {dtype}'}"
        )
    if (
        name == "step"
        and dtype.kind in "iu"
        and not np.iinfo(dtype).min <= value <= np.iinfo(dtype).max
    ):
        raise ValueError(f"{reader.path}: step {value} does not fit like.step's dtype {dtype}")
    return lambda: like_array(np.asarray(value, dtype=dtype), like)
