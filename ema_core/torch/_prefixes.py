"""The wrapper prefixes an ``EMA`` drops from a module's tensor names.

A data-parallel wrapper (``DistributedDataParallel``, ``DataParallel``, a subclass such as
mmengine's, DeepSpeed's engine, or any module whose only child is ``module`` and which holds
no tensor of its own) holds the model as its child ``module``; ``torch.compile`` holds it as
``_orig_mod``; torch's activation-checkpoint wrappers (``checkpoint_wrapper``,
``offload_wrapper``, ``apply_activation_checkpointing``) hold each wrapped layer as
``_checkpoint_wrapped_module``. Their names carry ``module.`` / ``_orig_mod.`` in front and
``_checkpoint_wrapped_module.`` inside, so the same model wrapped or bare gets the same names
once those are dropped (the checkpoint wrapper's own ``state_dict`` drops its part too, so the
EMA's names are the model's ``state_dict()`` keys). Only the wrappers' own segments
go: a model's child named ``module`` beside other children or tensors keeps its name
(``model.module.weight`` would otherwise export as ``weight``, which ``model.load_state_dict``
refuses).

A mapping or pairs carry no modules to ask: there a leading ``module.`` is dropped when every
name has it (a DDP model's ``state_dict()``), and ``_orig_mod`` / ``_checkpoint_wrapped_module``
parts always.

A tied tensor (``head.weight = emb.weight``) is tracked once, under its first name;
``_tied_names`` gives its other names, named as ``namer`` names them.

An ``EMA`` decides its root's prefix when it is built and keeps it (``Binding.prefix``), so
its names never change when the model later gains a child or a buffer. Two earlier namings
still load (``renames``): one that dropped every leading ``module.`` (``legacy``; changed in
the change dated 2026-12-06), and one that kept ``_checkpoint_wrapped_module`` parts (until
the activation-checkpoint fix, made later and dated 2026-12-05).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

#: The segments ema-core drops: a data-parallel wrapper's child, a compiled module's child, an
#: activation-checkpoint wrapper's child (the last two wherever they are in a name).
PREFIXES = ("module.", "_orig_mod.", "_checkpoint_wrapped_module.")
#: The parts dropped anywhere in a name: wrappers that hold one layer (or the whole model).
_INNER = ("_orig_mod", "_checkpoint_wrapped_module")
#: Wrapper classes (by the name of the class or of a base class, so none is imported) whose
#: child ``module`` is the model.
DATA_PARALLEL = frozenset({"DistributedDataParallel", "DataParallel", "DeepSpeedEngine"})


#: id(root) -> the prefix an EMA being copied decided for it (``keeping``): its copy's names.
_KEPT: dict[int, str] = {}


@contextlib.contextmanager
def keeping(root: Any, prefix: str | None) -> Iterator[None]:
    """While an EMA is built over ``root`` (a deepcopy of an EMA), its prefix is ``prefix``,
    the one the copied EMA decided, not the one ``root``'s structure gives now."""
    if prefix is None or not isinstance(root, torch.nn.Module):
        yield
        return
    _KEPT[id(root)] = prefix
    try:
        yield
    finally:
        _KEPT.pop(id(root), None)


def wrapper_prefix(root: torch.nn.Module) -> str:
    """The raw prefix of the model inside ``root``'s wrappers, outermost first: ``module.`` per
    data-parallel wrapper, ``_orig_mod.`` per compiled one, ``_checkpoint_wrapped_module.`` per
    activation-checkpoint one; ``""`` for a bare model.

    >>> wrapper_prefix(torch.nn.parallel.DataParallel(torch.nn.Linear(1, 1)))
    'module.'
    >>> wrapper_prefix(torch.nn.Sequential(torch.nn.Linear(1, 1)))
    ''
    >>> class Net(torch.nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.module, self.head = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    >>> wrapper_prefix(Net()), wrapper_prefix(torch.nn.DataParallel(Net()))
    ('', 'module.')
    """
    if id(root) in _KEPT:
        return _KEPT[id(root)]
    prefix, module = "", root
    while (inner := _wrapped_child(module)) is not None:
        prefix += inner + "."
        module = module._modules[inner]  # type: ignore[assignment]
    return prefix


