"""``EMABank`` under hostile but realistic use (issue 16): a snapshot directory that is a file
(refused when built, and before any shadow changes when it became one later), ``bank[k]`` with
keys out of range or not ints. Each case failed before its fix. JAX: ``test_bank_hostile_jax``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ema_core import Config  # noqa: E402
from ema_core.torch import EMABank  # noqa: E402

pytestmark = pytest.mark.usefixtures("host_kernels")


def _model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def _copies(bank: EMABank) -> list[dict[str, torch.Tensor]]:
    return [{n: t.clone() for n, t in ema.average.items()} for ema in bank]


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "taken"
    path.write_text("not a directory")
    return path


@pytest.mark.parametrize("where", ["file", "under_file", "empty"])
def test_torch_bank_refuses_a_snapshot_dir_that_cannot_be_a_directory(
    tmp_path: Path, where: str
) -> None:
    path = {"file": _a_file(tmp_path), "under_file": _a_file(tmp_path) / "x", "empty": ""}[where]
    with pytest.raises(ValueError, match="snapshot_dir="):
        EMABank(_model(), sigma_rels=(0.05, 0.10), snapshot_every=1, snapshot_dir=path)


def test_torch_bank_refuses_the_update_when_its_snapshot_dir_became_a_file(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "snaps"
    model = _model()
    bank = EMABank(model, sigma_rels=(0.05, 0.10), snapshot_every=2, snapshot_dir=folder)
    bank.update()
    before = _copies(bank)
    folder.write_text("replaced by a file")  # the directory was never made: no snapshot yet
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(ValueError, match="is a file, not a directory"):
        bank.update()
    assert [ema.step for ema in bank] == [1, 1]
    for ema, want in zip(bank, before, strict=True):
        for name, tensor in ema.average.items():
            assert torch.equal(tensor, want[name]), name


@pytest.mark.parametrize(
    ("key", "error", "words"),
    [
        (2, IndexError, r"bank\[2\] is out of range: the bank has 2 EMAs"),
        (-3, IndexError, r"bank\[-3\] is out of range"),
        (True, TypeError, "takes an int k, got bool True"),
        (1.0, TypeError, "takes an int k, got float 1.0"),
        (slice(0, 1), TypeError, "takes an int k, got slice"),
        ("0", TypeError, "takes an int k, got str"),
    ],
)
def test_torch_bank_index_refusals(key: object, error: type[Exception], words: str) -> None:
    bank = EMABank(_model(), [Config(schedule=0.9), Config(schedule=0.5)])
    with pytest.raises(error, match=words):
        bank[key]  # type: ignore[index]


def test_torch_bank_index_takes_negative_and_numpy_ints() -> None:
    bank = EMABank(_model(), [Config(schedule=0.9), Config(schedule=0.5), Config()])
    assert bank[-1] is bank.emas[2]
    assert bank[-3] is bank.emas[0]
    assert bank[np.int64(1)] is bank.emas[1]  # type: ignore[index]


def test_torch_bank_load_names_the_ema_whose_part_is_refused() -> None:
    model = _model()
    configs = [Config(schedule=0.9), Config(schedule=0.5)]
    source = EMABank(model, configs)
    source.update()
    state = source.state_dict()
    state["emas"][1]["shadow"]["weight"] = torch.zeros(4, 4)
    target = EMABank(model, configs)
    target.update()
    target.update()
    before = _copies(target)
    with pytest.raises(ValueError, match=r"^state_dict\['emas'\]\[1\]: .*shape \(4, 4\)"):
        target.load_state_dict(state)
    assert [ema.step for ema in target] == [2, 2]
    for ema, want in zip(target, before, strict=True):
        for name, tensor in ema.average.items():
            assert torch.equal(tensor, want[name]), name


def test_fused_bank_leaves_params_resizable_and_bumps_shadow_versions():
    """The fused host kernel sees tensors through views made from their data addresses: a
    param's storage can still grow after an update, and the shadows' version counters move
    as with torch's own in-place ops (a graph that saved an average refuses the new values)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8).to(torch.bfloat16)
    bank = EMABank(model, sigma_rels=(0.05, 0.1), dtype=torch.float32)
    bank.update()
    before = [bank[k].average["weight"]._version for k in range(2)]
    bank.update()
    assert all(bank[k].average["weight"]._version > v for k, v in enumerate(before))
    weight = model.weight.data  # the same storage
    weight.resize_(16, 8)  # grows it; torch refuses if a numpy view pinned it
    assert weight.shape == (16, 8) and weight.untyped_storage().nbytes() == 16 * 8 * 2
