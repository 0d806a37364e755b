"""Issue 13 (2.2, 2.6, 2.10, 2.12, 2.13): the public functions check host values and leaves that
used to slip through, before anything is written, and after every error each shadow is
bit-identical to before."""

from __future__ import annotations

import collections
import types
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ema_core as ema
from ema_core._ops import is_readable
from tests.conftest import Backend, Name, to_numpy

torch = pytest.importorskip("torch")
jnp = pytest.importorskip("jax.numpy")
aas = pytest.importorskip("array_api_strict")


def _pair(backend: Backend) -> tuple[dict[str, Any], dict[str, Any]]:
    shadow = {"a": backend.asarray(np.zeros(3, np.float32)), "b": backend.asarray(np.zeros(2))}
    params = {"a": backend.asarray(np.ones(3, np.float32)), "b": backend.asarray(np.ones(2))}
    return shadow, params


def _bits(nest: Any) -> list[tuple[str, bytes]]:
    dense = [v.to_dense() if getattr(v, "is_sparse", False) else v for v in nest.values()]
    return [(str(v.dtype), to_numpy(v).tobytes()) for v in dense]


def _refused(error: type, match: str, shadow: Any, call: Any) -> None:
    before = _bits(shadow)
    with pytest.raises(error, match=match):
        call()
    assert _bits(shadow) == before


# 2.2: host decays and steps of every framework are range-checked; device / traced ones not
HOST_ARRAYS = {
    Name.TORCH: torch.tensor,  # on the CPU
    Name.JAX: jnp.asarray,  # concrete, on the CPU
    Name.NUMPY: np.asarray,
    Name.STRICT: aas.asarray,
}


@pytest.mark.parametrize("value", [1.5, -0.25, float("nan")])
@pytest.mark.parametrize("name", list(HOST_ARRAYS), ids=lambda n: n.value)
def test_host_decay_arrays_are_range_checked(name: Name, value: float) -> None:
    shadow, params = _pair(_backend(name))
    decay = HOST_ARRAYS[name](value)
    _refused(ValueError, r"decay must be in \[0.0, 1.0\]", shadow,
             lambda: ema.ema_update(shadow, params, 1, decay=decay))  # fmt: skip


@pytest.mark.parametrize("name", list(HOST_ARRAYS), ids=lambda n: n.value)
def test_host_step_arrays_are_range_checked(name: Name) -> None:
    shadow, params = _pair(_backend(name))
    step = HOST_ARRAYS[name](-3)
    _refused(ValueError, "step must be >= 0, got -3", shadow,
             lambda: ema.ema_update(shadow, params, step, decay=0.5))  # fmt: skip
    state = ema.init(params)._replace(step=step)
    with pytest.raises(ValueError, match=r"state\.step must be >= 0, got -3"):
        ema.update(state, params)


def test_readable_means_on_the_host_and_not_traced() -> None:
    import jax

    assert is_readable(np.float32(1)) and is_readable(aas.asarray(1.0))
    assert is_readable(torch.tensor(1.0)) and is_readable(jnp.asarray(1.0))
    assert not is_readable(torch.tensor(1.0, device="meta")) and not is_readable(1.0)
    seen = []
    jax.jit(lambda d: seen.append(is_readable(d)) or d)(jnp.asarray(1.5))
    assert seen == [False]


def test_traced_decay_and_step_are_trusted() -> None:
    import jax

    shadow, params = _pair(_backend(Name.JAX))
    run = jax.jit(lambda s, p, t, d: ema.ema_update(s, p, t, decay=d))
    out = run(shadow, params, jnp.asarray(2), jnp.asarray(0.75))
    assert np.allclose(np.asarray(out["a"]), 0.25)


