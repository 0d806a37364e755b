"""Arrays of every framework to a file's bytes and back, exactly (bfloat16 included).

Saving: ``saveable`` checks a leaf (a known framework, not sharded over processes, a torch
storage that holds its elements, a dtype the format holds) before anything is written;
``host_bytes`` then gives its values on the host. Loading: ``like_array`` turns the bytes read
from the file into an array of ``like``'s framework, dtype, device and (JAX) sharding.
Frameworks are found through ``sys.modules`` only: a torch tensor exists only once torch is
imported, so nothing here imports a framework (the torch storage check is imported for a torch
tensor only).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import array_api_compat as compat
import numpy as np

from ema_core import _safetensors
from ema_core._ops import is_host_array
from ema_core.checkpoint._format import dtype_name

__all__ = [
    "MAX_STEP",
    "check_scalar",
    "framework_of",
    "host_bytes",
    "like_array",
    "saveable",
    "torch_bytes",
]

INTEGER = ("U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64")
FLOAT = ("F16", "BF16", "F32", "F64")
MAX_STEP = 2**63 - 1  # what every framework's int64 step holds

_DIST = (
    "save it with torch.distributed.checkpoint (dcp.save({'ema': ema.state_dict()}, ...)), or "
    "gather it on purpose: full = ema_core.torch.full_state_dict(ema) on every rank (a "
    "collective), then save(path, full) on rank 0"
)


def framework_of(leaf: Any) -> str | None:
    """numpy, torch, jax, cupy or array_api_strict; None for anything else."""
    if isinstance(leaf, (np.ndarray, np.generic)):
        return "numpy"
    for name, test in (
        ("torch", compat.is_torch_array),
        ("jax", compat.is_jax_array),
        ("cupy", compat.is_cupy_array),
    ):
        if test(leaf):
            return name
    return "array_api_strict" if is_host_array(leaf) else None


def saveable(leaf: Any, where: str) -> tuple[str, str, tuple[int, ...]]:
    """(framework, safetensors code, shape) of a leaf that ``save`` can write.

    Raises:
        TypeError: not an array of a known framework, or a dtype the format has no code for.
        ValueError: a torch DTensor, meta tensor or tensor whose storage was freed; a JAX
            array not fully addressable here.
    """
    framework = framework_of(leaf)
    if framework is None:
        raise TypeError(
            f"{where} is a {type(leaf).__name__}; save writes numpy, torch, JAX, CuPy and "
            "array-api-strict arrays"
        )
    if framework == "torch":
        _check_torch(leaf, where)
    if framework == "jax" and not leaf.is_fully_addressable:
        raise ValueError(
            f"{where} is a JAX array sharded over several processes (not fully addressable); "
            "save the state with orbax, or gather it on purpose first "
            "(jax.experimental.multihost_utils.process_allgather) and save that"
        )
    name = dtype_name(leaf.dtype)
    code = _safetensors.code_of(name)
    if code is None:
        raise TypeError(
            f"{where} has dtype {name}, which the safetensors format has no code for (it holds "
            "bool, (u)int8-64, float16, bfloat16, float32, float64, complex64 and float8)"
        )
    return framework, code, tuple(int(n) for n in leaf.shape)


def _check_torch(tensor: Any, where: str) -> None:
    dist = sys.modules.get("torch.distributed.tensor")
    if dist is not None and isinstance(tensor, dist.DTensor):
        raise ValueError(f"{where} is a DTensor (sharded, FSDP2): {_DIST}")
    if tensor.is_meta or tensor.layout != sys.modules["torch"].strided:
        raise ValueError(
            f"{where} must be a dense tensor with data, got {tensor.layout} on {tensor.device}"
        )
    # (loaded with the tensor's framework: torch is imported, since the tensor exists)
    short_memory = importlib.import_module("ema_core.backends.torch._memory").short_memory
    if (why := short_memory(tensor)) is not None:
        raise ValueError(f"{where}: {why}")


def check_scalar(where: str, code: str, data: np.ndarray) -> float | int:
    """The value of a step (``where`` ends in ``step``: an integer in [0, 2**63 - 1]) or a
    bias-correction weight (a float in [0, 1]) held as ``code`` bytes in ``data``.

    Raises:
        TypeError: a step of no integer dtype, a weight of no floating one.
        ValueError: a value out of range (a NaN weight too).
    """
    step = where.endswith("step")
    kind, codes = ("an integer", INTEGER) if step else ("a floating", FLOAT)
    if code not in codes:
        raise TypeError(f"{where} must have {kind} dtype, got {_safetensors.name_of(code)}")
    values = data.reshape(-1).view(np.uint8).view(_safetensors.CODES[code][1])
    if code == "BF16":
        values = _safetensors.bf16_to_float32(values)
    value = values.item()
    if step and not 0 <= value <= MAX_STEP:
        raise ValueError(f"{where} must be in [0, 2**63 - 1], got {value}")
    if not step and not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"{where} must be in [0, 1] (the bias-correction weight), got {value}")
    return value  # type: ignore[no-any-return]


def host_bytes(leaf: Any, framework: str) -> np.ndarray:
    """A C-contiguous numpy array (a copy or a view) holding the leaf's little-endian bytes."""
    if framework == "torch":
        return torch_bytes(leaf.to("cpu")).numpy()  # type: ignore[no-any-return]
    if framework == "jax":
        host = np.asarray(sys.modules["jax"].device_get(leaf))
    elif framework == "cupy":
        host = leaf.get()
    elif framework == "numpy":
        host = np.asarray(leaf)
    else:
        host = np.from_dlpack(leaf)
    if host.dtype.byteorder == ">":
        host = host.astype(host.dtype.newbyteorder("<"))
    return np.ascontiguousarray(host)


