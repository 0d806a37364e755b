"""Hostile review of the day's additions: ``Config.__new__``'s peer-keyword hints keep the
class's signature and its subclasses' own fields; accelerate's strict advice keeps the EMA in
later checkpoints; Keras names a same-name copy; ``ddp_ema``'s checks on the ranks that keep no
EMA raise what ``EMA`` raises."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import ema_core as ema
from ema_core import Config

# --- Config: the peer words are refused, nothing else changes ----------------------------------


def test_config_signature_names_the_fields() -> None:
    """help(), IDEs and argument parsers read ``inspect.signature(Config)``, which looks at
    ``__new__`` before ``__init__``: it must still list the fields, not ``*args, **kwargs``."""
    params = inspect.signature(Config).parameters
    assert list(params) == [f.name for f in dataclasses.fields(Config)]
    bound = inspect.signature(Config).bind(0.5, init="zeros").arguments
    assert bound == {"schedule": 0.5, "init": "zeros"}


@dataclasses.dataclass(frozen=True)
class _WithDecay(Config):
    """A user's subclass whose own field has a peer's name."""

    decay: float = 0.5  # type: ignore[assignment]  # shadows the method, as a user may


def test_config_subclass_field_named_like_a_peer_word() -> None:
    sub = _WithDecay(0.9, decay=0.7)
    assert sub.decay == 0.7 and dataclasses.replace(sub, decay=0.3).decay == 0.3
    assert list(inspect.signature(_WithDecay).parameters)[-1] == "decay"
    with pytest.raises(TypeError, match=r"Config has no argument decay \(got decay=0\.7\)"):
        Config(0.9, decay=0.7)
    with pytest.raises(TypeError, match=r"has no argument beta \(got beta=0\.5\)"):
        _WithDecay(beta=0.5)  # a peer word the subclass does not define


# --- accelerate: following the strict advice keeps the EMA in later checkpoints ----------------


@pytest.mark.usefixtures("fresh_accelerate")
def test_accelerate_strict_advice_registers_again(tmp_path: Path) -> None:
    accelerate = pytest.importorskip("accelerate")
    torch = importlib.import_module("torch")
    module = importlib.import_module("ema_core.integrations.accelerate")
    ema_torch = importlib.import_module("ema_core.torch")

    def prepared(decay: float) -> tuple[Any, Any]:
        accelerator = accelerate.Accelerator(cpu=True)
        torch.manual_seed(0)
        return accelerator, ema_torch.EMA(accelerator.prepare(torch.nn.Linear(3, 2)), decay=decay)

    accelerator, saved = prepared(0.9)
    module.register(accelerator, saved, name="fast")
    saved.update()
    accelerator.save_state(tmp_path / "a")
    accelerator, other = prepared(0.99)
    hooks = module.register(accelerator, other, name="fast")
    with pytest.raises(ValueError, match="strict=False") as caught:
        accelerator.load_state(tmp_path / "a")
    advice = str(caught.value)
    assert "register(accelerator, ema, name='fast') again" in advice
    assert "its keywords reach the models' load only" in advice
    hooks.remove()  # the advice, step by step
    accelerator.load_state(tmp_path / "a")
    module.register(accelerator, other, name="fast")
    ema.checkpoint.load(module.ema_path(tmp_path / "a", name="fast"), other, strict=False)
    accelerator.save_state(tmp_path / "b")
    assert module.ema_path(tmp_path / "b", name="fast").is_file() and other.step == 1


# --- Keras: a copy of the followed model is named as such --------------------------------------


def test_keras_fit_of_a_same_name_copy_says_copy() -> None:
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "jax")
    pytest.importorskip("keras")
    weights = importlib.import_module("ema_core.integrations._keras_weights")
    owner, copy = SimpleNamespace(name="sequential"), SimpleNamespace(name="sequential")
    with pytest.raises(ValueError, match=r"\('sequential' \(another object of the same name: a"):
        weights.check_owner(owner, copy)
    with pytest.raises(ValueError, match=r"another model \('other'\) than the one"):
        weights.check_owner(owner, SimpleNamespace(name="other"))
    weights.check_owner(owner, owner)


# --- ddp_ema: a rank that keeps no EMA refuses what EMA refuses, in EMA's words -----------------


def _outcome(call: Any) -> str:
    try:
        call()
    except (TypeError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return "ok"


def test_ddp_ema_checks_match_ema_on_bad_options() -> None:
    torch = pytest.importorskip("torch")
    dist = importlib.import_module("ema_core.torch._dist")
    ema_torch = importlib.import_module("ema_core.torch")

    class WithCount(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)
            self.register_buffer("count", torch.tensor(3))

    cases: list[tuple[Any, dict[str, Any]]] = [
        (torch.nn.Linear(2, 2), {"decay": 1.5}),
        (torch.nn.Linear(2, 2), {"device": 3}),
        (torch.nn.Linear(2, 2), {"device": "nonsense"}),
        (torch.nn.Linear(2, 2), {"dtype": "int8"}),
        (torch.nn.Linear(2, 2), {"include": "nothing*"}),
        (torch.nn.Linear(2, 2), {"decay": 0.9, "config": Config()}),
        (torch.nn.Linear(2, 2), {"bogus": 1}),
        (WithCount(), {"config": Config(non_float="error")}),
        ({"a": torch.ones(2), "b": 3}, {}),
        ({"x": torch.ones(2)}, {"buffers": "nope"}),
        ("not a module", {}),
    ]
    for module, kwargs in cases:
        built = _outcome(lambda m=module, k=kwargs: ema_torch.EMA(m, **k))
        checked = _outcome(lambda m=module, k=kwargs: dist._check_options(m, dict(k)))
        assert built != "ok" and checked == built, (kwargs, built, checked)
