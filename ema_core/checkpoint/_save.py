"""``save``: an EMA or an ``EMAState`` as one safetensors file, written crash-safe."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ema_core import __version__, _safetensors
from ema_core._arguments import config_hint
from ema_core._atomic import resolve_link, write_atomic
from ema_core._checks import packed_hint
from ema_core._config import Config
from ema_core._config_text import config_text, stable_text
from ema_core._tree import flatten, path_str
from ema_core._types import EMAState
from ema_core.checkpoint import _format
from ema_core.checkpoint._arrays import MAX_STEP, check_scalar, host_bytes, saveable
from ema_core.checkpoint._format import PREFIX, SHADOW, escape

__all__ = ["Contents", "contents", "save", "torch_ema_state"]

TORCH_FORMAT = "ema_core.torch.EMA"  # ema_core.torch._state.FORMAT: its state_dict's format


class Contents(NamedTuple):
    """What a checkpoint will hold: tensor names and arrays (file order), the config text (or
    None) and the source (``"EMA"`` or ``"EMAState"``)."""

    names: list[str]
    arrays: list[Any]
    config: str | None
    source: str


def save(
    path: str | os.PathLike[str],
    ema_or_state: Any,
    /,
    config: Config | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save an EMA as one safetensors file that any framework loads, crash-safe.

    The file holds every shadow under its name (``"shadow/<name>"``: a torch ``EMA``'s tensor
    names; an ``EMAState``'s paths, ``/``-joined and escaped), the ``step`` and the
    bias-correction ``weight`` as 0-d tensors in their own dtypes, and string metadata: the
    format and its version, the config (as text), the library version, the source framework,
    the dtypes and ``metadata``. Every dtype is kept (bfloat16 stays bfloat16). Nothing is
    pickled. The file is written beside ``path``, fsynced and renamed onto it: a save killed at
    any moment leaves the old file or the new one, never a torn one.

    Args:
        path: the file to write (replaced if it exists). A symbolic link stays one: its
            target is replaced, as ``open(path, "wb")`` and ``torch.save`` do.
        ema_or_state: an ``ema_core.torch.EMA`` (its config is saved with it), its
            ``state_dict()`` or ``ema_core.torch.full_state_dict(ema)``, or an ``EMAState`` of
            numpy, torch, JAX (fully addressable; sharded arrays are gathered on this host),
            CuPy or array-api-strict arrays.
        config: the ``Config`` of an ``EMAState``, saved as text and checked by ``load`` when
            it is given a config; ``None`` for an ``EMA``, which saves its own.
        metadata: your own strings (str -> str), stored beside ours; keys must not start with
            ``"ema_core."``.

    Returns:
        The path written.

    Raises:
        TypeError: ``ema_or_state``, ``config`` or ``metadata`` of the wrong type; an array of
            no known framework or of a dtype the format has no code for (complex128).
        ValueError: an FSDP2 (DTensor) or multi-process JAX state, which ``save`` does not
            gather silently (use torch.distributed.checkpoint / orbax, or gather explicitly);
            a torch tensor whose storage was freed; a ``path`` naming a directory (one that
            exists, or ending in a separator);
            a ``config`` given with an ``EMA``; a reserved metadata key; two shadows that
            would share a name.
        FileNotFoundError: the file's folder (or a dangling link's target's) does not exist.
        NotADirectoryError: a file stands where that folder (or one above it) should be.

    Example:
        >>> import tempfile, pathlib, numpy as np, ema_core as ema
        >>> from ema_core.checkpoint import load, save
        >>> state = ema.init({"w": np.ones(2, dtype=np.float32)})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save(pathlib.Path(d) / "ema.safetensors", state)
        ...     load(path, ema.init({"w": np.zeros(2, dtype=np.float32)})).shadow["w"]
        array([1., 1.], dtype=float32)
    """
    target = _target(path)
    user = _format.user_metadata(metadata)
    found = contents(ema_or_state, config)
    specs, frameworks = [], []
    for name, array in zip(found.names, found.arrays, strict=True):
        framework, code, shape = saveable(array, f"ema_or_state {name!r}")
        specs.append((name, code, shape))
        frameworks.append(framework)
    for spec, array, framework in zip(specs[-2:], found.arrays[-2:], frameworks[-2:], strict=True):
        check_scalar(f"ema_or_state.{spec[0]}", spec[1], host_bytes(array, framework))
    meta = {**user, **_ours(found, specs, frameworks)}
    data = (host_bytes(a, f) for a, f in zip(found.arrays, frameworks, strict=True))
    return write_atomic(target, lambda file: _safetensors.write(file, specs, data, meta))


def _target(path: Any) -> str:
    """``path`` checked: a str or PathLike naming a file, not a directory (one that exists, or
    a path ending in a separator), in a folder
    that exists (a symbolic link's target's folder: ``save`` writes through the link)."""
    text = _format.check_path(path, "file")
    if os.path.isdir(text):
        raise ValueError(
            f"path {text!r} is a directory; save writes a file: name one, such as "
            f"{os.path.join(text, 'ema.safetensors')!r}"
        )
    if text.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        raise ValueError(
            f"path {text!r} ends in a separator, so it names a directory; save writes a file: "
            f"name one, such as {os.path.join(text, 'ema.safetensors')!r}"
        )
    resolve_link(text)  # FileNotFoundError / OSError before anything is computed
    return text


