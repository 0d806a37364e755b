"""Checkpoints across frameworks: torch -> JAX -> torch and numpy <-> torch bit for bit (bfloat16
included), the update continuing identically, JAX shardings kept, array-api-strict and CuPy."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
from ema_core.checkpoint import load, save

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = jax.numpy
from ema_core.torch import EMA  # noqa: E402


def bits(x):
    """The raw bytes of an array of any framework (bfloat16 included)."""
    if isinstance(x, torch.Tensor):
        return x.detach().reshape(-1).view(torch.uint8).numpy().tobytes()
    return np.asarray(x).tobytes()


def assert_same_ema(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["config"] == sb["config"] and int(sa["step"]) == int(sb["step"])
    assert bits(sa["weight"]) == bits(sb["weight"])
    assert list(sa["shadow"]) == list(sb["shadow"])
    for name, t in sa["shadow"].items():
        assert t.dtype == sb["shadow"][name].dtype and bits(t) == bits(sb["shadow"][name]), name


def model(buffers=False):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)]
    if buffers:
        layers.insert(1, torch.nn.BatchNorm1d(3))
    return torch.nn.Sequential(*layers).to(torch.bfloat16)


def step(net, ema_):
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    net(torch.randn(5, 4, dtype=torch.bfloat16))
    ema_.update()


def jax_like(ema_):
    """An EMAState of JAX zeros with the EMA's names, shapes and dtypes."""

    def dtype(t):  # int64 is int32 without x64
        return jax.dtypes.canonicalize_dtype(getattr(jnp, str(t.dtype).removeprefix("torch.")))

    shadow = {n: jnp.zeros(t.shape, dtype(t)) for n, t in ema_.state_dict()["shadow"].items()}
    return ema.EMAState(jnp.asarray(0), shadow, jnp.asarray(0.0))


@pytest.mark.parametrize("dtype", [None, "same"])  # float32 shadows of bf16, or bf16 shadows
def test_torch_to_jax_to_torch_bit_for_bit_and_continues(tmp_path, dtype):
    cfg = ema.Config(schedule=ema.schedules.warmup(0.999), init="copy", dtype=dtype)
    net = model()
    first = EMA(net, config=cfg)
    for _ in range(4):
        step(net, first)
    state = load(save(tmp_path / "t", first), jax_like(first), config=cfg)
    assert isinstance(state.shadow["0.weight"], jax.Array)
    assert state.shadow["0.weight"].dtype == (jnp.bfloat16 if dtype else jnp.float32)
    assert state.step.dtype == jnp.int32 and int(state.step) == 4
    twin = copy.deepcopy(net)
    second = EMA(twin, config=cfg)
    load(save(tmp_path / "j", state, cfg), second)
    assert_same_ema(first, second)
    # the step takes like's type: the EMA's Python int, not the file's int32 as a tensor
    # counter (which would stop at 2**31 - 1 and not serialize as JSON)
    assert type(second.step) is int and type(first.step) is int
    for seed in range(3):  # the torch update continues identically
        for n, e in ((net, first), (twin, second)):
            torch.manual_seed(seed)
            step(n, e)
        assert_same_ema(first, second)
    # the JAX update continues the same trajectory (same formula, another framework's rounding)
    params = {
        n: jnp.asarray(t.float().numpy()).astype(jnp.bfloat16) for n, t in net.state_dict().items()
    }
    later = ema.update(load(save(tmp_path / "t", first), jax_like(first)), params, cfg)
    torch.manual_seed(9)
    first.update()
    for name, t in first.average.items():
        np.testing.assert_allclose(
            np.asarray(later.shadow[name], np.float32),
            t.float().numpy(),
            rtol=2**-7 if dtype else 2**-22,
            atol=0,
        )


def test_torch_with_buffers_and_zeros_through_jax_x64(tmp_path):
    """int64 BatchNorm counters and a float64 bias-correction weight need jax x64 to travel."""
    cfg = ema.Config(schedule=0.9, init="zeros")
    net = model(buffers=True)
    first = EMA(net, config=cfg)
    for _ in range(3):
        step(net, first)
    with jax.enable_x64(True):
        state = load(save(tmp_path / "t", first), jax_like(first))
        assert (
            state.weight.dtype == jnp.float64
            and state.shadow["1.num_batches_tracked"].dtype == jnp.int64
        )
        back = save(tmp_path / "j", state, cfg)
    second = EMA(copy.deepcopy(net), config=cfg)
    load(back, second)
    assert_same_ema(first, second)
    with pytest.raises(
        ValueError,
        match=r"'shadow/1\.num_batches_tracked' has shape \(\) dtype int64; "
        r"like\.shadow\['1\.num_batches_tracked'\] has shape \(\) dtype int32",
    ):
        load(back, jax_like(first))  # without x64 JAX has no int64: refused, never cast


