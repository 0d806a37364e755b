"""Shared by the tests of refused inputs: a shadow's bits, and "this call raises and writes
nothing"."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.conftest import Backend, to_numpy


def pair(backend: Backend) -> tuple[dict[str, Any], dict[str, Any]]:
    """A small shadow and params: a float32 and a float64 leaf."""
    shadow = {"a": backend.asarray(np.zeros(3, np.float32)), "b": backend.asarray(np.zeros(2))}
    params = {"a": backend.asarray(np.ones(3, np.float32)), "b": backend.asarray(np.ones(2))}
    return shadow, params


def bits(nest: Any) -> list[tuple[str, bytes]]:
    """Every leaf of a flat dict as (dtype, bytes); sparse tensors densified."""
    dense = [v.to_dense() if getattr(v, "is_sparse", False) else v for v in nest.values()]
    return [(str(v.dtype), to_numpy(v).tobytes()) for v in dense]


def refused(error: type, match: str, shadow: Any, call: Any) -> None:
    """``call()`` raises ``error`` matching ``match`` and leaves ``shadow`` bit-identical."""
    before = bits(shadow)
    with pytest.raises(error, match=match):
        call()
    assert bits(shadow) == before
