"""Loading into a torch ``EMA``: the file as an ``EMA.state_dict``, checked by the EMA's own
``ema_core.torch._state.check`` (names, shapes, dtypes, config, strict, step, weight).

``load_into`` reads the shadows and hands them to ``EMA.load_state_dict`` (every check there,
then the writes). ``check_into`` runs the same checks and writes nothing: the shadows are
stand-ins of the file's shape and dtype (one element, viewed with stride 0), so no shadow
byte is read or held and checking several files before loading any costs their headers.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ema_core import _safetensors
from ema_core._config_text import config_text
from ema_core.checkpoint._arrays import torch_tensor
from ema_core.checkpoint._save import TORCH_FORMAT

__all__ = ["check_into", "load_into"]

#: (reader, name in the file) -> the tensor given to the EMA's checks
_Tensor = Callable[[_safetensors.Reader, str], Any]


def load_into(
    reader: _safetensors.Reader,
    ours: dict[str, str],
    shadows: dict[str, str],
    ema: Any,
    strict: bool,
) -> Any:
    """Fill ``ema`` through its ``load_state_dict`` (every check there, before any write)."""
    state = _state_dict(reader, ours, shadows, ema, strict, _read)
    with _named(reader.path):
        ema.load_state_dict(state, strict=strict)
    return ema


def check_into(
    reader: _safetensors.Reader,
    ours: dict[str, str],
    shadows: dict[str, str],
    ema: Any,
    strict: bool,
) -> None:
    """What ``load_into`` checks, in its order and with its errors; nothing written (the EMA
    follows its model's replaced tensors, as ``load_state_dict`` and ``update`` do)."""
    state = _state_dict(reader, ours, shadows, ema, strict, _stand_in)
    with _named(reader.path):
        ema._checked_state(state, strict)


def _state_dict(
    reader: _safetensors.Reader,
    ours: dict[str, str],
    shadows: dict[str, str],
    ema: Any,
    strict: bool,
    tensor: _Tensor,
) -> dict[str, Any]:
    """The file as ``ema.state_dict()`` would hold it, shadows made by ``tensor``."""
    text = ours.get("config")
    if text is None and strict:
        raise ValueError(
            f"{reader.path} was saved without a config (an EMAState saved with config=None); "
            f"this EMA has {config_text(ema.config)!r}: pass strict=False to load it anyway"
        )
    renames = sys.modules["ema_core.torch._copies"].legacy_renames  # loaded with the EMA class
    wanted = set(ema.names) | set(renames(ema, list(shadows.values())))  # names of before too
    return {
        "format": TORCH_FORMAT,
        "version": sys.modules["ema_core.torch._state"].VERSION,
        "config": config_text(ema.config) if text is None else text,
        "step": _step(reader, ours),
        "weight": _read(reader, "weight"),
        # a name this EMA lacks is only counted (a strict load refuses it before reading any
        # tensor, a loose one skips it): no need to read its bytes
        "shadow": {
            key: tensor(reader, name) if key in wanted else None for name, key in shadows.items()
        },
    }


def _step(reader: _safetensors.Reader, ours: dict[str, str]) -> Any:
    """The file's step as the EMA's counter: an ``EMAState``'s integer step (int32 from JAX
    without x64) as int64, which the EMA loads as a Python int (the step takes ``like``'s
    type); an EMA's own file keeps its counter's dtype (a uint8 or int32 tensor counter).
    A bool or float step is left for the EMA's checks to refuse."""
    step = _read(reader, "step")
    torch = sys.modules["torch"]
    narrow = step.dtype.itemsize < 8 and step.dtype != torch.bool  # (uint64: read as an int)
    if ours.get("source") == "EMA" or not narrow or step.dtype.is_floating_point:
        return step
    return step.to(torch.int64)


def _read(reader: _safetensors.Reader, name: str) -> Any:
    return torch_tensor(reader.read(name), reader.entries[name].code)


def _stand_in(reader: _safetensors.Reader, name: str) -> Any:
    """A tensor of ``name``'s shape and dtype holding one element (stride 0), read from no file."""
    torch, entry = sys.modules["torch"], reader.entries[name]
    dtype = getattr(torch, _safetensors.name_of(entry.code))
    return torch.zeros((), dtype=dtype, device="cpu").expand(entry.shape)


@contextlib.contextmanager
def _named(path: str) -> Iterator[None]:
    """The EMA's ``TypeError`` / ``ValueError`` as the same type, naming the file."""
    try:
        yield
    except TypeError as err:
        raise TypeError(f"{path}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
