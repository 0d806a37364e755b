"""``eager_under_torch_compile``: the public functions of ``_api`` as ``torch.compile`` leaves
them, run eagerly (a graph break) when a compiled function calls them, as the torch ``EMA``'s
``update`` runs (``ema_core.torch._eager``).

Traced, ``ema_update``'s host checks (array_api_compat's cached namespace lookups, the plan
cache's lock, the memory-overlap check of fake tensors, which have no memory) made dynamo warn
17 to 22 times per call (two probes), refused ``fullgraph=True``, and let shadows that share
memory through unchecked. torch is looked up in ``sys.modules``, never imported: outside a
torch program, and outside a compiled function, the plain function runs.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

__all__ = ["eager_under_torch_compile"]

_Function = TypeVar("_Function", bound=Callable[..., Any])


def eager_under_torch_compile(function: _Function) -> _Function:
    """``function``, run eagerly when ``torch.compile`` traces a call to it (``torch.compiler
    .disable`` is applied on the first such call: it imports dynamo).

    Example:
        >>> double = eager_under_torch_compile(lambda x: 2 * x)
        >>> double(21)
        42
    """
    disabled: list[_Function] = []

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        torch = sys.modules.get("torch")
        if torch is None or not torch.compiler.is_compiling():
            return function(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(function))
        return disabled[0](*args, **kwargs)

    return cast(_Function, run)
