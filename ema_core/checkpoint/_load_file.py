"""What every ``load`` and ``check`` reads first: the file's step, weight and shadow names."""

from __future__ import annotations

from typing import Any

from ema_core import _safetensors
from ema_core.checkpoint import _format
from ema_core.checkpoint._arrays import FLOAT, INTEGER, MAX_STEP

__all__ = ["scalar", "shadow_names"]


def shadow_names(reader: _safetensors.Reader, flat: bool = True) -> dict[str, str]:
    """File name -> shadow name (the nest's name, ``""`` for a single-array shadow), after
    checking that ``step`` and ``weight`` are there and valid and nothing else is. ``flat``:
    for a torch ``EMA`` (``_format.shadow_keys``)."""
    scalar(reader, "step", INTEGER)
    scalar(reader, "weight", FLOAT)
    names = [name for name in reader.entries if name not in ("step", "weight")]
    return _format.shadow_keys(reader.path, names, flat)


def scalar(reader: _safetensors.Reader, name: str, codes: tuple[str, ...]) -> Any:
    """The value of the 0-d tensor ``name`` (a step >= 0, a weight in [0, 1])."""
    entry = reader.entries.get(name)
    if entry is None or entry.shape != () or entry.code not in codes:
        got = "none" if entry is None else f"shape {list(entry.shape)} dtype {entry.code}"
        raise ValueError(
            f"{reader.path}: {name!r} must be a 0-d {'/'.join(codes)} tensor, got {got}"
        )
    data = reader.read(name)
    value = float(_safetensors.bf16_to_float32(data)) if entry.code == "BF16" else data.item()
    if name == "step" and value < 0:
        raise ValueError(f"{reader.path}: 'step' must be >= 0, got {value}")
    if name == "step" and value > MAX_STEP:
        raise ValueError(f"{reader.path}: 'step' must be <= 2**63 - 1 (int64), got {value}")
    if name == "weight" and not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(
            f"{reader.path}: 'weight' (bias correction) must be in [0, 1], got {value}"
        )
    return value
