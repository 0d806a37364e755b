"""The other names a module gives a tracked tensor: a tied tensor (``head.weight = emb.weight``)
is tracked once, under its first name (``emb.weight``); ``tied_aliases`` gives its other names,
which ``copy_to``, ``state_dict`` exports and post-hoc snapshots write too, and ``other_names``
the ones ``include=`` / ``exclude=`` read. Names are the EMA's (``_prefixes.namer``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ema_core.backends.torch._pairs import memory_key
from ema_core.torch._prefixes import namer

__all__ = ["other_names", "tied_aliases"]


def tied_aliases(
    root: torch.nn.Module | None,
    prefix: str | None,
    names: Iterable[str],
    watched: Iterable[str] = (),
) -> dict[str, str]:
    """The other names ``root`` gives a tracked tensor (tied weights: ``out.weight =
    emb.weight`` is tracked once, as ``emb.weight``): alias -> tracked name, in
    ``root.state_dict()`` order, named as ``namer(root, prefix)`` names them; {} without a
    module. A name tied when the EMA was built (``watched``: its raw paths) counts also when it
    now holds another Parameter over the tracked one's memory (``load_state_dict(assign=True)``
    of a tied save); no other name is matched by memory (an excluded view stays excluded)."""
    if root is None:
        return {}
    name_of = namer(root, prefix)
    entries = [(name_of(k), v) for k, v in root.state_dict(keep_vars=True).items()]
    tracked = set(names)
    buffers = [(name_of(k), v) for k, v in root.named_buffers()]  # non-persistent ones too
    owner = {id(v): k for k, v in (*entries, *buffers) if k in tracked}
    # two Parameters over one memory (load_state_dict(assign=True) of a tied save) count too
    tied = set(map(name_of, watched))
    at = {memory_key(v): k for k, v in (*entries, *buffers) if k in tracked}
    at.pop(None, None)  # tensors without memory to compare: by identity only
    out = {
        k: owner.get(id(v)) or (at.get(memory_key(v)) if k in tied else None)
        for k, v in entries
        if k not in tracked
    }
    return {k: v for k, v in out.items() if v is not None}


def other_names(
    source: Any, names: list[str], include: Any, exclude: Any
) -> dict[str, list[tuple[str, str]]]:
    """A module's other names of each tensor (tied weights: ``head.weight = emb.weight`` is
    found once, as ``emb.weight``) as ``(name, raw name)`` pairs (the raw one as the wrapped
    model lists it), which the filters read too; none without filters."""
    if not isinstance(source, torch.nn.Module) or (include is None and exclude is None):
        return {}
    name_of = namer(source, None)
    entries = [(name_of(k), k, v) for k, v in source.state_dict(keep_vars=True).items()]
    tracked = set(names)
    buffers = [(name_of(k), v) for k, v in source.named_buffers()]  # non-persistent ones too
    owner = {id(v): n for n, v in (*((n, v) for n, _, v in entries), *buffers) if n in tracked}
    others: dict[str, list[tuple[str, str]]] = {}
    for name, raw, value in entries:
        if name not in tracked and id(value) in owner:
            others.setdefault(owner[id(value)], []).append((name, raw))
    return others