def namer(root: torch.nn.Module, prefix: str | None = None) -> Callable[[str], str]:
    """Maps a raw name of ``root`` (``named_parameters()``, ``state_dict()``) to the EMA's name:
    ``prefix`` (default: ``root``'s wrapper prefix now) and any ``_orig_mod`` or
    ``_checkpoint_wrapped_module`` part (a compiled or checkpointed submodule) dropped.

    >>> class Net(torch.nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.module, self.head = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    >>> namer(Net())("module.weight"), namer(torch.nn.DataParallel(Net()))("module.module.weight")
    ('module.weight', 'module.weight')
    """
    if prefix is None:
        prefix = wrapper_prefix(root)
    # the wrapper parts dropped from both first: a checkpoint wrapper's own state_dict() keys
    # lack its part, which a prefix such as "module._checkpoint_wrapped_module." holds
    outer = drop_wrapped(prefix)

    def name_of(raw: str) -> str:
        return drop_wrapped(raw).removeprefix(outer)

    return name_of


def strip_all(names: Iterable[str]) -> list[str]:
    """Names from a mapping or pairs: ``_orig_mod`` and ``_checkpoint_wrapped_module`` parts
    dropped, then a leading ``module.`` as long as every name has one (the state of a DDP model).

    >>> strip_all(["module.a", "module.b.c"]), strip_all(["module.a", "head.b"])
    (['a', 'b.c'], ['module.a', 'head.b'])
    """
    out = [drop_wrapped(name) for name in names]
    while out and all(name.startswith("module.") for name in out):
        out = [name.removeprefix("module.") for name in out]
    return out


def legacy(raw: str) -> str:
    """The name ema-core gave the raw name ``raw`` before 2026-12-06: ``_orig_mod`` parts and
    every leading ``module.`` dropped.

    >>> legacy("module.module.weight"), legacy("head.module.weight")
    ('weight', 'head.module.weight')
    """
    name = drop_compiled(raw)
    while name.startswith("module."):
        name = name.removeprefix("module.")
    return name


def renames(
    saved: Iterable[str], tracked: Iterable[str], model: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """Saved name -> the EMA's name, for a state saved before 2026-12-06 by an EMA of a model
    with a ``module`` child: each saved name that no tensor of the model has now is the
    ``legacy`` name of exactly one of the model's tensors (``model``: its ``(name, raw name)``
    pairs, untracked ones too: one whose old name two tensors shared could not have been
    saved), a tracked one whose own name is not saved too. Else (a saved name that is neither
    the model's now nor so renamed: not this model's state) ``{}``.

    >>> model = [("module.weight", "module.weight"), ("head.bias", "head.bias")]
    >>> renames(["weight", "head.bias"], ["module.weight", "head.bias"], model)
    {'weight': 'module.weight'}
    """
    names, pairs, keys = set(tracked), list(model), list(saved)
    current = {name for name, _ in pairs}
    if all(key in names for key in keys):
        return {}
    old: dict[str, list[str]] = {}
    for name, raw in pairs:
        old.setdefault(legacy(raw), []).append(name)
    moved = {
        key: old[key][0]
        for key in keys
        if key not in current
        and len(old.get(key, ())) == 1
        and old[key][0] in names
        and old[key][0] not in keys
    }
    model_names = {drop_wrapped(key) for key in keys} & current  # the model's, tracked or not
    for key in keys:  # kept _checkpoint_wrapped_module parts (saved before 2026-12-05)
        name = drop_wrapped(key)
        if key not in current and key not in moved and name in names and name not in keys:
            moved[key] = name
    # a saved name of one of the model's tensors that the EMA does not track (exclude=) is
    # the model's too: the others are still renamed, and a strict=False load leaves it out
    known = {key for key in keys if key in old or drop_wrapped(key) in model_names}
    ours = all(key in current or key in moved or key in known for key in keys)
    return moved if ours else {}


def drop_compiled(name: str) -> str:
    """``name`` without its ``_orig_mod`` parts (``torch.compile`` of the model or a submodule):
    the names of before 2026-12-06 (``legacy``).

    >>> drop_compiled("encoder._orig_mod.0.weight")
    'encoder.0.weight'
    """
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def drop_wrapped(name: str) -> str:
    """``name`` without its ``_orig_mod`` and ``_checkpoint_wrapped_module`` parts (a compiled
    or activation-checkpointed model or submodule).

    >>> drop_wrapped("layers.0._checkpoint_wrapped_module._orig_mod.weight")
    'layers.0.weight'
    """
    return ".".join(part for part in name.split(".") if part not in _INNER)


def _wrapped_child(module: torch.nn.Module) -> str | None:
    """The name of the child ``module`` wraps (``module``, ``_orig_mod`` or
    ``_checkpoint_wrapped_module``), None if none."""
    children = dict(module.named_children())
    for inner in _INNER:
        if inner in children:
            return inner
    if "module" not in children:
        return None
    if {cls.__name__ for cls in type(module).__mro__} & DATA_PARALLEL:
        return "module"
    own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return "module" if len(children) == 1 and not own else None
