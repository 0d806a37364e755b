"""Nests: dict, list, tuple, NamedTuple, None and single arrays, rebuilt with their own types."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import pytest

import ema_core as ema
from ema_core._tree import flatten, unflatten
from ema_core._tree_pair import flatten_pair
from tests.conftest import Backend, to_numpy


class Pair(NamedTuple):
    weight: object
    bias: object


def test_flatten_unflatten_round_trip() -> None:
    tree = {"b": [1, (2, 3)], "a": Pair(4, None), "c": OrderedDict(z=5, y=6)}
    leaves, paths, treedef = flatten(tree)
    assert leaves == [1, 2, 3, 4, 5, 6]
    assert paths[3] == (("key", "a"), ("attr", "weight"))
    rebuilt = unflatten(treedef, leaves)
    assert rebuilt == tree and type(rebuilt["a"]) is Pair and type(rebuilt["c"]) is OrderedDict


def test_dicts_match_by_key_in_any_order() -> None:
    a, b, _, _ = flatten_pair({"x": 1, "y": 2}, {"y": 20, "x": 10}, "shadow", "params")
    assert (a, b) == ([1, 2], [10, 20])


def test_namedtuple_field_path_in_errors() -> None:
    with pytest.raises(TypeError, match=r"params\['m'\].bias: expected None"):
        flatten_pair({"m": Pair(1, None)}, {"m": Pair(1, 2)}, "shadow", "params")


def _nests(backend: Backend):
    a = lambda v: backend.asarray(np.asarray(v, dtype=np.float32))  # noqa: E731
    yield a([1.0, 2.0]), a([3.0, 4.0])
    yield [a(1.0), (a(2.0),)], [a(3.0), (a(4.0),)]
    yield Pair(a([1.0]), {"k": a(2.0)}), Pair(a([3.0]), {"k": a(4.0)})
    yield (a(1.0), None), (a(3.0), None)


def test_every_nest_kind_updates(backend: Backend) -> None:
    for shadow, params in _nests(backend):
        out = ema.ema_update(shadow, params, 1, decay=0.5, copy=True)
        assert type(out) is type(shadow)
        leaves, _, _ = flatten(out)
        p_leaves, _, _ = flatten(params)
        s_leaves, _, _ = flatten(shadow)
        for got, s, p in zip(leaves, s_leaves, p_leaves, strict=True):
            np.testing.assert_array_equal(to_numpy(got), (to_numpy(s) + to_numpy(p)) / 2)
        state = ema.update(ema.init(shadow), params)
        assert type(state.shadow) is type(shadow)
