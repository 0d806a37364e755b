"""A torch user's walkthrough of checkpoint / posthoc: tied weights, copied BatchNorm
statistics in post-hoc reconstruction, and what ``save_snapshot`` takes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ema_core as ema  # noqa: E402
from ema_core import presets  # noqa: E402
from ema_core._safetensors import Reader, write  # noqa: E402
from ema_core.checkpoint import export, load_peer  # noqa: E402
from ema_core.posthoc import list_snapshots, reconstruct, save_snapshot, solve  # noqa: E402
from ema_core.schedules import power_function  # noqa: E402
from ema_core.torch import EMA, EMABank  # noqa: E402
from tests.torch_models import TiedEmbedding  # noqa: E402


def _tied() -> TiedEmbedding:
    """The tied embedding and output layer, at this file's sizes."""
    return TiedEmbedding(vocab=10, width=4)


def _tied_ema() -> tuple[TiedEmbedding, EMA]:
    torch.manual_seed(0)
    model = _tied()
    averager = EMA(model, config=presets.timm(0.9))
    for _ in range(3):
        with torch.no_grad():
            model.emb.weight.add_(0.5)
        averager.update()
    return model, averager


# --- 1. tied weights: the names of module.state_dict() -------------------------------------


@pytest.mark.parametrize("fmt", ["state_dict", "timm"])
def test_export_writes_every_name_of_a_tied_tensor(fmt):
    model, averager = _tied_ema()
    out = export(averager, format=fmt)
    weights = out if fmt == "state_dict" else out["state_dict_ema"]
    assert list(weights) == list(model.state_dict())
    assert torch.equal(weights["out.weight"], averager.average["emb.weight"])
    fresh = _tied()
    fresh.load_state_dict(weights)  # strict
    assert torch.equal(fresh.out.weight, averager.average["emb.weight"])


def test_load_peer_takes_a_tied_name_that_holds_the_same_bits():
    _, averager = _tied_ema()
    value = torch.full((10, 4), 7.0)
    state = {"emb.weight": value, "out.weight": value.clone()}  # timm's module state dict
    load_peer(averager, state, peer="timm", args={"decay": 0.9}, step=5)
    assert averager.step == 5
    assert torch.equal(averager.average["emb.weight"], value)


def test_load_peer_refuses_tied_names_that_differ_and_writes_nothing():
    _, averager = _tied_ema()
    before = averager.average["emb.weight"].clone()
    value = torch.full((10, 4), 7.0)
    state = {"emb.weight": value, "out.weight": value + 1}
    with pytest.raises(ValueError, match=r"'emb\.weight' and 'out\.weight' differ"):
        load_peer(averager, state, peer="timm", args={"decay": 0.9}, step=5)
    assert averager.step == 3
    assert torch.equal(averager.average["emb.weight"], before)


def _tied_bank(folder: Path) -> TiedEmbedding:
    torch.manual_seed(0)
    model = _tied()
    bank = EMABank(model, sigma_rels=(0.05, 0.10), snapshot_every=10, snapshot_dir=folder)
    for step in range(1, 31):
        with torch.no_grad():
            model.emb.weight.add_(0.01 * torch.randn_like(model.emb.weight))
        bank.update(step)
    return model


def test_reconstruct_fills_a_tied_name_the_bank_recorded(tmp_path):
    model = _tied_bank(tmp_path)
    assert list_snapshots(tmp_path)[0].aliases == (("out.weight", "emb.weight"),)
    like = {k: v.clone() for k, v in model.state_dict().items()}  # no shared storage
    weights = reconstruct(tmp_path, 0.07, like=like)
    assert list(weights) == ["emb.weight", "out.weight"]
    assert torch.equal(weights["out.weight"], weights["emb.weight"])
    _tied().load_state_dict(weights)


def test_reconstruct_fills_a_tied_name_from_the_storage_like_shares(tmp_path):
    model, averager = _tied_ema()
    for s in (0.05, 0.10):
        save_snapshot(tmp_path, averager.average, step=3, sigma_rel=s)  # no aliases recorded
    weights = reconstruct(tmp_path, 0.07, like=model.state_dict())
    assert torch.equal(weights["out.weight"], weights["emb.weight"])