def test_numpy_torch_numpy_bit_for_bit(tmp_path):
    cfg = ema.Config(schedule=0.75, init="zeros")
    rng = np.random.default_rng(0)
    params = {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(2),
        "n": np.arange(3),
        "m": rng.random(2) > 0.5,
    }
    state = ema.update(ema.init(params, cfg), params, cfg)
    like = ema.init(
        {k: torch.zeros(v.shape, dtype=torch.from_numpy(v).dtype) for k, v in params.items()}, cfg
    )
    as_torch = load(save(tmp_path / "n", state, cfg), like, config=cfg)
    assert isinstance(as_torch.shadow["w"], torch.Tensor) and as_torch.step.dtype == torch.int64
    back = load(save(tmp_path / "t", as_torch, cfg), ema.init(params, cfg), config=cfg)
    for k in params:
        assert back.shadow[k].dtype == state.shadow[k].dtype and bits(back.shadow[k]) == bits(
            state.shadow[k]
        ), k
    assert bits(back.weight) == bits(state.weight) and int(back.step) == 1
    nxt = {k: v + 1 if v.dtype != bool else ~v for k, v in params.items()}
    want, got = ema.update(state, nxt, cfg), ema.update(back, nxt, cfg)
    for k in params:
        assert bits(want.shadow[k]) == bits(got.shadow[k]), k


def test_array_api_strict_round_trip(tmp_path):
    xp = pytest.importorskip("array_api_strict")
    state = ema.init({"w": xp.asarray([1.5, -2.0]), "i": xp.asarray([3, 4], dtype=xp.int32)})
    back = load(
        save(tmp_path / "s", state), ema.init({"w": xp.zeros(2), "i": xp.zeros(2, dtype=xp.int32)})
    )
    assert type(back.shadow["w"]) is type(state.shadow["w"]) and back.shadow["i"].dtype == xp.int32
    assert np.from_dlpack(back.shadow["w"]).tolist() == [1.5, -2.0]
    assert np.from_dlpack(back.shadow["i"]).tolist() == [3, 4]


def test_cupy_round_trip(tmp_path):
    cp = pytest.importorskip("cupy", reason="CuPy is not installed (no CUDA on this machine)")
    state = ema.init({"w": cp.arange(4, dtype=cp.float32)})
    back = load(save(tmp_path / "c", state), ema.init({"w": cp.zeros(4, dtype=cp.float32)}))
    assert isinstance(back.shadow["w"], cp.ndarray) and back.shadow["w"].get().tolist() == [
        0,
        1,
        2,
        3,
    ]


SHARDED = textwrap.dedent(
    """
    import sys, numpy as np, jax, jax.numpy as jnp, ema_core as ema
    from jax.sharding import NamedSharding, PartitionSpec as P
    from ema_core.checkpoint import load, save
    mesh = jax.make_mesh((4, 2), ("a", "b"))
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    w = jnp.arange(64.0, dtype=jnp.float32).reshape(8, 8).astype(jnp.bfloat16)
    state = ema.init({"w": put(w, P("a", "b")), "v": put(jnp.arange(8.0), P("a"))})
    path = save(sys.argv[1], state)
    zeros = {"w": put(jnp.zeros((8, 8), jnp.bfloat16), P(None, "a")), "v": put(jnp.zeros(8), P())}
    like = ema.init(zeros)
    back = load(path, like)
    for k in ("w", "v"):
        assert back.shadow[k].sharding == like.shadow[k].sharding, k
        assert np.asarray(back.shadow[k]).tobytes() == np.asarray(state.shadow[k]).tobytes(), k
    print("SHARDED-OK")
    """
)


def test_jax_shardings_are_kept(tmp_path):
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED, str(tmp_path / "s")],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SHARDED-OK" in proc.stdout


def test_a_jax_array_not_fully_addressable_is_refused(tmp_path, monkeypatch):
    """Single-process JAX arrays are always addressable: a stand-in takes the multi-process path."""
    from ema_core.checkpoint import _arrays

    class Remote:
        is_fully_addressable, shape, dtype = False, (2,), np.dtype("float32")

    monkeypatch.setattr(
        _arrays, "framework_of", lambda leaf: "jax" if isinstance(leaf, Remote) else "numpy"
    )
    with pytest.raises(
        ValueError, match=r"'shadow/w' is a JAX array sharded over several processes .*orbax"
    ):
        save(tmp_path / "r", ema.EMAState(np.asarray(0), {"w": Remote()}, np.asarray(1.0)))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.uint32, np.uint64])
def test_an_ema_state_step_of_any_integer_dtype_loads_into_an_ema_as_an_int(tmp_path, dtype):
    """A step saved by an ``EMAState`` (numpy here; int32 from JAX without x64) becomes the
    torch EMA's own form of counter, a Python int, whatever its integer dtype."""
    net = torch.nn.Linear(2, 2)
    target = EMA(net, decay=0.5)
    shadow = {n: t.detach().numpy() + 1 for n, t in net.state_dict().items()}
    state = ema.EMAState(np.asarray(7, dtype), shadow, np.asarray(1.0))
    load(save(tmp_path / "s", state, target.config), target)
    assert type(target.step) is int and target.step == 7
    target.update()
    assert target.step == 8
