"""Arrays in and out of the frameworks: names for a nest's leaves, host copies, and back.

A leaf's name joins its path's keys with ``/``, each key escaped as in a JSON pointer (``~`` as
``~0``, ``/`` as ``~1``), as ``ema_core.jax.state_dict`` names them: ``{"a/b": x}`` is
``a~1b`` and ``{"a": {"b": x}}`` is ``a/b``. Keys that still print alike (the int ``0`` and the
string ``"0"`` in one dict) are refused. Only ``sys.modules`` is read to recognise a framework.

A ``like`` of ``reconstruct`` may hold a torch module's extra state (``get_extra_state``: the
``state_dict`` key ``_extra_state`` or ``<prefix>._extra_state``, e.g. TransformerEngine's fp8
metadata): any object, never tracked by an EMA nor in a snapshot. What lies under such a key is
kept as it is (``Like.kept``), so that ``model.load_state_dict(reconstruct(..., like=...))``
loads strictly.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import array_api_compat as compat
import numpy as np

from ema_core._ops import is_host_array
from ema_core._paths import Path, leaf_names
from ema_core._tree import TreeDef, flatten, unflatten

__all__ = [
    "EXTRA_STATE",
    "Like",
    "check_has_data",
    "check_whole",
    "framework_of",
    "from_host",
    "like_leaves",
    "named_leaves",
    "rebuild",
    "tied_groups",
    "to_host",
]


def named_leaves(tree: Any, what: str) -> tuple[list[str], list[Any], TreeDef]:
    """The names, leaves and tree definition of a nest (``what`` names it in errors)."""
    names, leaves, _, treedef = _named_paths(tree, what)
    return names, leaves, treedef


def _named_paths(tree: Any, what: str) -> tuple[list[str], list[Any], list[Path], TreeDef]:
    leaves, paths, treedef = flatten(tree, what)
    if treedef.kind == "leaf":
        raise TypeError(
            f"{what} must be a mapping or a nest of arrays, got one {type(tree).__name__}"
        )
    if not leaves:
        raise ValueError(f"{what} holds no arrays")
    return leaf_names(paths, what), leaves, list(paths), treedef


def framework_of(leaf: Any, where: str) -> str:
    """The framework of one leaf: numpy, torch, jax, cupy or array_api_strict."""
    for framework, test in _FRAMEWORKS:
        if test(leaf):
            return framework
    if is_host_array(leaf):
        return type(leaf).__module__.partition(".")[0]
    raise TypeError(f"{where} is a {type(leaf).__name__}, not an array of a known framework")


def check_has_data(leaf: Any, where: str) -> None:
    """``ValueError`` for a torch tensor on the meta device (a shape but no values), or a
    DTensor (this rank holds a shard of it, not its values); ``TypeError`` for a torch tensor
    that is not dense (sparse, mkldnn: not one block of values a snapshot can hold)."""
    torch = sys.modules.get("torch")
    if torch is not None and compat.is_torch_array(leaf) and leaf.layout != torch.strided:
        raise TypeError(
            f"{where} is a torch tensor of layout {leaf.layout}, not a dense (strided) one: "
            "snapshots hold dense arrays; pass its .to_dense()"
        )
    if compat.is_torch_array(leaf) and leaf.device.type == "meta":
        raise ValueError(
            f"{where} is a torch tensor on the meta device (a shape without values); snapshots "
            "need tensors with data (materialise the module first)"
        )
    check_whole(leaf, where)


def check_whole(leaf: Any, where: str) -> None:
    """``ValueError`` for a DTensor: this rank holds a shard of it, not its values (checked
    without importing torch.distributed: no DTensor exists before)."""
    module = sys.modules.get("torch.distributed.tensor")
    if module is not None and isinstance(leaf, module.DTensor):
        raise ValueError(
            f"{where} is a DTensor (a shard of an FSDP2 or tensor-parallel tensor): snapshots "
            "and reconstruction take whole tensors; gather them first "
            "(ema_core.torch.full_state_dict(ema), or like= an unsharded model's state_dict)"
        )


_FRAMEWORKS = (
    ("numpy", compat.is_numpy_array),
    ("torch", compat.is_torch_array),
    ("jax", compat.is_jax_array),
    ("cupy", compat.is_cupy_array),
)


def to_host(leaf: Any) -> np.ndarray:
    """A numpy copy or view of one leaf (known to ``framework_of``); bfloat16 comes back as
    float32 (exact); torch and CuPy arrays move to the host, JAX arrays through
    ``jax.device_get``."""
    if compat.is_numpy_array(leaf):
        host = np.asarray(leaf)
    elif compat.is_torch_array(leaf):
        host = _torch_to_host(leaf)
    elif compat.is_jax_array(leaf):
        host = np.asarray(sys.modules["jax"].device_get(leaf))
    elif compat.is_cupy_array(leaf):
        host = leaf.get()
    else:
        host = np.from_dlpack(leaf)
    return host.astype(np.float32) if host.dtype.name == "bfloat16" else host


def _torch_to_host(leaf: Any) -> np.ndarray:
    torch = sys.modules["torch"]
    tensor = leaf.detach().resolve_conj().resolve_neg().to("cpu")
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()  # type: ignore[no-any-return]


def from_host(array: np.ndarray, like: Any) -> Any:
    """``array`` as an array of ``like``'s framework, device and dtype."""
    if compat.is_numpy_array(like):
        return array.astype(like.dtype)
    if compat.is_torch_array(like):
        torch = sys.modules["torch"]
        return torch.from_numpy(array).to(device=like.device, dtype=like.dtype)
    if compat.is_jax_array(like):
        jax = sys.modules["jax"]
        return jax.device_put(array.astype(like.dtype), like.sharding)
    if compat.is_cupy_array(like):
        cupy = sys.modules["cupy"]
        with like.device:
            return cupy.asarray(array, dtype=like.dtype)
    xp = compat.array_namespace(like)
    return xp.asarray(array, dtype=like.dtype, device=compat.device(like))


