"""``eager``: a function ``torch.compile`` runs eagerly (a graph break) when a compiled function
calls it: ``EMA.update``, ``EMABank.update`` and a swap's puts and restores."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

__all__ = ["eager"]

_Update = TypeVar("_Update", bound=Callable[..., Any])


def eager(update: _Update) -> _Update:
    """``update`` (``EMA.update``, and a swap's puts and restores) as ``torch.compile`` leaves
    it: run eagerly, a graph break, when a compiled function calls it. Traced, its checks of
    the module (data pointers, versions) would become guards of one trace, and dynamo warns
    about the caches it meets on the way.

    ``torch.compiler.disable`` imports dynamo (about a second), so it is applied on the first
    call made while compiling, not when ``ema_core.torch`` is imported; outside a compiled
    function the plain ``update`` runs."""
    disabled: list[_Update] = []

    @functools.wraps(update)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_compiling():
            return update(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(update))  # type: ignore[no-untyped-call]
        return disabled[0](*args, **kwargs)

    return cast(_Update, run)