def torch_bytes(tensor: Any) -> Any:
    """A torch tensor's values as a flat uint8 tensor on its device (a view where one exists;
    conjugate and negative views resolved)."""
    torch = sys.modules["torch"]
    flat = tensor.detach().resolve_conj().resolve_neg().contiguous().reshape(-1)
    if flat.numel() == 1 and flat.stride(0) != 1:  # contiguous by torch's rule, not viewable
        flat = flat.clone(memory_format=torch.contiguous_format)
    return flat.view(torch.uint8)


def like_array(data: np.ndarray, like: Any) -> Any:
    """``data`` (the file's bytes in their numpy byte dtype, shaped; bfloat16 as uint16) as an
    array of ``like``'s framework, dtype and device, sharded as ``like`` where JAX shards it.
    The dtypes are known to match (same name) and their sizes to agree."""
    if compat.is_torch_array(like):
        torch = sys.modules["torch"]
        flat = torch.from_numpy(data.reshape(-1).view(np.uint8))
        return flat.view(like.dtype).reshape(data.shape).to(like.device)
    if compat.is_jax_array(like):
        return _jax_like(data.view(np.dtype(like.dtype)), like)
    if isinstance(like, (np.ndarray, np.generic)):
        native = data.view(like.dtype.newbyteorder("<"))
        return native if like.dtype == native.dtype else native.astype(like.dtype)
    host = data.view(np.dtype(dtype_name(like.dtype)))
    if compat.is_cupy_array(like):
        with like.device:
            return sys.modules["cupy"].asarray(host)
    xp = compat.array_namespace(like)
    return xp.asarray(host, device=compat.device(like))


def _jax_like(host: np.ndarray, like: Any) -> Any:
    """``host`` placed as ``like``: with its sharding where ``like`` is committed, else
    uncommitted (a committed one would make a jitted update given uncommitted params compile
    again, or refuse params committed elsewhere)."""
    jax = sys.modules["jax"]
    if getattr(like, "committed", True):
        return jax.device_put(host, like.sharding)
    return jax.numpy.asarray(host)


def scalar_array(value: int | float, like: Any) -> Any:
    """``value`` as a 0-d array of ``like``'s framework, dtype and device (bfloat16 too: made
    by the framework from the number, not by numpy)."""
    if compat.is_torch_array(like):
        return sys.modules["torch"].tensor(value, dtype=like.dtype, device=like.device)
    if compat.is_jax_array(like):  # (JAX's bfloat16 is a numpy dtype: ml_dtypes)
        return _jax_like(np.asarray(value, dtype=like.dtype), like)
    if isinstance(like, (np.ndarray, np.generic)):
        return np.asarray(value, dtype=like.dtype)
    if compat.is_cupy_array(like):
        with like.device:
            return sys.modules["cupy"].asarray(value, dtype=like.dtype)
    xp = compat.array_namespace(like)
    return xp.asarray(value, dtype=like.dtype, device=compat.device(like))


def torch_tensor(data: np.ndarray, code: str) -> Any:
    """A CPU torch tensor of the file's own dtype from its bytes (for ``EMA.load_state_dict``,
    which then checks that dtype against the shadow's)."""
    torch = sys.modules["torch"]
    dtype = getattr(torch, _safetensors.name_of(code))
    return torch.from_numpy(data.reshape(-1).view(np.uint8)).view(dtype).reshape(data.shape)
