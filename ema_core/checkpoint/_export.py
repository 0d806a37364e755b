"""``export``: an EMA's averages in the layouts other tools read, for users leaving or sharing.

* ``"state_dict"``: ``{name: average}``, the model's own names, for ``model.load_state_dict``;
  a tensor the model holds under several names (tied weights, tracked once) is written under
  each, as ``module.state_dict()`` does (one tensor).
* ``"timm"``: ``{"state_dict_ema": <that>}``, the entry timm's ``load_checkpoint(...,
  use_ema=True)`` and ``CheckpointSaver`` use.
* ``"diffusers"``: a folder as diffusers' ``EMAModel.save_pretrained`` writes it
  (``diffusion_pytorch_model.safetensors`` + ``config.json``: the model's config, the
  ``EMAModel`` hyperparameters and ``optimization_step``), which ``EMAModel.from_pretrained(path,
  model_cls)`` resumes. Each file is written crash-safe (``ema_core._atomic``): an interrupted
  export leaves each file old or new, the weights first, so a folder whose config.json says the
  new step holds the new weights.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, Literal, overload

import torch

from ema_core import _safetensors, presets
from ema_core._atomic import atomic_paths
from ema_core._config_text import config_text
from ema_core.checkpoint._arrays import host_bytes, saveable
from ema_core.checkpoint._format import check_path
from ema_core.checkpoint._peers import preset_of, same_trajectory
from ema_core.checkpoint._peers_read import DIFFUSERS_ARGS
from ema_core.torch import _dtensor
from ema_core.torch._bank_snap import aliases, transient
from ema_core.torch._module import EMA

__all__ = ["DIFFUSERS_CONFIG", "DIFFUSERS_WEIGHTS", "FORMATS", "export"]

FORMATS = ("state_dict", "timm", "diffusers")
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_CONFIG = "config.json"
# keys of a diffusers model's config that its save_pretrained leaves out of config.json
_UNSAVED = ("_use_default_values", "_ignore_files", "_pre_quantization_dtype")


@overload
def export(ema: EMA, /, *, format: Literal["state_dict", "timm"]) -> dict[str, Any]: ...


@overload
def export(
    ema: EMA,
    /,
    *,
    format: Literal["diffusers"],
    path: str | os.PathLike[str],
    model_config: Mapping[str, Any],
    args: Mapping[str, Any] | None = None,
) -> Path: ...


def export(
    ema: EMA,
    /,
    *,
    format: Literal["state_dict", "timm", "diffusers"],
    path: str | os.PathLike[str] | None = None,
    model_config: Mapping[str, Any] | None = None,
    args: Mapping[str, Any] | None = None,
) -> dict[str, Any] | Path:
    """The EMA's averages in a peer tool's layout.

    Args:
        ema: an ``ema_core.torch.EMA`` (not sharded: export ``full_state_dict`` on one rank).
        format: ``"state_dict"`` (name -> average, copies), ``"timm"`` (``{"state_dict_ema":
            ...}``, merge it into your checkpoint dict) or ``"diffusers"`` (a folder).
        path: ``"diffusers"`` only: the folder to write, e.g. ``output_dir / "unet_ema"``.
        model_config: ``"diffusers"`` only: the model's config (``unet.config``), which
            ``from_pretrained`` builds the model from; JSON-serializable values.
        args: ``"diffusers"`` only: the ``presets.diffusers`` arguments the EMA was built with
            (their defaults where None); written as ``EMAModel``'s hyperparameters.

    Returns:
        The dict, or (``"diffusers"``) the folder's path.

    Raises:
        TypeError: a wrong type; a ``model_config`` value JSON cannot write. ValueError: an
            unknown format, a sharded EMA, a ``path`` / ``model_config`` / ``args`` missing or
            given where unused, an EMA whose config is not ``presets.diffusers(**args)``.
            Nothing is written then.

    Example:
        >>> import torch
        >>> from ema_core.checkpoint._export import export
        >>> from ema_core.torch import EMA
        >>> ema = EMA(torch.nn.Linear(2, 1, bias=False), decay=0.9)
        >>> sorted(export(ema, format="timm")["state_dict_ema"])
        ['weight']
    """
    _check(ema, format, path, model_config, args)
    full = {n: a.detach().clone() for n, a in ema.average.items()}
    skip = transient(ema)  # non-persistent buffers: not in module.state_dict()
    averages = {n: a for n, a in full.items() if n not in skip}
    averages.update({alias: full[name] for alias, name in aliases(ema).items()})
    if format == "state_dict":
        return averages
    if format == "timm":
        return {"state_dict_ema": averages}
    if path is None or model_config is None:  # _check refused this already
        raise TypeError('export(format="diffusers") needs path= and model_config=')
    return _write_diffusers(ema, averages, Path(path), model_config, args or {})


def _check(ema: Any, format: Any, path: Any, model_config: Any, args: Any) -> None:
    if not isinstance(ema, EMA):
        raise TypeError(f"ema must be an ema_core.torch.EMA, got {type(ema).__name__}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    if any(_dtensor.is_dtensor(s) for s in ema.state_dict()["shadow"].values()):
        raise ValueError(
            "ema is sharded (FSDP2 DTensor shadows): gather it on purpose "
            "(ema_core.torch.full_state_dict) and export an EMA of the full model"
        )
    given = {"path": path, "model_config": model_config, "args": args}
    if format != "diffusers":
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise ValueError(f"{extra} are for format='diffusers', not format={format!r}")
        return
    if path is None or model_config is None:
        raise ValueError("format='diffusers' needs path= (the folder) and model_config=")
    folder = check_path(path, "folder")
    blocker = next((p for p in (Path(folder), *Path(folder).parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ValueError(
            f"path {folder!r} is not a folder: {str(blocker)!r} exists and is a file; "
            "format='diffusers' writes a folder"
        )
    for name, value in (("model_config", model_config), ("args", args)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a dict, got {type(value).__name__}")


def _write_diffusers(
    ema: EMA,
    averages: dict[str, torch.Tensor],
    folder: Path,
    model_config: Mapping[str, Any],
    args: Mapping[str, Any],
) -> Path:
    """Check everything, then write the weights and config.json into ``folder``."""
    text = _diffusers_config(ema, model_config, args)
    specs, frameworks = [], []
    for name, average in averages.items():
        framework, code, shape = saveable(average, f"the average {name!r}")
        specs.append((name, code, shape))
        frameworks.append(framework)
    data = (host_bytes(a, f) for a, f in zip(averages.values(), frameworks, strict=True))
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt"}  # what transformers / diffusers' safetensors readers look for
    paths = [folder / DIFFUSERS_WEIGHTS, folder / DIFFUSERS_CONFIG]
    with atomic_paths(paths) as (weights, config):  # both files or neither
        with open(weights, "r+b") as file:
            _safetensors.write(file, specs, data, meta)
        config.write_bytes(text.encode())
    return folder


def _diffusers_config(ema: EMA, model_config: Mapping[str, Any], args: Mapping[str, Any]) -> str:
    """config.json: the model's config, then ``EMAModel.state_dict()`` less its shadows."""
    expected = preset_of("diffusers", args)
    if not same_trajectory(ema.config, expected):
        raise ValueError(
            f"format='diffusers' writes diffusers EMAModel hyperparameters, but ema was built "
            f"with {config_text(ema.config)}, not presets.diffusers(**{dict(args)!r}) = "
            f"{config_text(expected)}: pass args= the presets.diffusers arguments it was built "
            "with, or export format='state_dict'"
        )
    defaults = inspect.signature(presets.diffusers).parameters
    hyper = {k: args.get(k, defaults[k].default) for k in DIFFUSERS_ARGS}
    # diffusers' EMAModel.load_state_dict wants min_decay a float and the others as typed
    hyper["min_decay"] = float(hyper["min_decay"])
    step = ema.step
    config = {**_model_json(ema, model_config), **hyper, "optimization_step": int(step)}
    try:
        return json.dumps(config, indent=2, sort_keys=True, default=_saveable) + "\n"
    except (TypeError, ValueError) as err:
        raise TypeError(f"model_config holds a value JSON cannot write: {err}") from err