def contents(ema_or_state: Any, config: Config | None) -> Contents:
    """The tensors and config text of an ``EMA``, an EMA state dict or an ``EMAState``.

    Raises:
        TypeError: anything else, or a ``config`` that is not a ``Config``.
        ValueError: a ``config`` given with an ``EMA`` or its state dict.
    """
    if config is not None and not isinstance(config, Config):
        raise TypeError(
            f"config must be an ema_core.Config or None, got {type(config).__name__}"
            f"{config_hint(config)}"
        )
    if isinstance(ema_or_state, EMAState):
        return _state_contents(ema_or_state, config)
    state = torch_ema_state(ema_or_state)
    if state is None:
        # full_state_dict(ema) returns {} on the ranks that keep nothing
        empty = isinstance(ema_or_state, dict) and not ema_or_state
        hint = (
            " (full_state_dict(ema), a gather, returns {} off rank 0: call it on every rank "
            "and save on rank 0 only)"
            if empty
            else packed_hint(ema_or_state) or _bank_hint(ema_or_state)
        )
        raise TypeError(
            "ema_or_state must be an ema_core.torch.EMA, its state_dict() or an ema_core.EMAState, "
            f"got {'an empty dict' if empty else type(ema_or_state).__name__}{hint}"
        )
    if config is not None:
        raise ValueError(
            "config must be None when saving an EMA or its state dict: the EMA's own config is "
            f"saved, got {config!r}"
        )
    shadows = state["shadow"]
    names = [f"{SHADOW}/{escape(name)}" for name in shadows]
    for name in names:
        _format.check_utf8(name, "a shadow's name")
    arrays = [*shadows.values(), state["step"], state["weight"]]
    return Contents([*names, "step", "weight"], arrays, stable_text(state["config"]), "EMA")


def torch_ema_state(value: Any) -> dict[str, Any] | None:
    """The ``state_dict()`` of a torch ``EMA``, ``value`` itself when it is one (checked), or
    None when ``value`` is neither. Only ``sys.modules`` is read: an ``EMA`` exists only once
    ``ema_core.torch`` is imported."""
    module = sys.modules.get("ema_core.torch._module")
    if module is not None and isinstance(value, module.EMA):
        return value.state_dict()  # type: ignore[no-any-return]
    if not (isinstance(value, Mapping) and value.get("format") == TORCH_FORMAT):
        return None
    # such a dict is made by an EMA, though maybe in another process (torch.load of it): its
    # checks are imported here, where torch must be installed for the dict to hold tensors
    check = importlib.import_module("ema_core.torch._state").check
    check(value, [], [], "", False)  # the header, counter, weight, and a dict of shadows
    shadows = value["shadow"]
    check(value, list(shadows), list(shadows.values()), "", False)  # each shadow tensor
    return dict(value)


def _state_contents(state: EMAState, config: Config | None) -> Contents:
    leaves, paths, _ = flatten(state.shadow, "ema_or_state.shadow")
    named = [(path_str("shadow", p), x) for p, x in zip(paths, leaves, strict=True)]
    for where, x in [("step", state.step), ("weight", state.weight), *named]:
        if callable(getattr(x, "is_deleted", None)) and x.is_deleted():  # a JAX array
            raise ValueError(
                f"ema_or_state.{where} was deleted (donated to a jitted update, which deletes "
                "the arrays it is given): save the state that update returned"
            )
    names = _format.shadow_names(paths, "ema_or_state.shadow")
    scalars = [_scalar(state.step, "step", np.int64), _scalar(state.weight, "weight", np.float64)]
    text = None if config is None else config_text(config)
    return Contents([*names, "step", "weight"], [*leaves, *scalars], text, "EMAState")


def _scalar(value: Any, what: str, python_dtype: type[Any]) -> Any:
    """A 0-d array of ``value`` (a Python number becomes a numpy one of ``python_dtype``); a
    step must be an integer (a float one would be truncated), neither may be a bool.

    Raises:
        TypeError: a bool, or a float step (arrays of the wrong dtype: ``check_scalar``).
        ValueError: a Python int step out of range, or an array that is not 0-d.
    """
    integer = python_dtype is np.int64
    if isinstance(value, bool) or (integer and isinstance(value, float)):  # arrays: below
        kind = "an int or a 0-d integer array" if integer else "a float or a 0-d float array"
        raise TypeError(f"ema_or_state.{what} must be {kind}, got {type(value).__name__} {value!r}")
    if isinstance(value, int) and not 0 <= value <= MAX_STEP:
        raise ValueError(f"ema_or_state.{what} must be in [0, 2**63 - 1], got {value}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = np.asarray(value, dtype=python_dtype)
    if getattr(value, "shape", None) != ():
        raise ValueError(
            f"ema_or_state.{what} must be a 0-d array or a Python number, got "
            f"{type(value).__name__} of shape {getattr(value, 'shape', None)}"
        )
    return value


def _ours(found: Contents, specs: list[Any], frameworks: list[str]) -> dict[str, str]:
    dtypes = [_safetensors.name_of(code) for _, code, _ in specs]
    meta = {
        "format": _format.FORMAT,
        "format_version": str(_format.VERSION),
        "library_version": __version__,
        "source": found.source,
        "framework": ",".join(sorted(set(frameworks[:-2]) or set(frameworks))),  # the shadows'
        "dtypes": _format.dtypes_text(found.names, dtypes),
    }
    if found.config is not None:
        meta["config"] = found.config
    return {PREFIX + key: value for key, value in meta.items()}


def _bank_hint(value: Any) -> str:
    """Where one EMA is expected, the way out for a bank (recognised by its ``emas``)."""
    if isinstance(getattr(value, "emas", None), tuple):
        return " (a bank: save one member, bank[k], or torch.save(bank.state_dict(), path))"
    return ""
