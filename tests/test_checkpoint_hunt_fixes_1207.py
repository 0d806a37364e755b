"""Checkpoint promises a hostile-user hunt of 2026-12-07 found broken, each pinned: a diffusers
export of an EMA built with ``exclude=`` (a folder without those weights), an abstract or meta
``like`` (check passed, load failed or lost the values), a torch leaf whose storage was freed
(saved from freed memory), complex64 and float8 refused as if safetensors could not hold them,
a donated ``like`` under ``strict=False`` (a raw RuntimeError), a path ending in a separator
(saved as a file) and a packed JAX ``like`` (no hint)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core
from ema_core.checkpoint import check, load, save


def _torch() -> Any:
    return pytest.importorskip("torch")


def _jax() -> Any:
    return pytest.importorskip("jax")


# -- 1. export(format="diffusers") of an EMA that leaves out parameters --------------------------


def test_a_diffusers_export_refuses_an_ema_that_leaves_out_parameters(tmp_path: Path) -> None:
    torch = _torch()
    from ema_core import presets
    from ema_core.checkpoint import export
    from ema_core.torch import EMA

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    ema = EMA(model, config=presets.diffusers(), exclude=["0.*"])
    ema.update()
    folder = tmp_path / "unet_ema"
    with pytest.raises(ValueError, match=r"leaves out 0\.weight, 0\.bias \(2 parameters") as err:
        export(ema, format="diffusers", path=folder, model_config={"in": 2})
    assert "averages every parameter" in str(err.value)
    assert "include=/exclude=" in str(err.value)
    assert not folder.exists()  # refused before anything is written


def test_a_diffusers_export_of_every_parameter_and_tied_weights_is_written(tmp_path: Path) -> None:
    torch = _torch()
    from ema_core import presets
    from ema_core.checkpoint import export
    from ema_core.torch import EMA

    model = torch.nn.ModuleDict({"enc": torch.nn.Embedding(4, 2), "dec": torch.nn.Linear(2, 4)})
    model["dec"].weight = model["enc"].weight  # tracked once, exported under both names
    ema = EMA(model, config=presets.diffusers())
    ema.update()
    folder = export(ema, format="diffusers", path=tmp_path / "out", model_config={"n": 4})
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]


# -- 2. an abstract (jax.eval_shape) or meta like ------------------------------------------------


@pytest.mark.parametrize("function", [check, load])
def test_an_abstract_like_is_refused_by_check_and_load_alike(tmp_path: Path, function: Any) -> None:
    jax = _jax()
    cfg = ema_core.Config(0.9)
    params = {"w": jax.numpy.ones(3)}
    path = save(tmp_path / "a.st", ema_core.init(params, cfg), cfg)
    abstract = jax.eval_shape(lambda: ema_core.init(params, cfg))
    with pytest.raises(TypeError, match=r"like\.shadow\['w'\] is a ShapeDtypeStruct, not an arr"):
        function(path, abstract, config=cfg)
    concrete_shadow = abstract._replace(shadow=params)  # abstract step and weight only
    with pytest.raises(TypeError, match=r"like\.step must be an int or a 0-d integer array"):
        function(path, concrete_shadow, config=cfg)


@pytest.mark.parametrize("function", [check, load])
def test_a_meta_like_is_refused_by_check_and_load_alike(tmp_path: Path, function: Any) -> None:
    torch = _torch()
    path = save(tmp_path / "t.st", ema_core.init({"w": torch.arange(3.0)}))
    weight = torch.tensor(1.0, dtype=torch.float64)
    with torch.device("meta"):
        shadow = {"w": torch.empty(3)}
    like = ema_core.EMAState(torch.tensor(0), shadow, weight)
    with pytest.raises(ValueError, match=r"like\.shadow\['w'\] is a torch tensor on the meta"):
        function(path, like)
    step = torch.tensor(0, device="meta")
    like = ema_core.EMAState(step, {"w": torch.zeros(3)}, weight)
    with pytest.raises(ValueError, match=r"like\.step is a torch tensor on the meta device"):
        function(path, like)


# -- 3. a torch leaf whose storage was freed ------------------------------------------------------


def test_save_refuses_a_tensor_whose_storage_was_freed(tmp_path: Path) -> None:
    torch = _torch()
    b = torch.ones(4)
    b.untyped_storage().resize_(0)  # as FSDP frees a flat parameter's storage
    state = ema_core.EMAState(torch.tensor(1), {"b": b}, torch.tensor(1.0, dtype=torch.float64))
    target = tmp_path / "a.st"
    with pytest.raises(ValueError, match=r"ema_or_state 'shadow/b': its storage holds 0 bytes"):
        save(target, state)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


# -- 4. complex64 and float8 ---------------------------------------------------------------------


def test_a_complex64_torch_ema_round_trips(tmp_path: Path) -> None:
    torch = _torch()
    from ema_core.torch import EMA

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2, dtype=torch.complex64)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.mul_(2j)
    ema.update()
    path = save(tmp_path / "c.st", ema)
    back = EMA(torch.nn.Linear(2, 2, dtype=torch.complex64), decay=0.9)
    load(path, back)
    assert back.step == 1
    for name in ("weight", "bias"):
        assert back.average[name].dtype == torch.complex64
        assert torch.equal(back.average[name], ema.average[name])
    safetensors_torch = pytest.importorskip("safetensors.torch")
    assert safetensors_torch.load_file(path)["shadow/weight"].dtype == torch.complex64


def test_float8_torch_buffers_round_trip(tmp_path: Path) -> None:
    torch = _torch()
    from ema_core.torch import EMA

    class Net(torch.nn.Module):
        def __init__(self, zero: bool) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            scale = 0.0 if zero else 1.0
            self.register_buffer("a", torch.tensor([0.5, 448.0]).mul(scale).to(torch.float8_e4m3fn))
            self.register_buffer("b", torch.tensor([1.5, -3.0]).mul(scale).to(torch.float8_e5m2))

    ema = EMA(Net(zero=False), decay=0.9)
    ema.update()
    path = save(tmp_path / "f8.st", ema)
    back = EMA(Net(zero=True), decay=0.9)
    assert not back.average["a"].view(torch.uint8).any()  # zeros before the load
    load(path, back)
    for name, dtype in (("a", torch.float8_e4m3fn), ("b", torch.float8_e5m2)):
        assert back.average[name].dtype == dtype
        assert torch.equal(
            back.average[name].view(torch.uint8), ema.average[name].view(torch.uint8)
        )
    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(path, "pt") as file:
        assert file.get_tensor("shadow/a").dtype == torch.float8_e4m3fn
        assert file.get_tensor("shadow/b").dtype == torch.float8_e5m2


def test_a_complex64_numpy_state_round_trips_and_complex128_is_refused(tmp_path: Path) -> None:
    values = np.array([1 + 2j, 3 - 1j], np.complex64)
    path = save(tmp_path / "n.st", ema_core.init({"w": values}))
    back = load(path, ema_core.init({"w": np.zeros(2, np.complex64)}))
    assert back.shadow["w"].dtype == np.complex64
    np.testing.assert_array_equal(back.shadow["w"], values)
    wide = ema_core.EMAState(0, {"w": np.ones(2, np.complex128)}, 1.0)
    with pytest.raises(TypeError, match=r"dtype complex128, which the safetensors format has no"):
        save(tmp_path / "x.st", wide)
    assert not (tmp_path / "x.st").exists()


def test_float8_jax_states_round_trip_and_cross_from_torch(tmp_path: Path) -> None:
    jax = _jax()
    jnp = jax.numpy
    values = jnp.array([0.5, 2.0, -448.0], jnp.float8_e4m3fn)
    state = ema_core.EMAState(jnp.asarray(1), {"w": values}, jnp.asarray(1.0))
    path = save(tmp_path / "j.st", state)
    like = ema_core.EMAState(jnp.asarray(0), {"w": jnp.zeros(3, jnp.float8_e4m3fn)}, 1.0)
    back = load(path, like)
    assert back.shadow["w"].dtype == jnp.float8_e4m3fn
    np.testing.assert_array_equal(
        np.asarray(back.shadow["w"]).view(np.uint8), np.asarray(values).view(np.uint8)
    )
    torch = pytest.importorskip("torch")
    e5m2 = torch.tensor([1.5, -3.0]).to(torch.float8_e5m2)
    source = ema_core.EMAState(1, {"w": e5m2}, 1.0)
    path = save(tmp_path / "t.st", source)
    like = ema_core.EMAState(0, {"w": jnp.zeros(2, jnp.float8_e5m2)}, 1.0)
    crossed = load(path, like).shadow["w"]
    assert crossed.dtype == jnp.float8_e5m2
    assert np.asarray(crossed).view(np.uint8).tolist() == e5m2.view(torch.uint8).tolist()


# -- 5. a donated (deleted) JAX like under strict=False -------------------------------------------


@pytest.mark.parametrize("function", [check, load])
def test_a_donated_like_kept_by_a_loose_load_is_named(tmp_path: Path, function: Any) -> None:
    jax = _jax()
    jnp = jax.numpy
    cfg = ema_core.Config(0.9)
    params = {"w": jnp.ones(3), "head": jnp.zeros(2)}
    donated = ema_core.init(params, cfg)
    path = save(tmp_path / "body.st", ema_core.init({"w": jnp.ones(3)}, cfg), cfg)
    jax.jit(lambda s, x: ema_core.update(s, x, cfg), donate_argnums=0)(donated, params)
    with pytest.raises(ValueError, match=r"like\.shadow\['head'\] was deleted \(donated to a jit"):
        function(path, donated, config=cfg, strict=False)
    weight = jnp.asarray(1.0)
    weight.delete()
    live = ema_core.init(params, cfg)._replace(weight=weight)  # only the weight deleted
    with pytest.raises(ValueError, match=r"like\.weight was deleted \(donated"):
        function(path, live, config=cfg, strict=False)


# -- 6. a path ending in a separator; a packed JAX like -------------------------------------------


def test_save_refuses_a_path_ending_in_a_separator(tmp_path: Path) -> None:
    state = ema_core.init({"w": np.ones(2)})
    path = str(tmp_path / "ckpts") + os.sep
    with pytest.raises(ValueError, match=r"ends in a separator, so it names a directory"):
        save(path, state)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("function", [check, load])
def test_a_packed_like_gets_the_unpack_hint(tmp_path: Path, function: Any) -> None:
    jnp = _jax().numpy
    import ema_core.jax as ema_jax

    state = ema_core.init({"w": jnp.ones(2)})
    path = save(tmp_path / "a.st", state)
    with pytest.raises(TypeError, match=r"got PackedState \(a packed state: ema_core\.jax\.unpack"):
        function(path, ema_jax.pack(state))