def _model_json(ema: EMA, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The model's config as diffusers' ``save_pretrained`` writes it, without the keys diffusers
    keeps in memory only; ``_class_name`` (the EMA's module class when ``model_config`` is (or
    equals) that module's ``config`` and names none; ``diffusers.AutoModel`` needs it) and then the
    installed ``_diffusers_version``."""
    config = {k: v for k, v in model_config.items() if k not in _UNSAVED}
    module = _unwrapped(ema._bound.root)
    if "_class_name" not in config and _same(getattr(module, "config", None), model_config):
        config["_class_name"] = type(module).__name__
    if "_class_name" in config:  # a diffusers model's config (a plain dict stays as given)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # keep model_config's
            config["_diffusers_version"] = importlib.metadata.version("diffusers")
    return config


def _same(config: Any, model_config: Mapping[str, Any]) -> bool:
    """Whether ``config`` (a module's ``.config``) is ``model_config`` or a mapping equal to it."""
    if config is model_config:
        return True
    try:
        return isinstance(config, Mapping) and dict(config) == dict(model_config)
    except (TypeError, ValueError, RuntimeError):  # values that compare ambiguously (arrays)
        return False


def _unwrapped(module: Any) -> Any:
    """The model inside ``torch.compile`` (``._orig_mod``) and (Distributed)DataParallel
    (``.module``) wrappers."""
    while isinstance(module, torch.nn.Module):
        inner = module._modules.get("_orig_mod")
        if inner is None and type(module).__name__.endswith("DataParallel"):
            inner = module._modules.get("module")
        if inner is None:
            break
        module = inner
    return module


def _saveable(value: Any) -> Any:
    """A config value JSON has no type for, as diffusers writes it: a path as POSIX text, a
    numpy array as a list, an object with ``to_dict()`` as that dict."""
    if isinstance(value, PurePath):
        return value.as_posix()
    if type(value).__module__ == "numpy" and callable(getattr(value, "tolist", None)):
        return value.tolist()
    if callable(getattr(value, "to_dict", None)):
        return value.to_dict()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
