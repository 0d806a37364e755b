"""accelerate: the EMA saved and loaded with every ``save_state`` / ``load_state`` folder.

``register(accelerator, ema)`` installs the two pre-hooks accelerate offers
(``register_save_state_pre_hook``, ``register_load_state_pre_hook``): each ``save_state``
folder then holds ``<name>.safetensors`` beside ``model.safetensors``, written by
``ema_core.checkpoint.save`` (crash-safe, no pickle: shadows, step, bias-correction weight and
config), and each ``load_state`` fills the EMA back in place, bit for bit, on its device,
once the files of all EMAs registered on the accelerator passed ``ema_core.checkpoint.check``
(all load, or none). accelerate (1.15) has no post-load hook: the EMAs load before the model.
``accelerator.register_for_checkpointing(ema)`` works too (the ``EMA`` has ``state_dict`` /
``load_state_dict``, loaded after the model), but writes a pickle that accelerate loads with
``weights_only=False``, cannot be unregistered, and a folder saved without it fails to load.

accelerate itself is never imported here: the accelerator is used through those two methods
and ``is_main_process``.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any, NamedTuple

try:
    import torch.distributed as dist
except ImportError as err:
    raise ImportError(
        "ema_core.integrations.accelerate needs torch: pip install ema-core[accelerate]"
    ) from err

import ema_core.checkpoint as _checkpoint
from ema_core.integrations._accelerate_args import check, check_free, check_name
from ema_core.torch._dist import full_state_dict, is_sharded
from ema_core.torch._module import EMA

__all__ = ["Hooks", "ema_path", "register"]

SUFFIX = ".safetensors"
#: The names registered on each accelerator (casefolded -> the name, a ref to its EMA): two
#: registrations under one name would write one file (the last save wins) and both load it.
_NAMES: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


class Hooks(NamedTuple):
    """The handles of the two hooks ``register`` installed (accelerate's ``RemovableHandle``)."""

    save: Any
    load: Any
    release: Any = None  # frees the name for another EMA

    def remove(self) -> None:
        """Uninstall both hooks: later ``save_state`` / ``load_state`` calls skip the EMA."""
        self.save.remove()
        self.load.remove()
        if self.release is not None:
            self.release()


def register(accelerator: Any, ema: EMA, /, *, name: str = "ema") -> Hooks:
    """Save ``ema`` in every ``accelerator.save_state`` folder and load it in ``load_state``.

    Saving: the main process (each node's main process under ``save_on_each_node``) writes
    ``<output_dir>/<name>.safetensors`` with ``ema_core.checkpoint.save``: the shadows, the
    EMA's ``step``, its bias-correction weight and its config, crash-safe. Sharded (FSDP2)
    shadows are gathered first, on every rank: call ``save_state`` on all of them, as
    accelerate's FSDP save needs anyway. A replicated EMA (DDP) takes no collective, so the
    main process may save alone (diffusers' scripts). Loading: every process
    reads the file into ``ema`` in place (``ema_core.checkpoint.load``), so updates continue as
    if never interrupted. The files of all EMAs registered on the accelerator are checked
    first (``ema_core.checkpoint.check``: names, shapes, dtypes and config), so a refused file
    leaves every EMA as it was. The model's own weights are left to accelerate, which loads
    them after these hooks: if that load fails, the EMAs are loaded already.

    Args:
        accelerator: an ``accelerate.Accelerator``.
        ema: the ``ema_core.torch.EMA`` of the prepared model.
        name: the file's stem (letters, digits, ``_``, ``.``, ``-``); one per EMA when there
            are several, distinct in any letter case. ``"model"`` and ``"model_<i>"`` (in any
            case) are accelerate's own.

    Returns:
        ``Hooks(save, load)``, whose ``remove()`` uninstalls both.

    Raises:
        TypeError: ``accelerator`` lacks the pre-hook methods, ``ema`` is not an ``EMA`` or
            ``name`` is not a str. ValueError: a ``name`` that is not a plain file stem (or is
            longer than 243 characters, too long for its file), that accelerate uses, or that
            is registered on this accelerator already (for this EMA or another, in any letter
            case). (When loading, for every EMA registered on
            this accelerator before any loads) FileNotFoundError: the folder lacks one's file;
            ValueError / TypeError: one's file is refused by ``ema_core.checkpoint.check``.

    Example:
        >>> import tempfile, torch
        >>> from accelerate import Accelerator
        >>> from ema_core.integrations.accelerate import ema_path, register
        >>> from ema_core.torch import EMA
        >>> accelerator = Accelerator(cpu=True)
        >>> model = accelerator.prepare(torch.nn.Linear(2, 1))
        >>> averager = EMA(model, decay=0.9)
        >>> hooks = register(accelerator, averager)
        >>> averager.update()
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = accelerator.save_state(folder)
        ...     averager.update()
        ...     accelerator.load_state(folder)  # the EMA is back at step 1
        ...     sorted(p.name for p in ema_path(folder).parent.glob("*.safetensors"))
        ['ema.safetensors', 'model.safetensors']
        >>> averager.step
        1
    """
    check(accelerator, ema, name)
    names = _names_of(accelerator)
    check_free(names, name, ema)

    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        del models, weights  # accelerate saves the model itself
        _save(accelerator, ema, ema_path(output_dir, name=name))

    def load_hook(models: list[Any], input_dir: str) -> None:
        del models
        others = [(held, ref()) for held, ref in list(names.values()) if held != name]
        _check_all(input_dir, [(name, ema), *((n, e) for n, e in others if e is not None)])
        _checkpoint.load(ema_path(input_dir, name=name), ema)

    key = name.casefold()
    entry = names[key] = (name, weakref.ref(ema))  # only its own remove() frees the name
    return Hooks(
        accelerator.register_save_state_pre_hook(save_hook),
        accelerator.register_load_state_pre_hook(load_hook),
        lambda: names.pop(key) if names.get(key) is entry else None,
    )


def _check_all(input_dir: str, emas: list[tuple[str, EMA]]) -> None:
    """Check every registered EMA's file as ``load`` would, before the first EMA loads: all of
    them load, or none (accelerate calls one pre-hook per EMA, each loading its own)."""
    for name, _ in emas:
        _require(input_dir, name)
    for name, ema in emas:
        try:
            _checkpoint.check(ema_path(input_dir, name=name), ema)
        except TypeError as err:
            raise TypeError(f"{err} (load_state loaded no EMA)") from None
        except ValueError as err:
            hint = _no_strict(name) if "strict=False" in str(err) else ""
            raise ValueError(f"{err} (load_state loaded no EMA){hint}") from None


def _no_strict(name: str) -> str:
    """How to pass ``strict=False``, which the messages of ``check`` offer: ``load_state``
    hands its keywords to the models' load, not to the pre-hooks; the EMA is registered again
    after the load, or later ``save_state`` calls would leave it out."""
    return (
        ". load_state takes no strict= for an EMA (its keywords reach the models' load only): "
        "remove() this registration's hooks, call load_state, register(accelerator, ema, "
        f"name={name!r}) again (or later save_state calls leave the EMA out), then "
        f"ema_core.checkpoint.load(ema_path(folder, name={name!r}), ema, strict=False)"
    )


def _require(input_dir: str, name: str) -> None:
    path = ema_path(input_dir, name=name)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: load_state({str(input_dir)!r}) expects the EMA that "
            f"register(..., name={name!r}) saves; was this folder saved without it? (no "
            "EMA was loaded)"
        )


