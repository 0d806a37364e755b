"""Tests that the fourth mutation audit (ema_core.integrations.accelerate) showed missing: each
pins one behaviour of ``register`` / ``ema_path`` that a hand-made mutant changed without any
test failing. One process, on the CPU, no launcher.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")

from ema_core.integrations.accelerate import ema_path, register  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests.accelerate_helpers import setup as _setup  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # conftest: a clean accelerate


def test_a_stale_remove_does_not_free_a_name_taken_since() -> None:
    """The first registration's ``remove()`` called again after another EMA took its name:
    the name stays the second EMA's, so a third EMA under it is still refused."""
    accelerator, model = _setup()
    first = register(accelerator, EMA(model, decay=0.5), name="ema")
    first.remove()
    register(accelerator, EMA(model, decay=0.9), name="ema")
    first.remove()  # stale: its hooks are gone already
    with pytest.raises(ValueError, match=r"already registered .*another EMA"):
        register(accelerator, EMA(model, decay=0.7), name="ema")


def test_a_name_held_by_an_ema_that_no_longer_exists_is_free() -> None:
    """Hooks uninstalled through accelerate's own handles (not ``Hooks.remove()``) and the EMA
    dropped: the name it held is free for another EMA."""
    accelerator, model = _setup()
    hooks = register(accelerator, EMA(model, decay=0.5), name="ema")
    hooks.save.remove()
    hooks.load.remove()
    del hooks
    gc.collect()
    register(accelerator, EMA(model, decay=0.9), name="ema")
    assert len(accelerator._save_model_state_pre_hook) == 1


def test_a_refusal_that_offers_no_strict_false_gets_no_advice_about_it(tmp_path: Path) -> None:
    """A file refused for its shapes (a model of another size) is refused with ``check``'s own
    message: the advice on passing ``strict=False`` through ``load_state`` is added only to
    refusals that offer ``strict=False``."""
    accelerator, model = _setup()
    saved = EMA(model, decay=0.5)
    register(accelerator, saved)
    saved.update()
    accelerator.save_state(str(tmp_path))
    accelerate.state.AcceleratorState._reset_state(True)
    accelerate.state.GradientState._reset_state()
    accelerator = accelerate.Accelerator(cpu=True)
    register(accelerator, EMA(accelerator.prepare(torch.nn.Linear(3, 4)), decay=0.5))
    with pytest.raises(ValueError, match="load_state loaded no EMA") as refused:
        accelerator.load_state(str(tmp_path))
    assert "strict=False" not in str(refused.value)


@pytest.mark.parametrize("name", ["../ema", "model", "MODEL_2", ""])
def test_ema_path_refuses_a_name_register_refuses(name: str) -> None:
    """``ema_path`` checks ``name`` as ``register`` does: it never points outside the folder
    or at accelerate's own model files."""
    with pytest.raises(ValueError, match=f"got {name!r}"):
        ema_path("ckpt", name=name)


def test_an_accelerator_whose_hook_methods_are_not_callable_is_refused() -> None:
    """An object that has the two pre-hook attributes but cannot call them is not an
    accelerator: ``register`` refuses it by name before installing anything."""
    _, model = _setup()

    class NotAnAccelerator:
        register_save_state_pre_hook = "save"
        register_load_state_pre_hook = "load"

    with pytest.raises(TypeError, match=r"accelerator must be an accelerate\.Accelerator"):
        register(NotAnAccelerator(), EMA(model, decay=0.5))


def test_a_name_in_capitals_holds_its_lower_case_spelling_too() -> None:
    """``"EMA"`` registered first keeps ``"ema"`` (one file on macOS and Windows) from another
    EMA, as the other way round; its ``remove()`` frees both spellings."""
    accelerator, model = _setup()
    hooks = register(accelerator, EMA(model, decay=0.5), name="EMA")
    with pytest.raises(ValueError, match=r"name 'ema' is already registered .*as 'EMA'"):
        register(accelerator, EMA(model, decay=0.9), name="ema")
    hooks.remove()
    register(accelerator, EMA(model, decay=0.9), name="ema")
