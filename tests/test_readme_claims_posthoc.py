"""README claims of "Post-hoc EMA" and its bank that no other test asserted. Each test names
its claim; the comment gives the README line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ema_core import Config
from ema_core._safetensors import Reader
from ema_core.posthoc import reconstruct, save_snapshot

torch = pytest.importorskip("torch")

from ema_core.torch import EMA, EMABank  # noqa: E402


def test_bank_configs_must_agree_on_non_float() -> None:
    # README 1003: the configs of a bank must agree on buffers, non_float and dtype
    with pytest.raises(ValueError, match=r"configs\[1\].non_float='freeze' but configs\[0\]"):
        EMABank(torch.nn.Linear(2, 2), configs=[Config(), Config(non_float="freeze")])


def test_a_bank_member_is_a_real_ema() -> None:
    # README 968-969: bank[k] is a real EMA (average, swap(), copy_to, state_dict)
    model = torch.nn.Linear(3, 2)
    bank = EMABank(model, sigma_rels=(0.05, 0.10))
    bank.update(1)
    for k in range(2):
        assert isinstance(bank[k], EMA)
        state = bank[k].state_dict()
        assert int(state["step"]) == 1
        assert set(state["shadow"]) == {"weight", "bias"}


def test_snapshots_whose_coefficients_are_all_zero_are_not_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # README 1037: snapshots whose coefficients are all 0 are not opened
    rng = np.random.default_rng(1)
    for step in (100, 200, 300):
        for s in (0.05, 0.1):
            arrays = {"w": rng.normal(size=3).astype(np.float32)}
            save_snapshot(tmp_path, arrays, step=step, sigma_rel=s)
    opened: list[str] = []
    real_init = Reader.__init__

    def init(self: Any, path: Path) -> None:
        real_init(self, path)
        opened.append(path.name)

    monkeypatch.setattr(Reader, "__init__", init)
    got = reconstruct(tmp_path, 0.05, at=300, dtype="float64")["w"]
    tensor_reads = opened[6:]  # the first 6 opens are the listing reading the headers
    assert tensor_reads == ["phema-0000000300-0.05.safetensors"]
    with Reader(tmp_path / "phema-0000000300-0.05.safetensors") as reader:
        np.testing.assert_array_equal(got, reader.read("w"))


def test_save_snapshot_refuses_a_file_as_its_directory_before_writing(tmp_path: Path) -> None:
    # README "Choices", post-hoc: `directory` ... a file there is a ValueError
    afile = tmp_path / "afile"
    afile.write_bytes(b"kept")
    with pytest.raises(ValueError, match=r"directory '.*afile' is a file, not a folder"):
        save_snapshot(afile, {"w": np.ones(2)}, step=10, sigma_rel=0.05)
    assert afile.read_bytes() == b"kept"
    made = save_snapshot(
        tmp_path / "missing" / "deeper", {"w": np.ones(2)}, step=10, sigma_rel=0.05
    )
    assert made.parent == tmp_path / "missing" / "deeper" and made.is_file()
