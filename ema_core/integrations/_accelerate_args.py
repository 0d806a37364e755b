"""The arguments of ``ema_core.integrations.accelerate.register`` checked: the accelerator has
accelerate's two pre-hook methods, the EMA is a torch ``EMA``, the name is a file stem that is
not accelerate's own and is free on this accelerator (one registration per name and per EMA).
"""

from __future__ import annotations

import re
from typing import Any

from ema_core.torch._module import EMA

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: accelerate's own model.safetensors, model_1.safetensors (one file in any case on macOS)
_TAKEN = re.compile(r"model(_\d+)?", re.IGNORECASE)
#: the longest name whose ``<name>.safetensors`` fits in 255 bytes (a name is ASCII)
MAX_NAME = 255 - len(".safetensors")


def check(accelerator: Any, ema: Any, name: Any) -> None:
    for method in ("register_save_state_pre_hook", "register_load_state_pre_hook"):
        if not callable(getattr(accelerator, method, None)):
            raise TypeError(
                f"accelerator must be an accelerate.Accelerator (with {method}), got "
                f"{type(accelerator).__name__}"
            )
    if not isinstance(ema, EMA):
        raise TypeError(f"ema must be an ema_core.torch.EMA, got {type(ema).__name__}")
    check_name(name)


def check_free(names: dict[str, Any], name: str, ema: EMA) -> None:
    """Refuse a name (in any letter case: one file on macOS and Windows) held on this
    accelerator, by another EMA or by this one already (its first hooks would stay installed
    once the second ones are removed, and the name free for another EMA's file)."""
    twice = [
        held for held, ref in names.values() if ref() is ema and held.casefold() != name.casefold()
    ]
    if twice:
        raise ValueError(
            f"this EMA is already registered on this accelerator as {twice[0]!r}: one "
            f"registration saves and loads it (name={name!r} would write a second file of it); "
            "register another EMA under this name, or remove() the first hooks"
        )
    held = names.get(name.casefold())
    if held is None or held[1]() is None:
        return
    whose = "this EMA" if held[1]() is ema else "another EMA"
    raise ValueError(
        f"name {name!r} is already registered on this accelerator for {whose} as {held[0]!r} "
        "(names differing only in letter case name one file on macOS and Windows; two "
        "registrations would write and read one file): pass another name=, such as "
        "name='ema_2', or remove() the first registration's hooks"
    )


def check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not _NAME.fullmatch(name) or _TAKEN.fullmatch(name):
        raise ValueError(
            f"name must be a file stem of letters, digits, '_', '.' and '-' (not starting with "
            f"'.', '_' or '-', and not accelerate's 'model' or 'model_<i>'), got {name!r}"
        )
    if len(name) > MAX_NAME:
        raise ValueError(
            f"name must be at most {MAX_NAME} characters (its file {name[:20]}....safetensors "
            f"must fit a file system's 255 bytes), got one of {len(name)}"
        )
