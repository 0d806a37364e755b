"""Tests that the checkpoint-loader mutation audit (``load`` and ``check`` reading a file into
a torch ``EMA`` or an ``EMAState``: ``_load``, ``_load_ema``, ``_load_state``, ``_load_file``,
the reading side of ``_format`` and ``_arrays``, and ``_peers_read``) found missing: each kills
a small plausible bug that the rest of the suite let through. A refused load into an ``EMA``
also writes nothing (``_untouched`` checks its step, weight and shadows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
from ema_core import _safetensors
from ema_core.checkpoint import check, load, save

torch = pytest.importorskip("torch")

from ema_core import presets  # noqa: E402
from ema_core.checkpoint._peers import load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests._load_peer_helpers import module_state, refused, small_model, torch_ema_state  # noqa: E402
from tests.torch_models import TiedEmbedding  # noqa: E402

#: The metadata that makes a file an ema-core checkpoint (no config).
OURS = {"ema_core.format": "ema_core.checkpoint", "ema_core.format_version": "1"}


def _raw(path: Path, tensors: dict[str, tuple[str, np.ndarray]], **metadata: str) -> Path:
    """A checkpoint written by hand: ``name -> (safetensors code, array of its bytes)``."""
    specs = [(name, code, array.shape) for name, (code, array) in tensors.items()]
    with open(path, "wb") as f:
        _safetensors.write(f, specs, [a for _, a in tensors.values()], {**OURS, **metadata})
    return path


def _tensors(**changes: tuple[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]]:
    """A good file's tensors (step 3, weight 1, ``shadow/w`` two float32 ones), with changes."""
    return {
        "step": ("I64", np.asarray(3, np.int64)),
        "weight": ("F64", np.asarray(1.0)),
        "shadow/w": ("F32", np.ones(2, np.float32)),
        **changes,
    }


def _like() -> ema.EMAState:
    return ema.init({"w": np.zeros(2, np.float32)})


def _ema() -> EMA:
    return EMA({"w": torch.full((2,), 5.0)}, decay=0.5)


def _untouched(target: EMA) -> None:
    """``target`` is as ``_ema()`` built it: step 0, weight 1, shadow 5."""
    state = target.state_dict()
    assert int(state["step"]) == 0 and float(state["weight"]) == 1.0
    assert state["shadow"]["w"].tolist() == [5.0, 5.0]


def test_a_file_weight_the_ema_cannot_hold_is_a_type_error_naming_the_file(
    tmp_path: Path,
) -> None:
    """A float16 weight (an ``EMAState`` may hold one; an ``EMA`` keeps float32 or float64) is
    refused by the EMA's checks as the ``TypeError`` they raise, with the file named in front;
    nothing is written, by ``load`` or by ``check``."""
    state = ema.EMAState(np.asarray(3), {"w": np.ones(2, np.float32)}, np.asarray(1, np.float16))
    path = save(tmp_path / "half.safetensors", state)
    target = _ema()
    message = r"half\.safetensors: state_dict\['weight'\] must be a 0-d float32 or float64"
    for read in (load, check):
        with pytest.raises(TypeError, match=message):
            read(path, target, strict=False)
    _untouched(target)


def test_a_strict_load_refuses_a_file_with_a_shadow_like_lacks(tmp_path: Path) -> None:
    """A file holding a shadow that ``like`` lacks (and lacking none of ``like``'s) is refused
    by a strict load, naming that shadow; ``strict=False`` loads the shadow both have."""
    both = {"w": np.full(2, 7.0, np.float32), "v": np.ones(3)}
    path = save(tmp_path / "more.safetensors", ema.init(both))
    with pytest.raises(
        ValueError, match=r"more\.safetensors does not match like: like has \[\] .*\['shadow/v'\]"
    ):
        load(path, _like())
    assert load(path, _like(), strict=False).shadow["w"].tolist() == [7.0, 7.0]


def test_the_largest_step_of_likes_integer_dtype_loads(tmp_path: Path) -> None:
    """A step equal to the largest value of ``like.step``'s dtype fits and loads exactly; one
    more does not fit and is refused."""
    top = int(np.iinfo(np.int32).max)
    like = ema.EMAState(np.asarray(0, np.int32), {"w": np.zeros(2, np.float32)}, 1.0)
    for step in (top, top + 1):
        path = _raw(tmp_path / f"{step}", _tensors(step=("I64", np.asarray(step, np.int64))))
        if step > top:
            with pytest.raises(ValueError, match=rf"step {step} does not fit like\.step's dtype"):
                load(path, like)
            continue
        back = load(path, like)
        assert back.step.dtype == np.int32 and int(back.step) == top


def test_a_like_step_of_one_element_but_one_dimension_is_refused(tmp_path: Path) -> None:
    """``like.step`` must be an int or a 0-d integer array: a 1-d array of one element is
    refused with its type and dtype, not loaded as a 0-d step."""
    path = _raw(tmp_path / "e", _tensors())
    like = ema.EMAState(np.zeros(1, np.int64), {"w": np.zeros(2, np.float32)}, 1.0)
    with pytest.raises(
        TypeError, match=r"like\.step must be an int or a 0-d integer array, got ndarray of dtype"
    ):
        load(path, like)


