"""``load`` and ``check``: a checkpoint into a torch ``EMA`` (in place) or an ``EMAState`` of
any backend, or checked against one without writing anything.

The file's own checks are in ``_load_file``; those against the target in ``_load_ema`` (a torch
``EMA``, through its ``load_state_dict`` checks) and ``_load_state`` (an ``EMAState``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from ema_core import _safetensors
from ema_core._checks import packed_hint
from ema_core._config import Config
from ema_core._types import EMAState
from ema_core.checkpoint import _format
from ema_core.checkpoint._load_ema import check_into, load_into
from ema_core.checkpoint._load_file import shadow_names
from ema_core.checkpoint._load_state import checked_state

__all__ = ["check", "load"]


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
            or array-api-strict arrays (with values: no ``jax.ShapeDtypeStruct``, no meta
            tensor) giving the nest, dtypes, devices and JAX shardings of the result.
        config: for an ``EMAState``, the ``Config`` the file's must equal (as ``config_text``);
            ``None`` checks none. Must be ``None`` for an ``EMA``, whose own config is checked.
        strict: ``True`` requires the same shadow names on both sides (and, for an ``EMA``,
            the same config); ``False`` loads the names both have and keeps ``like``'s others.

    Returns:
        ``like`` itself for an ``EMA``; a new ``EMAState`` for an ``EMAState``.

    Raises:
        TypeError: ``like``, ``config`` or ``strict`` of the wrong type; a leaf of ``like``
            that is not an array (an abstract ``jax.ShapeDtypeStruct``).
        ValueError: ``path`` is a directory; a leaf of ``like`` on torch's meta device, or
            deleted (donated) where ``strict=False`` keeps it; the file is not an ema-core
            checkpoint (not safetensors, no ``ema_core.format`` key) or of a newer format
            version; names, shapes, dtypes or config differ; a step or weight out of range or
            not fitting ``like``'s dtype.

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
    return _checked(path, like, config, strict, apply=True)


def check(
    path: str | os.PathLike[str],
    like: Any,
    /,
    *,
    config: Config | None = None,
    strict: bool = True,
) -> None:
    """Check a checkpoint against ``like`` as ``load`` does, writing nothing.

    Every check ``load`` makes before its first write (names, shapes, dtypes, config, step
    and weight, ``strict``) runs with the same errors; ``like`` is left as it is. Shadow bytes
    are not read: checking several files before loading any costs little (the accelerate
    integration does so for every EMA registered on an accelerator).

    Args:
        path: a file written by ``save``.
        like: an ``ema_core.torch.EMA`` or an ``EMAState``, as for ``load``.
        config: as for ``load``.
        strict: as for ``load``.

    Raises:
        TypeError, ValueError: what ``load`` raises for the same file and arguments (also
            RuntimeError for an ``EMA`` inside its ``swap()``).

    Example:
        >>> import tempfile, pathlib, numpy as np, ema_core as ema
        >>> from ema_core.checkpoint import check, save
        >>> cfg = ema.Config(schedule=0.5)
        >>> state = ema.init({"w": np.zeros(2)}, cfg)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save(pathlib.Path(d) / "ema.safetensors", state, cfg)
        ...     check(path, state, config=cfg)  # passes: returns None
        ...     check(path, ema.init({"w": np.zeros(3)}, cfg))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ...'shadow/w' has shape (2,) dtype float64; like.shadow['w'] has shape (3,)...
    """
    _checked(path, like, config, strict, apply=False)


def _checked(
    path: str | os.PathLike[str], like: Any, config: Config | None, strict: bool, *, apply: bool
) -> Any:
    """Check the arguments, then the file against ``like``; then load it when ``apply``."""
    path, ema = _arguments(path, like, config, strict)
    with _safetensors.Reader(path) as reader:
        ours = _format.check_version(reader.path, reader.metadata)
        shadows = shadow_names(reader, flat=ema is not None)
        if ema is not None and apply:
            return load_into(reader, ours, shadows, ema, strict)
        if ema is not None:
            return check_into(reader, ours, shadows, ema, strict)
        make = checked_state(reader, ours, shadows, like, config, strict)
        return make() if apply else None


def _arguments(
    path: str | os.PathLike[str], like: Any, config: Config | None, strict: bool
) -> tuple[str, Any]:
    """The path as a str and ``like`` if it is a torch ``EMA`` (else None), once checked."""
    path = _format.check_path(path, "file")
    if os.path.isdir(path):
        raise ValueError(
            f"path {path!r} is a directory; load reads a file written by "
            "ema_core.checkpoint.save (such as 'ema.safetensors')"
        )
    ema = _torch_ema(like)
    if ema is None and not isinstance(like, EMAState):
        hint = (
            "; a plain safetensors file (such as python -m ema_core.posthoc writes) is read "
            "with safetensors.torch.load_file and loaded by model.load_state_dict"
            if isinstance(like, Mapping)
            else packed_hint(like)
        )
        raise TypeError(
            f"like must be an ema_core.torch.EMA or an ema_core.EMAState, got "
            f"{type(like).__name__}{hint}"
        )
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be an ema_core.Config or None, got {type(config).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool (True or False), got {strict!r:.80}")
    if ema is not None and config is not None:
        raise ValueError(
            "config must be None when loading into an EMA: its own config is compared with the "
            f"file's, got {config!r}"
        )
    return path, ema


def _torch_ema(like: Any) -> Any:
    module = sys.modules.get("ema_core.torch._module")  # an EMA exists only once it is imported
    return like if module is not None and isinstance(like, module.EMA) else None