# 2.6: leaves that used to fail half-way are refused up front, or get a new array
def test_sparse_tensors_are_refused_before_any_write() -> None:
    shadow, params = _pair(_backend(Name.TORCH))
    shadow["z"], params["z"] = torch.zeros(3).to_sparse(), torch.ones(3)
    _refused(TypeError, r"shadow\['z'\] is a torch.sparse_coo tensor", shadow,
             lambda: ema.ema_update(shadow, params, 1, decay=0.5))  # fmt: skip
    shadow["z"], params["z"] = torch.zeros(3), torch.ones(3).to_sparse()
    _refused(TypeError, r"params\['z'\] is a torch.sparse_coo tensor", shadow,
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
    shadow, params = _pair(_backend(backend))
    shadow["z"], params["z"] = _unwriteable(kind), _backend(backend).asarray(np.ones(3))
    _refused(ValueError, r"copy=False .* shadow\['z'\] cannot be written", shadow,
             lambda: ema.ema_update(shadow, params, 1, decay=0.5, copy=False))  # fmt: skip
    before = _bits(shadow)
    out = ema.ema_update(shadow, params, 1, decay=0.5)
    assert out["a"] is shadow["a"] and out["z"] is not shadow["z"]
    assert _bits(shadow)[2] == before[2] and to_numpy(out["z"]).tolist() == [0.5] * 3


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
    shadow, params = _pair(backend)
    shadow = MAPPINGS[kind](shadow)
    out = ema.ema_update(shadow, params, 1, decay=0.5)
    assert type(out) is type(shadow) and list(out) == ["a", "b"]
    assert all(to_numpy(v).tolist() == [0.5] * v.shape[0] for v in out.values())
    if kind == "defaultdict":
        assert out.default_factory is list
    state = ema.update(ema.init(params), MAPPINGS[kind](params))
    assert type(ema.init(shadow).shadow) is type(shadow) and list(state.shadow) == ["a", "b"]


def test_mapping_that_cannot_be_rebuilt_is_refused_before_any_write() -> None:
    shadow, params = _pair(_backend(Name.NUMPY))
    shadow = {"a": shadow["a"], "m": _Frozen(data={"b": shadow["b"]})}
    params = {"a": params["a"], "m": {"b": params["b"]}}
    before = [shadow["a"].tobytes(), shadow["m"]["b"].tobytes()]
    with pytest.raises(TypeError, match=r"shadow\['m'\] is a _Frozen, which cannot be built"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert [shadow["a"].tobytes(), shadow["m"]["b"].tobytes()] == before
    ema.ema_update(params, shadow, 1, decay=0.5)  # as params it is only read


# 2.10: numpy decays are host floats; a 0-d decay of another namespace is a TypeError
@pytest.mark.parametrize("decay", [np.float64(0.25), np.float32(0.25), np.asarray(0.25)])
def test_numpy_decay_works_with_every_namespace(backend: Backend, decay: Any) -> None:
    shadow, params = _pair(backend)
    want, _ = _pair(backend)
    want = ema.ema_update(want, params, 1, decay=0.25, copy=True)
    got = ema.ema_update(shadow, params, 1, decay=decay, copy=True)
    assert _bits(got) == _bits(want)


@pytest.mark.parametrize(
    ("leaves", "decay"),
    [
        (Name.NUMPY, torch.tensor(0.5)),
        (Name.NUMPY, aas.asarray(0.5)),
        (Name.TORCH, jnp.asarray(0.5)),
        (Name.STRICT, torch.tensor(0.5)),
    ],
    ids=["torch-in-numpy", "strict-in-numpy", "jax-in-torch", "torch-in-strict"],
)
def test_decay_of_another_namespace_is_a_type_error(leaves: Name, decay: Any) -> None:
    shadow, params = _pair(_backend(leaves))
    _refused(TypeError, "decay is a 0-d .* but the leaves are", shadow,
             lambda: ema.ema_update(shadow, params, 1, decay=decay))  # fmt: skip


# 2.12: a device without float64 keeps the weight and the decays in float32
def test_device_without_float64() -> None:
    dev = aas.Device("no_float64")
    params = {"w": aas.asarray([1.0, 3.0], dtype=aas.float32, device=dev)}
    cfg = ema.Config(schedule=ema.schedules.constant(0.5), init="zeros")
    state = ema.init(params, cfg)
    assert state.weight.dtype == aas.float32 and state.weight.device == dev
    for _ in range(3):
        state = ema.update(state, params, cfg)
    assert float(state.weight) == 0.875 and int(state.step) == 3
    assert np.asarray(ema.average(state, cfg)["w"]._array).tolist() == [1.0, 3.0]
    zeros = {"w": aas.zeros(2, dtype=aas.float32, device=dev)}
    step = aas.asarray(4, device=dev)  # an array step: its decay is computed on the device
    out = ema.ema_update(params, zeros, step, schedule=ema.schedules.power_function(7.0),
                         copy=True)  # fmt: skip
    decay = (1.0 - 1.0 / 4) ** 8
    np.testing.assert_allclose(np.asarray(out["w"]._array), [decay, 3 * decay], rtol=1e-6)


# 2.13: steps beyond int64, non-numeric leaves, aliased shadows, copies, int32 saturation
def test_huge_python_step_is_a_value_error() -> None:
    shadow, params = _pair(_backend(Name.NUMPY))
    ema.ema_update(shadow, params, 2**63 - 1, decay=0.5, copy=True)
    for step in (2**63, 10**400):
        _refused(ValueError, r"step must be <= 2\*\*63 - 1", shadow,
                 lambda step=step: ema.ema_update(shadow, params, step, decay=0.5))  # fmt: skip


@pytest.mark.parametrize("dtype", [object, "U2", "datetime64[s]", "timedelta64[s]", ">f4", ">i4"])
def test_non_numeric_or_big_endian_numpy_leaves_are_refused(dtype: Any) -> None:
    shadow, params = _pair(_backend(Name.NUMPY))
    shadow["z"], params["z"] = np.zeros(2).astype(dtype), np.ones(2).astype(dtype)
    _refused(TypeError, r"shadow\['z'\] has dtype", shadow,
             lambda: ema.ema_update(shadow, params, 1, decay=0.5))  # fmt: skip
    params["z"], shadow["z"] = np.ones(2, np.float32).astype(dtype), np.zeros(2, np.float32)
    _refused(TypeError, r"params\['z'\] has dtype", shadow,
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
        _refused(ValueError, rf"shadow\[{match}.* share memory", shadow,
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
    shadow, params = _pair(backend)
    shadow["n"], params["n"] = backend.asarray(np.arange(2)), backend.asarray(np.arange(2) + 5)
    before = _bits(shadow)
    for kwargs in ({"decay": 1.0}, {"config": ema.Config(schedule=0.5, non_float="freeze")}):
        out = ema.ema_update(shadow, params, 1, copy=True, **kwargs)
        assert all(out[k] is not shadow[k] for k in shadow)
        assert _bits(shadow) == before and _bits(out)[-1] == before[-1]


@pytest.mark.parametrize("dtype", ["int32", "uint8"])
def test_array_step_saturates_at_its_dtype_max(backend: Backend, dtype: str) -> None:
    top = int(np.iinfo(dtype).max)
    params = {"w": backend.asarray(np.ones(2))}
    cfg = ema.Config(schedule=ema.schedules.power_function(7.0), init="zeros")
    state = ema.init(params, cfg)
    step = backend.asarray(np.asarray(top, dtype))
    state = ema.update(state._replace(step=step), params, cfg)
    assert int(state.step) == top and state.step.dtype == step.dtype
    rate = 1.0 - (1.0 - 1.0 / top) ** 8  # d_t = (1 - 1/t) ** (gamma + 1) at t = top
    np.testing.assert_allclose(to_numpy(state.shadow["w"]), rate, rtol=1e-3)
    if backend.name is Name.JAX:  # traced: the same saturation, without reading the step
        import jax

        again = jax.jit(ema.update, static_argnums=2)(state, params, cfg)
        assert int(again.step) == top and np.all(np.isfinite(np.asarray(again.shadow["w"])))


def _backend(name: Name) -> Backend:
    from tests.conftest import _load

    return _load(name)


FOREIGN = {Name.NUMPY: torch.tensor, Name.TORCH: aas.asarray, Name.STRICT: jnp.asarray,
           Name.JAX: torch.tensor}  # fmt: skip
BAD = {  # kind -> (error, what the message names)
    "decay out of range": (ValueError, "decay"),
    "decay of another namespace": (TypeError, "decay"),
    "negative array step": (ValueError, "step"),
    "step beyond int64": (ValueError, "step"),
    "one array twice": (ValueError, "share memory"),
}


@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from([Name.NUMPY, Name.STRICT, Name.TORCH, Name.JAX]),
    kind=st.sampled_from(list(BAD)),
    size=st.integers(2, 5),
    data=st.data(),
)
def test_property_bad_inputs_raise_and_change_nothing(
    name: Name, kind: str, size: int, data: st.DataObject
) -> None:
    backend = _backend(name)
    shadow = {f"k{i}": backend.asarray(np.full(2, float(i))) for i in range(size)}
    params = {k: backend.asarray(np.full(2, 9.0)) for k in shadow}
    step: Any = 1
    decay: Any = 0.5
    if kind == "decay out of range":
        # outside [0, 1] even in float32 (JAX runs without x64)
        value = data.draw(st.one_of(st.floats(1.001, 1e9), st.just(np.nan), st.floats(-1e9, -1e-3)))
        decay = backend.asarray(np.asarray(value))
    elif kind == "decay of another namespace":
        decay = FOREIGN[name](np.asarray(0.5))
    elif kind == "negative array step":
        step = backend.asarray(np.asarray(data.draw(st.integers(-(2**31), -1))))
    elif kind == "step beyond int64":
        step = data.draw(st.integers(2**63, 2**70))
    elif name is not Name.JAX:  # one array twice (JAX arrays are never written in place)
        i, j = sorted(data.draw(st.lists(st.integers(0, size - 1), min_size=2, max_size=2,
                                         unique=True)))  # fmt: skip
        shadow[f"k{j}"] = shadow[f"k{i}"]
    else:
        return
    error, match = BAD[kind]
    _refused(error, match, shadow, lambda: ema.ema_update(shadow, params, step, decay=decay))
    if kind in ("negative array step", "step beyond int64"):
        state = ema.init(params)._replace(step=step, shadow=shadow)
        _refused(error, match, shadow, lambda: ema.update(state, params))
