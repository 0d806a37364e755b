"""One backend fixture drives the suite: numpy, array-api-strict, torch and JAX (CPU).

Tests get a ``Backend`` that converts numpy arrays in and out, so each test is written once
against numpy inputs and a float64 reference. Missing frameworks are skipped with a reason.
"""

from __future__ import annotations

import enum
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

from ema_core import _settings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

#: The long peer-parity run (255 settings per peer):
#: `pytest --hypothesis-profile=parity-long tests/test_presets_peers_random.py`
settings.register_profile("parity-long", max_examples=255, deadline=None, print_blob=True)


class Name(str, enum.Enum):
    NUMPY = "numpy"
    STRICT = "array_api_strict"
    TORCH = "torch"
    JAX = "jax"


@dataclass(frozen=True)
class Backend:
    name: Name
    module: Any
    to_native: Callable[[np.ndarray], Any]
    has_bf16: bool
    has_f16: bool = True

    def asarray(self, x: Any, dtype: str | None = None) -> Any:
        arr = np.asarray(x)
        if dtype == "bfloat16":
            return self.cast(self.to_native(arr.astype(np.float32)), "bfloat16")
        return self.to_native(arr.astype(dtype) if dtype else arr)

    def cast(self, x: Any, dtype: str) -> Any:
        import array_api_compat as compat

        xp = compat.array_namespace(x)
        return xp.astype(x, getattr(xp, dtype))

    def tree(self, nest: Any, dtypes: dict[str, str] | None = None) -> Any:
        """Convert a dict of numpy arrays (optionally re-typed per key)."""
        dtypes = dtypes or {}
        return {k: self.asarray(v, dtypes.get(k)) for k, v in nest.items()}


def to_numpy(x: Any) -> np.ndarray:
    """Any framework's array as float64/int numpy (bfloat16 widened)."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        if x.dtype.is_floating_point and x.dtype.itemsize < 4:
            x = x.float()
        return x.detach().cpu().numpy()
    if mod.startswith("array_api_strict"):
        import array_api_strict as aas

        return np.asarray(aas.asarray(x, copy=True)._array)
    arr = np.asarray(x)
    if arr.dtype.kind == "V" or "bfloat16" in str(arr.dtype):
        arr = arr.astype(np.float32)
    return arr


def _make(name: Name) -> Backend:
    if name is Name.NUMPY:
        return Backend(name, np, lambda a: a.copy(), has_bf16=False)
    if name is Name.STRICT:
        aas = importlib.import_module("array_api_strict")
        return Backend(name, aas, lambda a: aas.asarray(a.copy()), has_bf16=False, has_f16=False)
    if name is Name.TORCH:
        torch = importlib.import_module("torch")
        return Backend(name, torch, lambda a: torch.from_numpy(a.copy()), has_bf16=True)
    jnp = importlib.import_module("jax.numpy")
    return Backend(name, jnp, jnp.asarray, has_bf16=True)


_MODULES = {
    Name.NUMPY: "numpy",
    Name.STRICT: "array_api_strict",
    Name.TORCH: "torch",
    Name.JAX: "jax",
}


def _load(name: Name) -> Backend:
    try:
        importlib.import_module(_MODULES[name])
    except ImportError as err:  # pragma: no cover - depends on the environment
        pytest.skip(f"{name.value} is not installed: {err}")
    return _make(name)


@pytest.fixture(params=list(Name), ids=[n.value for n in Name])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every backend."""
    return _load(request.param)


@pytest.fixture(params=[Name.TORCH, Name.JAX], ids=["torch", "jax"])
def bf16_backend(request: pytest.FixtureRequest) -> Backend:
    """The backends with bfloat16."""
    return _load(request.param)


@pytest.fixture(params=[Name.NUMPY, Name.STRICT, Name.TORCH], ids=["numpy", "strict", "torch"])
def float64_backend(request: pytest.FixtureRequest) -> Backend:
    """The backends that compute in float64 (JAX runs without x64 here)."""
    return _load(request.param)


@pytest.fixture(params=["numba", "off"])
def host_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways CPU leaves blend: ema-core's compiled one-pass loops (``EMA_CORE_NUMBA=1``;
    numba is in the test group) or the framework's own ops (``=0``). Modules that cover both
    use it with ``pytestmark = pytest.mark.usefixtures("host_kernels")``."""
    if request.param == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("EMA_CORE_NUMBA", "1" if request.param == "numba" else "0")
    monkeypatch.setattr(_settings, "_kept", [])  # read again; the old ones come back after
    return str(request.param)


def assert_close(
    actual: Any, expected: Any, dtype: str, *, ulps: float = 8, what: str = ""
) -> None:
    """Compare with a tolerance from the dtype: ``ulps`` units of its epsilon, relative to the
    magnitude of the expected values (absolute near zero)."""
    eps = {"float64": 2.2e-16, "float32": 1.2e-7, "float16": 9.8e-4, "bfloat16": 7.8e-3}[dtype]
    got, want = to_numpy(actual).astype(np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=ulps * eps * scale, err_msg=what)


def assert_same_bits_nan_aside(actual: Any, expected: Any) -> None:
    """Bit equality, except that a NaN matches any NaN: the sign and payload of a NaN differ
    between XLA builds and CPUs and are no part of the contract. Complex arrays are compared
    component by component."""
    got, want = np.asarray(actual), np.asarray(expected)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, want.dtype)
    if np.iscomplexobj(want):
        got, want = got.ravel().view(got.real.dtype), want.ravel().view(want.real.dtype)
    nan_got, nan_want = np.isnan(got.astype(np.float64)), np.isnan(want.astype(np.float64))
    np.testing.assert_array_equal(nan_got, nan_want, err_msg="NaN positions differ")
    bits = np.dtype(f"u{want.dtype.itemsize}")
    np.testing.assert_array_equal(got[~nan_want].view(bits), want[~nan_want].view(bits))


@pytest.fixture
def fresh_accelerate() -> Iterator[None]:
    """accelerate keeps its state in process-wide singletons: start and leave a test clean
    (the accelerate test modules use it for every test)."""
    from accelerate import state

    state.AcceleratorState._reset_state(True)
    state.GradientState._reset_state()
    yield
    state.AcceleratorState._reset_state(True)
    state.GradientState._reset_state()


@pytest.fixture
def x64() -> Iterator[None]:
    """JAX's x64 switched on for the test and off again after it, whatever happens."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)