def _names_of(accelerator: Any) -> dict[str, Any]:
    try:
        return _NAMES.setdefault(accelerator, {})
    except TypeError:  # not weak-referenceable: no record, no check
        return {}


def ema_path(directory: str | os.PathLike[str], /, *, name: str = "ema") -> Path:
    """The file ``register`` writes in a ``save_state`` folder, to read it elsewhere
    (``ema_core.checkpoint.load(ema_path(folder), EMA(model))``).

    Example:
        >>> from ema_core.integrations.accelerate import ema_path
        >>> ema_path("ckpt").as_posix(), ema_path("ckpt", name="ema_fast").name
        ('ckpt/ema.safetensors', 'ema_fast.safetensors')
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a str or os.PathLike, got {type(directory).__name__}")
    check_name(name)
    return Path(directory) / f"{name}{SUFFIX}"


def _save(accelerator: Any, ema: EMA, path: Path) -> None:
    """Write on the (node's) main process. A sharded EMA (FSDP2) is gathered first, on every
    rank (a collective, as accelerate's own FSDP save), and every rank then waits for the
    write: one that went on at once could ``load_state`` the folder before the file is there.
    A replicated EMA needs no collective: the main process writes its own shadows, and no
    barrier follows (diffusers' scripts call ``save_state`` on the main process alone)."""
    config = getattr(accelerator, "project_configuration", None)
    each_node = bool(getattr(config, "save_on_each_node", False))
    writes = accelerator.is_local_main_process if each_node else accelerator.is_main_process
    gathers = _in_process_group() and is_sharded(ema)
    source: Any = full_state_dict(ema, keep_on="all" if each_node else "rank0") if gathers else ema
    if writes:
        _checkpoint.save(path, source)
    if gathers:
        accelerator.wait_for_everyone()


def _in_process_group() -> bool:
    return bool(dist.is_available() and dist.is_initialized())
