"""Shadows the update cannot write in place are refused before any write or get new arrays:
sparse, inference and broadcast tensors, mappings rebuilt as their own type, non-numeric and
big-endian leaves, one array twice (shared memory), and copy=True at a skipped step."""

from __future__ import annotations

import collections
import types
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from tests.conftest import Backend, Name, _load, to_numpy
from tests.refusals import bits, pair, refused

torch = pytest.importorskip("torch")
jnp = pytest.importorskip("jax.numpy")
aas = pytest.importorskip("array_api_strict")


# 2.6: leaves that used to fail half-way are refused up front, or get a new array
def test_sparse_tensors_are_refused_before_any_write() -> None:
    shadow, params = pair(_load(Name.TORCH))
    shadow["z"], params["z"] = torch.zeros(3).to_sparse(), torch.ones(3)
    refused(TypeError, r"shadow\['z'\] is a torch.sparse_coo tensor", shadow,
             lambda: ema.ema_update(shadow, params, 1, decay=0.5))  # fmt: skip
    shadow["z"], params["z"] = torch.zeros(3), torch.ones(3).to_sparse()
    refused(TypeError, r"params\['z'\] is a torch.sparse_coo tensor", shadow,
             lambda: ema.ema_update(shadow, params, 1, decay=0.5))  # fmt: skip


def _unwriteable(kind: str) -> Any:
    if kind == "inference":
        with torch.inference_mode():
            return torch.zeros(3)
    if kind == "expanded":
        return torch.zeros(1).expand(3)
    if kind == "numpy stride 0":
        return np.lib.stride_tricks.as_strided(np.zeros(1), (3,), (0,), writeable=True)
    return aas.broadcast_to(aas.zeros(1), (3,))  # read-only inside, writeable to compat


@pytest.mark.parametrize("kind", ["inference", "expanded", "numpy stride 0", "strict broadcast"])
def test_unwriteable_shadows_get_new_arrays(kind: str) -> None:
    backend = {"numpy stride 0": Name.NUMPY, "strict broadcast": Name.STRICT}.get(kind, Name.TORCH)
    shadow, params = pair(_load(backend))
    shadow["z"], params["z"] = _unwriteable(kind), _load(backend).asarray(np.ones(3))
    refused(ValueError, r"copy=False .* shadow\['z'\] cannot be written", shadow,
             lambda: ema.ema_update(shadow, params, 1, decay=0.5, copy=False))  # fmt: skip
    before = bits(shadow)
    out = ema.ema_update(shadow, params, 1, decay=0.5)
    assert out["a"] is shadow["a"] and out["z"] is not shadow["z"]
    assert bits(shadow)[2] == before[2] and to_numpy(out["z"]).tolist() == [0.5] * 3


def test_inference_shadow_is_written_inside_inference_mode() -> None:
    with torch.inference_mode():
        shadow = {"z": torch.zeros(3)}
        out = ema.ema_update(shadow, {"z": torch.ones(3)}, 1, decay=0.5, copy=False)
    assert out["z"] is shadow["z"] and shadow["z"].tolist() == [0.5] * 3


