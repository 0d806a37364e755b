"""Tests that the second mutation-testing audit (the user-facing layers: the torch ``EMA``,
its checkpoints, the JAX wrappers, the stateless cache) found missing: each kills a small
plausible bug that the rest of the suite let through."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import ema_core  # noqa: E402
from ema_core.torch import EMA  # noqa: E402


def test_copy_to_refuses_a_broadcastable_shape_before_writing_anything() -> None:
    """A (1,) average fits a (3,) target by broadcasting: still another shape, refused, and
    the names checked before it are not written either."""
    ema = EMA({"a": torch.ones(2), "b": torch.ones(1)}, decay=0.5)
    target = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match="'b' with shape \\(1,\\) has shape \\(3,\\)"):
        ema.copy_to(target)
    assert target["a"].tolist() == [0.0, 0.0]
    assert target["b"].tolist() == [0.0, 0.0, 0.0]


def test_copy_to_writes_inference_tensors_inside_inference_mode() -> None:
    """An inference tensor takes in-place writes inside ``torch.inference_mode``: copy_to
    writes it there (it is refused only outside)."""
    ema = EMA({"w": torch.full((2,), 3.0)}, decay=0.5)
    with torch.inference_mode():
        target = {"w": torch.zeros(2)}
        ema.copy_to(target)
    assert target["w"].is_inference()
    assert target["w"].tolist() == [3.0, 3.0]


def test_swap_restores_a_tensor_tracked_under_two_names_to_its_live_values() -> None:
    """The same tensor under two names is put aside twice (the second time holding the
    first average): restored in reverse order, it ends with its live values."""
    live = torch.ones(2)
    ema = EMA({"a": live, "b": live}, decay=0.5)
    live.fill_(5.0)
    ema.update()  # both averages: 0.5 * 1 + 0.5 * 5 = 3
    with ema.swap():
        assert live.tolist() == [3.0, 3.0]
    assert live.tolist() == [5.0, 5.0]


def test_swap_without_copy_keeps_a_bf16_parameter_bf16() -> None:
    """``swap(copy=False)`` over a float32 shadow of a bf16 parameter puts in a bf16 copy
    (dtypes differ: no aliasing); the parameter keeps its dtype inside the block."""
    model = torch.nn.Linear(2, 1, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.75)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update()  # 0.75 * 1 + 0.25 * 2 = 1.25, exact in bf16
    with ema.swap(copy=False):
        assert model.weight.dtype == torch.bfloat16
        assert model.weight.tolist() == [[1.25, 1.25]]
    assert model.weight.dtype == torch.bfloat16
    assert model.weight.tolist() == [[2.0, 2.0]]


def test_copy_to_refuses_a_complex_average_into_a_real_target() -> None:
    """A complex average written into a float tensor would drop its imaginary part."""
    ema = EMA({"a": torch.ones(2), "z": torch.full((2,), 1 + 2j)}, decay=0.5)
    target = {"a": torch.zeros(2), "z": torch.zeros(2)}
    with pytest.raises(TypeError, match="complex64 cannot be written into a tensor of dtype"):
        ema.copy_to(target)
    assert target["a"].tolist() == [0.0, 0.0] and target["z"].tolist() == [0.0, 0.0]


def test_zeros_init_without_correction_reads_the_shadow_as_it_is() -> None:
    """``init="zeros", correction="none"``: the average is the shadow, not shadow / weight."""
    cfg = ema_core.Config(schedule=0.5, init="zeros", correction="none")
    ema = EMA({"w": torch.full((2,), 4.0)}, config=cfg)
    ema.update()  # shadow 0.5 * 0 + 0.5 * 4 = 2 (the weight, 0.5, is not applied)
    assert ema.average["w"].tolist() == [2.0, 2.0]


def test_load_state_dict_keeps_the_float64_weight_exactly() -> None:
    """The bias-correction weight is stored and loaded as float64: a resumed EMA carries
    the very same weight (0.1 = 1 - 0.9 is not a float32 value)."""
    cfg = ema_core.Config(schedule=0.9, init="zeros")
    ema = EMA({"w": torch.ones(2)}, config=cfg)
    ema.update()
    weight = ema.state_dict()["weight"].item()
    assert weight == 1.0 - 0.9 and weight != float(torch.tensor(weight).float())
    resumed = EMA({"w": torch.ones(2)}, config=cfg)
    resumed.load_state_dict(ema.state_dict())
    assert resumed.state_dict()["weight"].item() == weight


def test_save_checks_each_shadow_of_a_torch_state_dict(tmp_path) -> None:
    """A state dict of an ``EMA`` holding a non-tensor shadow is refused before any write."""
    from ema_core.checkpoint import save

    state = EMA({"w": torch.ones(2)}, decay=0.5).state_dict()
    state["shadow"]["w"] = state["shadow"]["w"].numpy()
    with pytest.raises(TypeError, match=r"state_dict\['shadow'\]\['w'\] must be a tensor"):
        save(tmp_path / "ema.safetensors", state)
    assert list(tmp_path.iterdir()) == []


def test_a_strict_load_into_an_ema_refuses_a_file_saved_without_a_config(tmp_path) -> None:
    from ema_core.checkpoint import load, save

    path = save(tmp_path / "ema.safetensors", ema_core.init({"w": torch.full((2,), 7.0)}))
    ema = EMA({"w": torch.ones(2)}, decay=0.5)
    with pytest.raises(ValueError, match="saved without a config"):
        load(path, ema)
    assert ema.average["w"].tolist() == [1.0, 1.0]
    load(path, ema, strict=False)
    assert ema.average["w"].tolist() == [7.0, 7.0]