def test_reconstruct_like_with_names_an_include_filter_left_out_says_what_to_do(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    bank = EMABank(
        model, sigma_rels=(0.05, 0.10), snapshot_every=10, snapshot_dir=tmp_path, include="0.*"
    )
    for step in range(1, 11):
        bank.update(step)
    with pytest.raises(ValueError, match=r"filter like to the tracked names.*strict=False"):
        reconstruct(tmp_path, 0.07, like=model.state_dict())


# --- 2. copied BatchNorm statistics come from the snapshot at `at` --------------------------


def _bn_bank(folder: Path) -> tuple[torch.nn.Module, dict[int, dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    bank = EMABank(model, sigma_rels=(0.05, 0.10), snapshot_every=10, snapshot_dir=folder)
    live = {}
    for step in range(1, 31):
        model(torch.randn(8, 3) * step)  # train mode: the statistics move
        with torch.no_grad():
            model[0].weight.add_(0.1)
        bank.update(step)
        live[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return model, live


def test_reconstruct_takes_copied_statistics_from_the_snapshot_at_at(tmp_path):
    model, live = _bn_bank(tmp_path)
    copied = {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert list_snapshots(tmp_path)[0].copied == copied
    for at in (20, 30):
        weights = reconstruct(tmp_path, 0.07, at=at, like=model.state_dict())
        for name in copied:
            assert torch.equal(weights[name], live[at][name]), (at, name)


def _drop_policies(path: Path) -> None:
    """Rewrite a snapshot as an older ema-core wrote it: no 'policies' record."""
    with Reader(path) as reader:
        meta, entries = dict(reader.metadata), dict(reader.entries)
        arrays = {name: reader.read(name) for name in entries}
    del meta["policies"]
    specs = [(n, e.code, e.shape) for n, e in entries.items()]
    with open(path, "wb") as file:
        write(file, specs, (arrays[n] for n, _, _ in specs), meta)


def _read(path: Path, name: str) -> np.ndarray:
    with Reader(path) as reader:
        return reader.read(name)


def test_snapshots_without_the_record_average_every_float_array(tmp_path):
    _bn_bank(tmp_path)
    for info in list_snapshots(tmp_path):
        _drop_policies(info.path)
    infos = list_snapshots(tmp_path)
    assert all(info.copied is None for info in infos)
    solution = solve([i.step for i in infos], [i.sigma_rel for i in infos], 30, [0.07])
    coefficients = solution.coefficients[0]
    mixed = sum(
        np.float64(c) * _read(i.path, "1.running_var").astype(np.float64)
        for c, i in zip(coefficients, infos, strict=True)
    )
    got = reconstruct(tmp_path, 0.07, dtype="float64")["1.running_var"]
    np.testing.assert_allclose(got, mixed, rtol=1e-12)


# --- 3. save_snapshot: an EMAState is refused, a torch EMA is read --------------------------


def test_save_snapshot_refuses_an_ema_state_and_writes_nothing(tmp_path):
    config = ema.Config(schedule=power_function(sigma_rel=0.05), init="zeros")
    state = ema.update(ema.init({"w": np.ones(2)}, config), {"w": np.ones(2)}, config)
    with pytest.raises(TypeError, match=r"pass ema_core\.average\(state, config\)"):
        save_snapshot(tmp_path / "snaps", state, step=1, sigma_rel=0.05)
    assert not (tmp_path / "snaps").exists()


def _power_ema(sigma_rel: float = 0.05) -> EMA:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    averager = EMA(model, schedule=power_function(sigma_rel=sigma_rel))
    averager.update(4)
    return averager


def test_save_snapshot_takes_a_torch_ema(tmp_path):
    averager = _power_ema()
    path = save_snapshot(tmp_path, averager, sigma_rel=0.05)
    info = list_snapshots(tmp_path)[0]
    assert (path.name, info.step, info.sigma_rel) == ("phema-0000000004-0.05.safetensors", 4, 0.05)
    assert info.copied == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    with Reader(path) as reader:
        for name, average in averager.average.items():
            assert np.array_equal(reader.read(name), average.numpy()), name
    save_snapshot(tmp_path / "again", averager)  # step and sigma_rel from the EMA
    assert list_snapshots(tmp_path / "again")[0].step == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma_rel": 0.07}, r"sigma_rel=0\.07, but the EMA's"),
        ({"step": 5, "sigma_rel": 0.05}, "step=5, but the EMA's is 4"),
        ({"sigma_rel": 0.05, "interval": 2}, "interval=2, but the EMA's is 1"),
    ],
)
def test_save_snapshot_refuses_arguments_that_disagree_with_the_ema(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        save_snapshot(tmp_path / "snaps", _power_ema(), **kwargs)
    assert not (tmp_path / "snaps").exists()


def test_save_snapshot_refuses_an_ema_that_is_not_a_power_function(tmp_path):
    averager = EMA(torch.nn.Linear(2, 2), decay=0.999)
    averager.update(1)
    with pytest.raises(ValueError, match="needs power-function EMAs"):
        save_snapshot(tmp_path / "snaps", averager, step=1, sigma_rel=0.05)
    assert not (tmp_path / "snaps").exists()


def test_posthoc_imports_no_torch():
    code = "import sys, ema_core.posthoc; print(json.dumps('torch' in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) is False
