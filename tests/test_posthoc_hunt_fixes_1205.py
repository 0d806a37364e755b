"""Post-hoc EMA promises a hostile-user hunt of 2026-12-05 found broken, each pinned: an
uncompensated interval refused for snapshots, ``like=`` checked before any file is read (meta
tensors, non-arrays), the command line's tied names, ``--out`` folders and repeated
``--sigma-rel``, the JAX bank's ``steps=`` checked against its states, and the name
``__metadata__`` refused before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
from ema_core.posthoc import list_snapshots, reconstruct, save_snapshot
from ema_core.posthoc.__main__ import main
from ema_core.schedules import power_function

torch = pytest.importorskip("torch")
from ema_core.torch import EMA, EMABank  # noqa: E402


def _uncompensated(sigma_rel: float) -> ema.Config:
    schedule = power_function(sigma_rel=sigma_rel)
    return ema.Config(schedule=schedule, init="copy", interval=4, compensate=False)


def test_an_uncompensated_interval_is_refused_by_a_torch_bank_with_snapshots(
    tmp_path: Path,
) -> None:
    """Such an EMA applies one step's decay every 4 steps: its profile is another power
    function than its sigma_rel's, so its snapshots would be reconstructed wrongly."""
    model = torch.nn.Linear(2, 2)
    configs = [_uncompensated(0.05), _uncompensated(0.10)]
    with pytest.raises(ValueError, match=r"configs\[0\] has interval=4 with compensate=False"):
        EMABank(model, configs=configs, snapshot_every=8, snapshot_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()
    EMABank(model, configs=configs)  # without snapshots it is a bank like any other


def test_an_uncompensated_interval_is_refused_by_save_snapshot_of_an_ema(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    average = EMA(model, config=_uncompensated(0.05))
    for step in range(1, 9):
        average.update(step)
    with pytest.raises(ValueError, match=r"averages \(an EMA\) has interval=4 with compensate"):
        save_snapshot(tmp_path, average)
    assert os.listdir(tmp_path) == []
    compensated = EMA(model, config=ema.Config(schedule=power_function(sigma_rel=0.05)))
    compensated.update(4)
    save_snapshot(tmp_path, compensated)  # the default, compensate=True, is written


def test_an_uncompensated_interval_is_refused_by_a_jax_bank_with_snapshots(
    tmp_path: Path,
) -> None:
    pytest.importorskip("jax")
    from ema_core.jax import make_bank_update

    configs = [_uncompensated(0.05), _uncompensated(0.10)]
    with pytest.raises(ValueError, match=r"configs\[1\]|configs\[0\]"):
        make_bank_update(configs, snapshot_every=8, snapshot_dir=tmp_path)


def _snapshots(folder: Path, model: torch.nn.Module) -> None:
    bank = EMABank(model, sigma_rels=(0.05, 0.10), snapshot_every=10, snapshot_dir=folder)
    for step in range(1, 31):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * step)
        bank.update(step)


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(5, 3)
        self.out = torch.nn.Linear(3, 5, bias=False)
        self.out.weight = self.emb.weight


def test_like_on_the_meta_device_is_refused_before_any_file_is_read(tmp_path: Path) -> None:
    """A meta ``like`` gave meta results: the averages were silently dropped."""
    _snapshots(tmp_path, torch.nn.Linear(2, 2))
    with torch.device("meta"):
        skeleton = torch.nn.Linear(2, 2)
    read: list[int] = []
    with pytest.raises(ValueError, match=r"like\['weight'\] is a torch tensor on the meta device"):
        reconstruct(tmp_path, 0.07, like=skeleton.state_dict(), progress=lambda *a: read.append(1))
    assert read == []


@pytest.mark.parametrize(
    ("leaf", "match"),
    [(0, r"like\['n'\] is a int, not an array"), ("x", r"like\['n'\] is a str, not an array")],
)
def test_a_like_leaf_that_is_not_an_array_is_a_type_error_naming_it(
    tmp_path: Path, leaf: object, match: str
) -> None:
    save_snapshot(tmp_path, {"w": np.ones(3)}, step=10, sigma_rel=0.05)
    with pytest.raises(TypeError, match=match):
        reconstruct(tmp_path, 0.05, like={"w": np.zeros(3), "n": leaf})


def test_the_cli_writes_tied_names_so_the_file_loads_strictly(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = _Tied()
    _snapshots(tmp_path / "s", model)
    out = tmp_path / "ema.safetensors"
    assert main([str(tmp_path / "s"), "--sigma-rel", "0.07", "--out", str(out)]) == 0
    loaded = safetensors_torch.load_file(str(out))
    assert sorted(loaded) == ["emb.weight", "out.weight"]
    assert torch.equal(loaded["out.weight"], loaded["emb.weight"])
    model.load_state_dict(loaded)  # strict
    like = reconstruct(tmp_path / "s", 0.07, like=model.state_dict())
    assert torch.equal(like["emb.weight"], loaded["emb.weight"])


@pytest.mark.parametrize("out", ["folder", ".", "folder/"])
def test_the_cli_refuses_a_directory_as_out_with_several_sigma_rels(
    tmp_path: Path, out: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With two sigma_rels ``--out folder`` wrote ``folder-0.07`` beside the folder, and
    ``--out .`` raised a raw ``ValueError`` traceback; both are exit 2 now, nothing written."""
    save_snapshot(tmp_path / "s", {"w": np.ones(3)}, step=10, sigma_rel=0.05)
    save_snapshot(tmp_path / "s", {"w": np.ones(3)}, step=10, sigma_rel=0.10)
    (tmp_path / "folder").mkdir()
    before = sorted(os.listdir(tmp_path))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["s", "--sigma-rel", "0.06", "0.07", "--out", out])
    finally:
        os.chdir(cwd)
    assert exit_info.value.code == 2
    assert "is a directory; give a file name" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == before
    assert os.listdir(tmp_path / "folder") == []


def test_a_repeated_sigma_rel_flag_adds_its_targets(tmp_path: Path) -> None:
    """argparse kept only the last ``--sigma-rel``: 0.05 was silently dropped."""
    save_snapshot(tmp_path / "s", {"w": np.ones(3)}, step=10, sigma_rel=0.05)
    save_snapshot(tmp_path / "s", {"w": np.ones(3)}, step=10, sigma_rel=0.10)
    out = tmp_path / "o" / "ema.safetensors"
    argv = [str(tmp_path / "s"), "--sigma-rel", "0.05", "--sigma-rel", "0.07", "--out", str(out)]
    assert main(argv) == 0
    assert sorted(os.listdir(out.parent)) == ["ema-0.05.safetensors", "ema-0.07.safetensors"]


def test_the_jax_bank_refuses_steps_that_are_not_its_states_steps(tmp_path: Path) -> None:
    """``save_snapshots(steps=)`` labelled each average with any step it was given, so later
    reconstructions used the wrong times; it takes the states' steps times one factor (a bank
    called every k optimizer steps, labelled in optimizer steps)."""
    jnp = pytest.importorskip("jax.numpy")
    from ema_core.jax import make_bank_update

    bank = make_bank_update(sigma_rels=(0.05, 0.10))
    states = bank.init({"w": jnp.zeros(3)})
    for i in range(20):
        states = bank(states, {"w": jnp.full(3, float(i))})
    with pytest.raises(ValueError, match=r"steps\[0\]=19 is not a multiple of states\[0\]\.step"):
        bank.save_snapshots(tmp_path, states, steps=[19, 20])
    with pytest.raises(ValueError, match=r"by different factors \[1, 2\]"):
        bank.save_snapshots(tmp_path, states, steps=[20, 40])
    assert os.listdir(tmp_path) == []
    bank.save_snapshots(tmp_path, states, steps=[80, 80])  # a bank called every 4 steps
    assert sorted((i.step, i.sigma_rel) for i in list_snapshots(tmp_path)) == [
        (80, 0.05),
        (80, 0.10),
    ]


def test_an_array_named_metadata_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """It replaced the header's ``__metadata__``, and the whole directory became unreadable."""
    save_snapshot(tmp_path, {"w": np.ones(2)}, step=10, sigma_rel=0.05)
    with pytest.raises(ValueError, match="named '__metadata__'"):
        save_snapshot(tmp_path, {"__metadata__": np.ones(2)}, step=20, sigma_rel=0.05)
    assert [i.step for i in list_snapshots(tmp_path)] == [10]
    np.testing.assert_array_equal(reconstruct(tmp_path, 0.05)["w"], np.ones(2))


def test_the_safetensors_writer_refuses_the_name_before_any_byte() -> None:
    """Every writer (snapshots, the command line, a diffusers export) goes through it."""
    import io

    from ema_core._safetensors import write

    file = io.BytesIO()
    with pytest.raises(ValueError, match="a tensor is named '__metadata__'"):
        write(file, [("__metadata__", "F32", (2,))], [np.ones(2, np.float32)], {})
    assert file.getvalue() == b""
