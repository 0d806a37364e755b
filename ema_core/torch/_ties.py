"""Tied names of the tensors an ``EMA`` tracks (``head.weight = emb.weight`` is tracked once, as
``emb.weight``): read when the EMA is built, watched with the tracked tensors (``_watch.Watch``),
and checked when the module changed (``check_ties``): a tie undone since is refused by name
rather than leave the untied tensor unaveraged and out of every export."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ema_core.backends.torch._pairs import memory_key
from ema_core.torch._names import Tracked

__all__ = ["Aliases", "check_ties", "entry", "owner_of", "tied_names"]

#: A tracked parameter's other names in the module (tied weights): (raw name, its index).
Aliases = Sequence[tuple[str, int]]


def tied_names(root: torch.nn.Module | None, tracked: list[Tracked]) -> list[tuple[str, int]]:
    """The other names under which ``root`` holds a tracked parameter (``head.weight`` tied to
    the tracked ``emb.weight``), read once when the EMA is built: the watch then sees such a name
    given a tensor of its own (``check_ties``). Found by walking the modules' own tables from
    the root (the paths the watch walks; a wrapper's ``named_parameters`` may name others),
    each tensor's first place and the tracked names left out."""
    if root is None:
        return []
    index = {id(t.tensor): i for i, t in enumerate(tracked)}
    raws = {t.raw for t in tracked}
    seen: set[int] = set()
    found = []
    for raw, x in _walk(root):  # parameters: a buffer under two modules, .to() unties it
        i = index.get(id(x))
        if i is None:
            continue
        if id(x) in seen and raw not in raws:
            found.append((raw, i))
        seen.add(id(x))
    return list(dict.fromkeys(found))


def _walk(root: torch.nn.Module) -> list[tuple[str, Any]]:
    """``(path, parameter)`` for every entry of every module's ``_parameters`` under ``root``,
    a module reached twice (shared) under each path, depth first in registration order; a
    module on its own path (a cycle) is not entered again."""
    out: list[tuple[str, Any]] = []
    stack: list[tuple[str, Any, tuple[int, ...]]] = [("", root, ())]
    while stack:
        path, module, above = stack.pop()
        try:
            out += [(f"{path}{k}", x) for k, x in module._parameters.items() if x is not None]
            children = [(k, c) for k, c in module._modules.items() if c is not None]
        except (AttributeError, RuntimeError):  # not a module's tables: nothing to follow
            continue
        chain = (*above, id(module))
        stack += [(f"{path}{k}.", c, chain) for k, c in reversed(children) if id(c) not in chain]
    return out


def check_ties(
    root: torch.nn.Module | None, aliases: Aliases, now: list[Tracked]
) -> list[tuple[str, int]]:
    """The ``aliases`` the module still has, after checking that each holds its tracked tensor
    as the module holds it ``now``.

    Raises:
        ValueError: a name tied to a tracked tensor when the EMA was built holds a tensor of its
            own (weights untied since: it would never be averaged, and exports would drop it).
    """
    kept = []
    for raw, i in aliases:
        owner, key = owner_of(root, raw)
        held = None if owner is None else entry(owner._parameters, key)
        if held is None:
            continue  # the name is gone with its module: nothing left untracked
        if held is not now[i].tensor and not _same_memory(held, now[i].tensor):
            raise ValueError(
                f"{raw!r} was another name of the tracked tensor {now[i].name!r} when the EMA "
                "was built, and now holds a tensor of its own (weights untied after the EMA was "
                "built, or re-created apart by model.to() under torch.__future__."
                "set_overwrite_module_params_on_conversion(True)): it would never be averaged; "
                "tie them again (model.tie_weights()) or build the EMA after untying"
            )
        kept.append((raw, i))
    return kept


def _same_memory(a: Any, b: torch.Tensor) -> bool:
    """Two tensor objects over the same elements (``memory_key``): still tied in effect."""
    key = memory_key(a)
    return key is not None and key == memory_key(b)


def owner_of(root: Any, raw: str) -> tuple[Any, str]:
    """The module that holds ``raw`` (walked child by child from ``root``: a TorchScript module
    has no ``get_submodule``) and its key there; None where the path is gone."""
    path, _, key = raw.rpartition(".")
    owner = root
    for name in path.split(".") if path else ():
        owner = entry(owner._modules, name) if owner is not None else None
    return owner, key


def entry(table: Any, key: str) -> Any:
    """``table[key]``, None when absent (a TorchScript module's tables are not dicts)."""
    try:
        return table[key]
    except (KeyError, RuntimeError):
        return None
