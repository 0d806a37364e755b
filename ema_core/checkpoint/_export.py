"""``export``: an EMA's averages in the layouts other tools read, for users leaving or sharing.

* ``"state_dict"``: ``{name: average}``, the model's own names, for ``model.load_state_dict``;
  a tensor the model holds under several names (tied weights, tracked once) is written under
  each, as ``module.state_dict()`` does (one tensor).
* ``"timm"``: ``{"state_dict_ema": <that>}``, the entry timm's ``load_checkpoint(...,
  use_ema=True)`` and ``CheckpointSaver`` use.
* ``"diffusers"``: a folder as diffusers' ``EMAModel.save_pretrained`` writes it
  (``diffusion_pytorch_model.safetensors`` + ``config.json``: the model's config, the
  ``EMAModel`` hyperparameters and ``optimization_step``), which ``EMAModel.from_pretrained(path,
  model_cls)`` resumes; only for an EMA of every parameter of its model, built with
  ``presets.diffusers``. ``_diffusers`` checks and writes it, each file crash-safe
  (``ema_core._atomic``): an interrupted export leaves each file old or new, the weights first,
  so a folder whose config.json says the new step holds the new weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, overload

from ema_core.checkpoint._diffusers import DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS, write_diffusers
from ema_core.checkpoint._format import check_path
from ema_core.torch import _dtensor
from ema_core.torch._bank_snap import aliases, transient
from ema_core.torch._module import EMA

__all__ = ["DIFFUSERS_CONFIG", "DIFFUSERS_WEIGHTS", "FORMATS", "export"]

FORMATS = ("state_dict", "timm", "diffusers")


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
            given where unused, an EMA whose config is not ``presets.diffusers(**args)`` or
            that leaves out parameters of its model (``"diffusers"``: ``include=`` /
            ``exclude=``). Nothing is written then.

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
    return write_diffusers(ema, averages, Path(path), model_config, args or {})


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
