"""Counting XLA compilations in a block, for the tests that promise a jitted step compiles once
and never again (``jax.monitoring``'s compile-duration event; JAX is imported in the call)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def counting_compiles() -> Iterator[list[str]]:
    """A list that grows by one per XLA compilation while the block runs."""
    import jax

    seen: list[str] = []

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event == COMPILE_EVENT:
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
