"""Audit of README "## Checkpoints" claims that no other test pins down.

Each test quotes its claim. Claims already tested elsewhere are not repeated here (see
test_checkpoint*.py, test_readme_claims_checkpoints.py, test_jax_checkpoint*.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core.checkpoint import save

torch = pytest.importorskip("torch")

from ema_core import presets  # noqa: E402
from ema_core.checkpoint import export, load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

_HALF = lambda t: 0.5  # noqa: E731  (a module-level lambda: its qualname is "<lambda>")


def _metadata(path: Path) -> dict[str, str]:
    st = pytest.importorskip("safetensors")
    with st.safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata())


def _snapshot(e: EMA) -> tuple[int, float, dict[str, Any]]:
    state = e.state_dict()
    shadows = {n: t.clone() for n, t in state["shadow"].items()}
    return int(state["step"]), float(state["weight"]), shadows


def _unchanged(e: EMA, before: tuple[int, float, dict[str, Any]]) -> None:
    step, weight, shadows = before
    state = e.state_dict()
    assert int(state["step"]) == step and float(state["weight"]) == weight
    for name, value in shadows.items():
        assert torch.equal(state["shadow"][name], value), f"{name} was written"


def test_a_lambda_schedule_reads_as_function_lambda_never_by_address(tmp_path: Path) -> None:
    # "`config` (the config's stable text: a lambda schedule reads as `<function <lambda>>`,
    # never by address)"
    cfg = ema.Config(schedule=_HALF)
    path = save(tmp_path / "a.safetensors", ema.init({"w": np.zeros(2)}, cfg), cfg)
    text = _metadata(path)["ema_core.config"]
    assert "<function <lambda>>" in text and "0x" not in text


def test_a_torch_ema_saves_source_ema_framework_torch_and_its_config(tmp_path: Path) -> None:
    # "`source` (`EMA` or `EMAState`), `framework`, `dtypes` (JSON) and `config`"; "a torch
    # `EMA` (its config travels with it)"
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    e = EMA(model, decay=0.9)
    meta = _metadata(save(tmp_path / "e.safetensors", e))
    assert meta["ema_core.source"] == "EMA" and meta["ema_core.framework"] == "torch"
    assert meta["ema_core.format_version"] == "1"
    assert "0.9" in meta["ema_core.config"]
    dtypes = json.loads(meta["ema_core.dtypes"])
    assert dtypes["shadow/weight"] == "float32" and dtypes["shadow/bias"] == "float32"
    assert set(dtypes) == {"shadow/weight", "shadow/bias", "step", "weight"}


def test_keys_that_print_alike_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    # "two keys that still print alike (`0` and `"0"`) are refused"; "a save that raises leaves
    # the old file and no temporary"
    path = tmp_path / "ema.safetensors"
    save(path, ema.init({"w": np.arange(3.0)}))
    old = path.read_bytes()
    with pytest.raises(ValueError):
        save(path, ema.init({0: np.zeros(1), "0": np.ones(1)}))
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_escaped_names_are_json_pointer_escapes(tmp_path: Path) -> None:
    # "keys joined by `/` and escaped as in a JSON pointer (`~` -> `~0`, `/` -> `~1`)"
    st = pytest.importorskip("safetensors.numpy")
    state = ema.init({"a/b": {"c~d": np.zeros(1)}, "e": [np.ones(1)]})
    names = set(st.load_file(save(tmp_path / "n.safetensors", state)))
    assert names == {"shadow/a~1b/c~0d", "shadow/e/0", "step", "weight"}


def _tied() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False)
    )
    model[1].weight = model[0].weight
    return model


def test_load_peer_takes_a_tied_tensor_whose_entries_are_equal() -> None:
    # "A state holding a tied tensor under each of its names ... is taken when the entries are
    # equal bit for bit"
    model = _tied()
    e = EMA(model, config=presets.swa_utils(0.9))
    w = torch.full((2, 2), 3.25)
    state = {
        "module.0.weight": w.clone(),
        "module.1.weight": w.clone(),
        "n_averaged": torch.tensor(4),
    }
    load_peer(e, state, peer="swa_utils", args={"decay": 0.9})
    assert int(e.step) == 4
    assert all(torch.equal(t, w) for t in e.average.values())


def test_load_peer_refuses_a_tied_tensor_whose_entries_differ() -> None:
    # "... and refused (`ValueError`) when they differ"; "Refused ... before anything is written"
    model = _tied()
    e = EMA(model, config=presets.swa_utils(0.9))
    w = torch.full((2, 2), 3.25)
    state = {"module.0.weight": w, "module.1.weight": w + 1, "n_averaged": torch.tensor(4)}
    before = _snapshot(e)
    with pytest.raises(ValueError):
        load_peer(e, state, peer="swa_utils", args={"decay": 0.9})
    _unchanged(e, before)


class _Rotary(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.register_buffer("inv_freq", torch.tensor([1.0, 0.5]), persistent=False)


def test_load_peer_without_a_non_persistent_buffer_keeps_the_emas_own() -> None:
    # "A by-name state may lack the model's non-persistent buffers (a rotary `inv_freq` ...):
    # those keep the EMA's own shadows"
    torch.manual_seed(0)
    model = _Rotary()
    e = EMA(model, config=presets.swa_utils(0.9, use_buffers=True))
    own = {n: t.clone() for n, t in e.state_dict()["shadow"].items() if "inv_freq" in n}
    assert own, "the EMA tracks the non-persistent buffer"
    state = {
        "module.lin.weight": torch.full((2, 2), 2.0),
        "module.lin.bias": torch.full((2,), -1.0),
        "n_averaged": torch.tensor(3),
    }
    load_peer(e, state, peer="swa_utils", args={"decay": 0.9, "use_buffers": True})
    assert int(e.step) == 3
    assert torch.equal(e.average["lin.weight"], torch.full((2, 2), 2.0))
    assert torch.equal(e.average["lin.bias"], torch.full((2,), -1.0))
    for name, value in own.items():
        assert torch.equal(e.state_dict()["shadow"][name], value)


def test_load_peer_refuses_any_other_missing_name_of_a_module_with_a_rotary_buffer() -> None:
    # "any other missing name is refused"
    torch.manual_seed(0)
    model = _Rotary()
    e = EMA(model, config=presets.swa_utils(0.9, use_buffers=True))
    state = {"module.lin.weight": torch.full((2, 2), 2.0), "n_averaged": torch.tensor(3)}
    before = _snapshot(e)
    with pytest.raises(ValueError, match=r"lin\.bias"):
        load_peer(e, state, peer="swa_utils", args={"decay": 0.9, "use_buffers": True})
    _unchanged(e, before)


def test_load_peer_refuses_a_float_into_an_integer_shadow() -> None:
    # "a dtype that would narrow (... a float into an integer)" is refused, a ValueError,
    # "before anything is written"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    e = EMA(model, config=presets.swa_utils(0.9))
    state = {"module." + k: v.clone() for k, v in model.state_dict().items()}
    state["module.1.num_batches_tracked"] = torch.tensor(2.0)
    state["n_averaged"] = torch.tensor(4)
    before = _snapshot(e)
    with pytest.raises(ValueError):
        load_peer(e, state, peer="swa_utils", args={"decay": 0.9})
    _unchanged(e, before)


def test_torch_ema_without_num_updates_takes_step_default_zero() -> None:
    # torch_ema row: "`ema.step` becomes `num_updates` (with `use_num_updates=False`: `step`,
    # default 0)"
    torch_ema = pytest.importorskip("torch_ema")
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    theirs = torch_ema.ExponentialMovingAverage(
        model.parameters(), decay=0.9, use_num_updates=False
    )
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(0.5)
        theirs.update()
    config = presets.torch_ema(0.9, use_num_updates=False)
    e = EMA(model, config=config)
    load_peer(e, theirs.state_dict(), peer="torch_ema")
    assert int(e.step) == 0
    assert torch.equal(e.average["weight"], theirs.shadow_params[0])
    e2 = EMA(model, config=config)
    load_peer(e2, theirs.state_dict(), peer="torch_ema", step=3)
    assert int(e2.step) == 3


def test_a_zeros_state_into_an_ema_of_another_init_is_refused_also_non_strict() -> None:
    # "A torch `EMA.load_state_dict` of a state made with `init="zeros"` (weight below 1) into
    # an EMA of another `init` is a `ValueError`, also with `strict=False`"
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    zeros = EMA(model, config=ema.Config(schedule=0.5, init="zeros"))
    zeros.update()
    assert float(zeros.state_dict()["weight"]) < 1.0
    other = EMA(model, config=ema.Config(schedule=0.5))
    before = _snapshot(other)
    for strict in (True, False):
        with pytest.raises(ValueError):
            other.load_state_dict(zeros.state_dict(), strict=strict)
        _unchanged(other, before)


def test_export_state_dict_gives_copies_bias_corrected_for_zeros() -> None:
    # export "state_dict": "`{name: average}` (copies, ...; averages of `init="zeros"` configs
    # bias-corrected)"
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    e = EMA(model, config=ema.Config(schedule=0.5, init="zeros"))
    p1 = {n: t.detach().double().clone() for n, t in model.state_dict().items()}
    e.update()
    with torch.no_grad():
        model.weight.add_(1.0)
    p2 = {n: t.detach().double().clone() for n, t in model.state_dict().items()}
    e.update()
    out = export(e, format="state_dict")
    assert sorted(out) == ["bias", "weight"]
    for name in out:
        # shadow = 0.25 p1 + 0.5 p2, weight = 1 - 0.5**2 = 0.75
        expected = (0.25 * p1[name] + 0.5 * p2[name]) / 0.75
        torch.testing.assert_close(out[name].double(), expected, rtol=1e-6, atol=1e-6)
    kept = {n: t.clone() for n, t in e.average.items()}
    for t in out.values():
        t.add_(100.0)
    for name, value in kept.items():
        assert torch.equal(e.average[name], value)


def test_a_save_that_raises_mid_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "a save that raises leaves the old file and no temporary" (raising while the tensor bytes
    # are being written, after the header)
    from ema_core.checkpoint import _save

    path = tmp_path / "ema.safetensors"
    save(path, ema.init({"a": np.arange(4.0), "b": np.arange(3.0)}))
    old = path.read_bytes()
    real = _save.host_bytes
    calls: list[int] = []

    def failing(array: Any, framework: str) -> Any:
        calls.append(1)
        if len(calls) == 4:  # two scalar checks, the first shadow, then this: mid-file
            raise OSError("disk full")
        return real(array, framework)

    monkeypatch.setattr(_save, "host_bytes", failing)
    with pytest.raises(OSError, match="disk full"):
        save(path, ema.init({"a": np.ones(4), "b": np.ones(3)}))
    assert len(calls) == 4
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_numpy_state_file_loads_into_a_torch_ema_bit_for_bit(tmp_path: Path) -> None:
    # "A torch `EMA` and an `EMAState` whose shadow is a dict keyed by the EMA's tensor names
    # share their names, so each loads the other's file"
    from ema_core.checkpoint import load

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    e = EMA(model, decay=0.9)
    rng = np.random.default_rng(0)
    shadow = {
        n: rng.standard_normal(tuple(t.shape)).astype(np.float32)
        for n, t in model.state_dict().items()
    }
    state = ema.EMAState(np.asarray(5, dtype=np.int64), shadow, np.asarray(1.0))
    assert load(save(tmp_path / "s.safetensors", state, e.config), e) is e
    assert int(e.step) == 5
    for name, value in shadow.items():
        assert np.array_equal(e.average[name].numpy(), value)
        assert e.average[name].dtype == torch.float32


def test_load_peer_widens_an_fp16_peer_shadow_exactly() -> None:
    # "a bf16/fp16 peer shadow into ema-core's float32 shadow is exact and accepted"
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    e = EMA(model, config=presets.torch_ema(0.99))
    half = [(p.detach() + 0.1).half() for p in model.parameters()]
    state = {"decay": 0.99, "num_updates": 7, "shadow_params": half, "collected_params": None}
    load_peer(e, state, peer="torch_ema")
    assert int(e.step) == 7
    for (name, _), value in zip(model.named_parameters(), half, strict=True):
        assert e.average[name].dtype == torch.float32
        assert np.array_equal(e.average[name].numpy(), value.numpy().astype(np.float32))
