"""README claims of "Checkpoints" and "Coming from a peer mid-run, and leaving" that no other test
asserted. Each test names its claim; the comment quotes it."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import _atomic
from ema_core.checkpoint import load, save

torch = pytest.importorskip("torch")

from ema_core import presets  # noqa: E402
from ema_core.checkpoint import export, load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402


def _model() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def test_the_temporary_file_is_hidden_beside_the_path_and_named_name_random_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "`save` writes a hidden temporary file beside `path`"; "(`.<name>.<random>.tmp`)"; "a
    # save that raises leaves the old file and no temporary"
    path = tmp_path / "ema.safetensors"
    state = ema.init({"w": np.arange(3.0)})
    save(path, state)
    old = path.read_bytes()
    renamed: list[tuple[str, str]] = []

    def replace(src: Any, dst: Any) -> None:
        renamed.append((os.fspath(src), os.fspath(dst)))
        raise OSError("disk gone")

    monkeypatch.setattr(_atomic.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        save(path, ema.init({"w": np.ones(3)}))
    ((src, dst),) = renamed
    assert dst == os.fspath(path) and Path(src).parent == tmp_path
    assert re.fullmatch(r"\.ema\.safetensors\.[0-9a-f]+\.tmp", Path(src).name), src
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_safetensors_torch_opens_the_file_and_every_dtype_is_kept(tmp_path: Path) -> None:
    # "Tensors: `step` and `weight` ..., 0-d, in the dtype they had, and one `shadow/<name>` per
    # shadow"; "bf16 stays bf16, BatchNorm's int64 counter stays int64"; "Nothing is pickled;
    # `safetensors.torch.load_file` opens the file."
    st = pytest.importorskip("safetensors.torch")
    model = _model().bfloat16()
    average = EMA(model, decay=0.9, dtype="same")
    average.update()
    tensors = st.load_file(str(save(tmp_path / "e", average)))
    assert set(tensors) == {"step", "weight"} | {f"shadow/{n}" for n in average.names}
    assert tensors["step"].shape == () and tensors["weight"].shape == ()
    assert tensors["step"].item() == 1
    assert tensors["shadow/0.weight"].dtype == torch.bfloat16
    assert tensors["shadow/1.num_batches_tracked"].dtype == torch.int64
    for name in average.names:
        assert torch.equal(tensors[f"shadow/{name}"], average.average[name]), name


def test_step_and_weight_take_likes_dtypes(tmp_path: Path) -> None:
    # "The step and weight take `like`'s dtypes (... a float64 weight rounds to float32, which
    # matters only for `init="zeros"`)"
    config = ema.Config(0.9, init="zeros")
    state = ema.init({"w": np.arange(3.0)}, config)
    for _ in range(3):
        state = ema.update(state, {"w": np.ones(3)}, config)
    path = save(tmp_path / "z", state, config)
    like = ema.EMAState(np.asarray(0, np.int32), {"w": np.zeros(3)}, np.asarray(0.0, np.float32))
    back = load(path, like, config=config)
    assert np.asarray(back.step).dtype == np.int32 and int(back.step) == 3
    assert np.asarray(back.weight).dtype == np.float32
    assert back.weight == np.float32(np.asarray(state.weight))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_load_peer_removes_the_wrapper_prefixes_of_ddp_and_compile(prefix: str) -> None:
    # "Names lose the wrapper prefixes ema-core removes from a model's names (`module.` of DDP,
    # `_orig_mod.` of `torch.compile`), so a state saved from a wrapped model loads into an EMA
    # of the plain one."
    model = _model()
    plain = {k: v + (1 if v.is_floating_point() else 0) for k, v in model.state_dict().items()}
    swa = {**{f"module.{prefix}{k}": v for k, v in plain.items()}, "n_averaged": torch.tensor(4)}
    average = EMA(model, config=presets.swa_utils(0.9))
    load_peer(average, swa, peer="swa_utils", args={"decay": 0.9})
    timm = EMA(model, config=presets.timm(0.9))
    timm_state = {f"{prefix}{k}": v for k, v in plain.items()}
    load_peer(timm, timm_state, peer="timm", args={"decay": 0.9}, step=5)
    assert (average.step, timm.step) == (4, 5)
    for name, value in plain.items():
        assert torch.equal(average.average[name], value), name
        assert torch.equal(timm.average[name], value), name


def test_the_diffusers_folder_is_renamed_into_place_weights_before_config_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Each file is written crash-safe (temporary file, fsync, rename), the weights before
    # config.json."
    model = torch.nn.Linear(3, 2)
    average = EMA(model, config=presets.diffusers())
    average.update()
    order: list[str] = []
    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        order.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(_atomic.os, "replace", replace)
    folder = export(average, format="diffusers", path=tmp_path / "unet_ema", model_config={})
    assert order == ["diffusion_pytorch_model.safetensors", "config.json"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(order)


def test_load_peer_accepts_the_peers_preset_with_another_shadow_dtype_and_guard_finite() -> None:
    # "`load_peer` checks that its config is that preset (the shadow `dtype` and `guard_finite`
    # may differ)"
    model = torch.nn.Linear(3, 2)
    preset = presets.torch_ema(0.99)
    config = dataclasses.replace(preset, dtype="float64", guard_finite=True)
    average = EMA(model, config=config)
    shadows = [p.detach() + 1.0 for p in model.parameters()]
    state = {"decay": 0.99, "num_updates": 7, "shadow_params": shadows, "collected_params": None}
    load_peer(average, state, peer="torch_ema")
    assert average.step == 7 and average.config == config
    for (name, _), shadow in zip(model.named_parameters(), shadows, strict=True):
        assert average.average[name].dtype == torch.float64
        assert torch.equal(average.average[name], shadow.double()), name
    other = EMA(model, config=dataclasses.replace(preset, interval=2))  # not the preset: refused
    with pytest.raises(ValueError, match=r"presets\.torch_ema"):
        load_peer(other, state, peer="torch_ema")
