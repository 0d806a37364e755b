"""Post-hoc fixes from the hunt of 2026-12-05: copied arrays keep their own dtype on disk and
back, the CLI's too-long names, gamma's lower edge, and a bank passed to ``save_snapshot``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ema_core._safetensors import Reader
from ema_core.posthoc import (
    gamma_to_sigma_rel,
    list_snapshots,
    reconstruct,
    save_snapshot,
    sigma_rel_to_gamma,
)
from ema_core.posthoc.__main__ import main
from ema_core.torch import EMABank


def _bn_model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).to(dtype)
    with torch.no_grad():  # statistics float16 cannot hold, and digits bfloat16 drops
        model[1].running_var.copy_(torch.tensor([1e5, 1.0001, 3.14159265, 7e4]))
        model[1].running_mean.copy_(torch.tensor([0.1, 1234.567, -0.3333333, 2.0]))
    return model


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", None])
def test_copied_statistics_are_stored_and_rebuilt_as_they_are(
    tmp_path: Path, dtype: str | None
) -> None:
    model = _bn_model()
    bank = EMABank(model, sigma_rels=(0.05, 0.10))
    bank.update(1)
    bank.update(2)
    bank.save_snapshots(tmp_path, dtype=dtype)
    info = list_snapshots(tmp_path)[0]
    with Reader(info.path) as reader:
        codes = {name: entry.code for name, entry in reader.entries.items()}
    assert codes["1.running_var"] == codes["1.running_mean"] == "F32"
    assert codes["0.weight"] == {"float16": "F16", "bfloat16": "BF16", None: "F32"}[dtype]
    assert info.storage == (dtype or "float32")
    rebuilt = reconstruct(tmp_path, 0.10, like=model.state_dict())
    for name in ("1.running_var", "1.running_mean", "1.num_batches_tracked"):
        assert torch.equal(rebuilt[name], model.state_dict()[name]), name
    plain = reconstruct(tmp_path, 0.10, dtype="float64")  # no like=: the stored dtype
    assert plain["1.running_mean"].dtype == np.float32
    assert plain["0.weight"].dtype == np.float64


def test_copied_float64_statistics_are_not_narrowed(tmp_path: Path) -> None:
    model = _bn_model(torch.float64)
    with torch.no_grad():
        model[1].running_mean[0] = 1.0 + 2.0**-40  # float32 would round it to 1.0
    bank = EMABank(model, sigma_rels=(0.05, 0.10))
    bank.update(1)
    bank.save_snapshots(tmp_path)
    rebuilt = reconstruct(tmp_path, 0.05, like=model.state_dict())
    assert torch.equal(rebuilt["1.running_mean"], model[1].running_mean)
    assert rebuilt["0.weight"].dtype == torch.float64


def test_cli_refuses_a_name_too_long_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for s in (0.05, 0.10):
        save_snapshot(tmp_path / "snaps", {"w": np.ones(2)}, step=10, sigma_rel=s)
    long = tmp_path / ("a" * 300 + ".safetensors")
    for argv in (
        [str(tmp_path / "snaps"), "--sigma-rel", "0.07", "--out", str(long)],
        [str(tmp_path / "snaps"), "--sigma-rel", "0.07", "0.08", "--out", str(long)],
        [str(tmp_path / "snaps"), "--sigma-rel", "0.07", "--out", "x.st", "--plot", str(long)],
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "too long" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snaps"]


def test_gamma_whose_sigma_rel_rounds_to_the_bound_is_refused() -> None:
    assert 0 < gamma_to_sigma_rel(1e-12) < 12**-0.5
    with pytest.raises(ValueError, match=r"gamma must be .* got 1e-17.*rounds to 12\*\*-0\.5"):
        gamma_to_sigma_rel(1e-17)
    for g in (1e-12, 1e-3, 6.94, 1e6):  # what it returns goes back
        assert sigma_rel_to_gamma(gamma_to_sigma_rel(g)) == pytest.approx(g, rel=1e-3)


def test_save_snapshot_of_a_bank_names_averages_and_points_to_save_snapshots(
    tmp_path: Path,
) -> None:
    bank = EMABank(torch.nn.Linear(2, 1), sigma_rels=(0.05, 0.10))
    bank.update(1)
    with pytest.raises(TypeError, match=r"averages is an EMA bank .*save_snapshots\(directory\)"):
        save_snapshot(tmp_path, bank)
    with pytest.raises(TypeError, match="averages is an EMA bank"):
        save_snapshot(tmp_path, bank, step=1, sigma_rel=0.05)
    assert list(tmp_path.iterdir()) == []
    save_snapshot(tmp_path, bank[0])  # one of its EMAs is taken
    assert [i.sigma_rel for i in list_snapshots(tmp_path)] == [0.05]