def tied_groups(names: list[str], leaves: list[Any]) -> list[list[str]]:
    """The names of torch leaves that are one view of one storage (tied weights in a
    ``state_dict``: ``out.weight`` and ``emb.weight``), in groups of two or more."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, leaf in zip(names, leaves, strict=True):
        if compat.is_torch_array(leaf) and leaf.device.type != "meta" and leaf.numel():
            storage = leaf.untyped_storage().data_ptr()
            key = (storage, leaf.storage_offset(), leaf.shape, leaf.stride(), leaf.dtype)
            groups.setdefault((leaf.device, *key), []).append(name)
    return [group for group in groups.values() if len(group) > 1]


#: torch's ``state_dict`` key (or key suffix after a module prefix) of a module's extra state.
EXTRA_STATE = "_extra_state"


class Like(NamedTuple):
    """``reconstruct``'s ``like``: its names, leaves and tree definition, and the names of the
    leaves under an extra-state key (``kept``: returned as they are, not filled)."""

    names: list[str]
    leaves: list[Any]
    treedef: TreeDef
    kept: frozenset[str]


def _is_extra_state(path: Path) -> bool:
    keys = [entry[1] for entry in path if entry[0] == "key" and isinstance(entry[1], str)]
    return any(k == EXTRA_STATE or k.endswith("." + EXTRA_STATE) for k in keys)


def like_leaves(like: Any) -> Like:
    """``like``'s names, leaves and tree definition (``named_leaves``), each leaf checked to be
    an array that can hold the result: of a known framework, not on torch's meta device, not
    a DTensor. A leaf under an extra-state key is any object, kept as it is.

    Raises:
        TypeError: a leaf that is not an array (a Python number, ``jax.ShapeDtypeStruct``).
        ValueError: a meta tensor or a DTensor, naming ``like[name]``.

    Example:
        >>> import numpy as np
        >>> found = like_leaves({"w": np.zeros(2), "norm._extra_state": {"scale": 2}})
        >>> found.names, sorted(found.kept)
        (['w', 'norm._extra_state/scale'], ['norm._extra_state/scale'])
    """
    names, leaves, paths, treedef = _named_paths(like, "like")
    kept = frozenset(n for n, p in zip(names, paths, strict=True) if _is_extra_state(p))
    for name, leaf in zip(names, leaves, strict=True):
        where = f"like[{name!r}]"
        if name in kept:
            continue
        framework_of(leaf, where)
        if compat.is_torch_array(leaf) and leaf.device.type == "meta":
            raise ValueError(
                f"{where} is a torch tensor on the meta device, which holds no values: the "
                "result would lose them; give like= tensors on a real device (a model "
                "materialised with to_empty(device='cpu')), or leave like out for numpy arrays"
            )
        check_whole(leaf, where)
    return Like(names, leaves, treedef, kept)


def rebuild(arrays: dict[str, np.ndarray], like: Like, shapes_from: str) -> Any:
    """A nest shaped like ``like`` (``like_leaves``) holding ``arrays`` (matched by name) in
    ``like``'s leaves' framework, device and dtype; a kept leaf (extra state) the snapshots do
    not hold is ``like``'s own."""
    names, leaves, treedef, kept = like
    missing = [n for n in names if n not in arrays and n not in kept]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        hint = (
            " (an EMA built with include= / exclude= tracks only some of the model's tensors: "
            "filter like to the tracked names, {k: v for k, v in like.items() if k in "
            "list_snapshots(directory)[0].names} (file names: '/' written '~1', '~' "
            "written '~0'), and load the result with load_state_dict(..., strict=False))"
            if missing and not extra
            else ""
        )
        raise ValueError(
            f"like does not match the arrays of {shapes_from}: like has {missing[:5]} that the "
            f"snapshots do not, the snapshots have {extra[:5]} that like does not{hint}"
        )
    out = []
    for name, leaf in zip(names, leaves, strict=True):
        if name not in arrays:  # extra state: not an EMA's
            out.append(leaf)
            continue
        if tuple(leaf.shape) != arrays[name].shape:
            raise ValueError(
                f"like[{name!r}] has shape {tuple(leaf.shape)}, the snapshots {arrays[name].shape}"
            )
        out.append(from_host(arrays[name], leaf))
    return unflatten(treedef, out)