def test_a_step_of_one_element_but_one_dimension_is_refused(tmp_path: Path) -> None:
    """The file's step must be a 0-d tensor: a 1-d one of one element is refused with its
    shape, not read as a step."""
    path = _raw(tmp_path / "e", _tensors(step=("I64", np.asarray([3], np.int64))))
    with pytest.raises(
        ValueError, match=r"e: 'step' must be a 0-d .*I64 tensor, got shape \[1\] dtype I64"
    ):
        load(path, _like())


def test_a_nan_weight_in_the_file_is_refused(tmp_path: Path) -> None:
    """A NaN bias-correction weight is out of [0, 1]: refused naming the file, not loaded
    into an ``EMAState`` (whose load has no other check of it)."""
    path = _raw(tmp_path / "e", _tensors(weight=("F64", np.asarray(np.nan))))
    with pytest.raises(ValueError, match=r"e: 'weight' \(bias correction\) must be in \[0, 1\]"):
        check(path, _like())


def test_the_largest_int64_step_loads(tmp_path: Path) -> None:
    """Step 2**63 - 1 is the largest step every framework holds: it loads exactly (the
    refusal is for larger ones)."""
    top = 2**63 - 1
    path = _raw(tmp_path / "e", _tensors(step=("U64", np.asarray(top, np.uint64))))
    like = ema.EMAState(np.asarray(0, np.int64), {"w": np.zeros(2, np.float32)}, 1.0)
    assert int(load(path, like).step) == top


def test_a_bfloat16_weight_loads_as_its_value(tmp_path: Path) -> None:
    """A bfloat16 weight is read as bfloat16 (its bits are not the float's value): 0.5 loads
    as 0.5 into a float ``like.weight``."""
    bits = _safetensors.float32_to_bf16(np.asarray(0.5, np.float32))
    path = _raw(tmp_path / "e", _tensors(weight=("BF16", bits)))
    assert load(path, _like()).weight == 0.5


@pytest.mark.parametrize("name", ["shadows", "shadowing/w"])
def test_a_tensor_whose_name_only_starts_with_shadow_is_refused(tmp_path: Path, name: str) -> None:
    """Shadow names are ``shadow`` or ``shadow/...``: a tensor named ``shadows`` (or under
    ``shadowing/``) is not a shadow, and is refused by name."""
    path = _raw(tmp_path / "e", _tensors(**{name: ("F32", np.ones(1, np.float32))}))
    with pytest.raises(ValueError, match=rf"e holds a tensor '{name}': not a shadow, step or"):
        load(path, _like(), strict=False)


def test_tied_names_of_another_shape_with_the_same_values_differ() -> None:
    """A tied name must hold the same tensor: the same values in another shape ((2, 3) for a
    (3, 2) weight) are refused, not accepted for their equal bytes."""
    ema_ = EMA(TiedEmbedding(), config=presets.timm(0.9))
    value = torch.arange(6.0).reshape(3, 2)
    state = {"emb.weight": value, "out.weight": value.reshape(2, 3).clone()}
    refused(ema_, ValueError, "differ", state, peer="timm", args={"decay": 0.9}, step=2)


def test_shadow_params_as_a_tuple_load() -> None:
    """``shadow_params`` may be a tuple (a state rebuilt by hand, or by a tool that stores
    sequences as tuples): it loads as the list would."""
    model = small_model()
    state = torch_ema_state(model)
    state["shadow_params"] = tuple(state["shadow_params"])
    ema_ = EMA(model, config=presets.torch_ema(0.99))
    load_peer(ema_, state, peer="torch_ema")
    assert ema_.step == 7
    assert torch.equal(ema_.average["0.weight"], state["shadow_params"][0])


def test_a_counter_of_one_element_but_one_dimension_is_refused() -> None:
    """A counter is a 0-d integer tensor: ``tensor([4])`` is refused with its shape, not read
    as step 4."""
    model = small_model()
    ema_ = EMA(model, config=presets.swa_utils(0.9))
    state = {**module_state(model), "n_averaged": torch.tensor([4])}
    refused(
        ema_,
        TypeError,
        r"state_dict\['n_averaged'\] must be a 0-d integer tensor, got shape \(1,\)",
        state,
        peer="swa_utils",
        args={"decay": 0.9},
    )


def test_an_ema_pytorch_state_before_its_first_update_loads() -> None:
    """ema-pytorch at step 0 has ``initted`` False (it copies the model on its first update):
    that state is consistent and loads, leaving the EMA at step 0 with the stored shadows."""
    model = small_model()
    state = {**module_state(model, "ema_model."), "step": torch.tensor(0)}
    state["initted"] = torch.tensor(False)
    ema_ = EMA(model, config=presets.ema_pytorch())
    load_peer(ema_, state, peer="ema_pytorch", args={})
    assert ema_.step == 0
    assert torch.equal(ema_.average["0.weight"], state["ema_model.0.weight"])