class _Frozen(collections.abc.Mapping):  # type: ignore[type-arg]
    """A Mapping with no way to build it from a dict."""

    def __init__(self, *, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Any:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


MAPPINGS = {
    "defaultdict": lambda d: collections.defaultdict(list, d),
    "Counter": collections.Counter,
    "OrderedDict": collections.OrderedDict,
    "MappingProxyType": types.MappingProxyType,
    "ChainMap": collections.ChainMap,
}


@pytest.mark.parametrize("kind", list(MAPPINGS))
def test_mapping_shadows_are_rebuilt_as_their_type(backend: Backend, kind: str) -> None:
    shadow, params = pair(backend)
    shadow = MAPPINGS[kind](shadow)
    out = ema.ema_update(shadow, params, 1, decay=0.5)
    assert type(out) is type(shadow) and list(out) == ["a", "b"]
    assert all(to_numpy(v).tolist() == [0.5] * v.shape[0] for v in out.values())
    if kind == "defaultdict":
        assert out.default_factory is list
    state = ema.update(ema.init(params), MAPPINGS[kind](params))
    assert type(ema.init(shadow).shadow) is type(shadow) and list(state.shadow) == ["a", "b"]


def test_mapping_that_cannot_be_rebuilt_is_refused_before_any_write() -> None:
    shadow, params = pair(_load(Name.NUMPY))
    shadow = {"a": shadow["a"], "m": _Frozen(data={"b": shadow["b"]})}
    params = {"a": params["a"], "m": {"b": params["b"]}}
    before = [shadow["a"].tobytes(), shadow["m"]["b"].tobytes()]
    with pytest.raises(TypeError, match=r"shadow\['m'\] is a _Frozen, which cannot be built"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert [shadow["a"].tobytes(), shadow["m"]["b"].tobytes()] == before
    ema.ema_update(params, shadow, 1, decay=0.5)  # as params it is only read


@pytest.mark.parametrize("dtype", [object, "U2", "datetime64[s]", "timedelta64[s]", ">f4", ">i4"])
def test_non_numeric_or_big_endian_numpy_leaves_are_refused(dtype: Any) -> None:
    shadow, params = pair(_load(Name.NUMPY))
    shadow["z"], params["z"] = np.zeros(2).astype(dtype), np.ones(2).astype(dtype)
    refused(TypeError, r"shadow\['z'\] has dtype", shadow,
             lambda: ema.ema_update(shadow, params, 1, decay=0.5))  # fmt: skip
    params["z"], shadow["z"] = np.ones(2, np.float32).astype(dtype), np.zeros(2, np.float32)
    refused(TypeError, r"params\['z'\] has dtype", shadow,
             lambda: ema.ema_update(shadow, params, 1, decay=0.5))  # fmt: skip
    with pytest.raises(TypeError, match=r"params\['z'\] has dtype"):
        ema.init(params)


def _aliased(backend: Backend) -> list[tuple[dict[str, Any], str]]:
    x = backend.asarray(np.zeros(6))
    cases = [({"a": x, "b": backend.asarray(np.zeros(6)), "c": x}, "'a'.*'c'")]
    if backend.name in (Name.NUMPY, Name.TORCH):
        cases.append(({"a": x[:4], "b": backend.asarray(np.zeros(2)), "c": x[3:]}, "'a'.*'c'"))
    if backend.name is Name.TORCH:  # tied weights after state_dict(): two tensors, one storage
        cases.append(({"a": x.detach(), "b": x[:2].clone(), "c": x.detach()}, "'a'.*'c'"))
    return cases


def test_one_array_twice_in_the_shadow_is_refused(backend: Backend) -> None:
    if backend.name is Name.JAX:  # never written in place: one array twice is two new results
        x = backend.asarray(np.zeros(6))
        out = ema.ema_update({"a": x, "c": x}, {"a": x + 1, "c": x + 3}, 1, decay=0.5)
        assert np.all(to_numpy(out["a"]) == 0.5) and np.all(to_numpy(out["c"]) == 1.5)
        assert np.all(to_numpy(x) == 0.0)
        return
    for shadow, match in _aliased(backend):
        params = {k: backend.asarray(np.ones(tuple(v.shape))) for k, v in shadow.items()}
        refused(ValueError, rf"shadow\[{match}.* share memory", shadow,
                 lambda s=shadow, p=params: ema.ema_update(s, p, 1, decay=0.5))  # fmt: skip
        out = ema.ema_update(shadow, params, 1, decay=0.5, copy=True)  # no write: allowed
        assert all(np.all(to_numpy(v) == 0.5) for v in out.values())


def test_tensors_without_memory_do_not_overlap() -> None:
    meta = {k: torch.zeros(2, device="meta") for k in "ab"}
    out = ema.ema_update(meta, {k: torch.ones(2, device="meta") for k in "ab"}, 1, decay=0.5)
    assert out["a"] is meta["a"]
    empty = {k: torch.zeros(0) for k in "ab"}
    ema.ema_update(empty, {k: torch.zeros(0) for k in "ab"}, 1, decay=0.5, copy=False)


def test_interleaved_numpy_views_do_not_overlap() -> None:
    x = np.zeros(8)
    shadow = {"even": x[::2], "odd": x[1::2]}
    ema.ema_update(shadow, {"even": np.ones(4), "odd": np.full(4, 2.0)}, 1, decay=0.5)
    assert x.tolist() == [0.5, 1.0] * 4


def test_copy_true_at_a_skipped_step_returns_new_arrays(backend: Backend) -> None:
    shadow, params = pair(backend)
    shadow["n"], params["n"] = backend.asarray(np.arange(2)), backend.asarray(np.arange(2) + 5)
    before = bits(shadow)
    frozen = ema.Config(schedule=0.5, non_float="freeze")
    for kwargs, n in (({"decay": 1.0}, bits(params)[-1]), ({"config": frozen}, before[-1])):
        out = ema.ema_update(shadow, params, 1, copy=True, **kwargs)
        assert all(out[k] is not shadow[k] for k in shadow)
        assert bits(shadow) == before and bits(out)[-1] == n
