"""Tests that the third mutation-testing audit (reading peers' EMA states with ``load_peer``,
``export``) found missing: each kills a small plausible bug that the rest of the suite let
through. Every refusal also writes nothing (``refused`` checks the step, weight and shadows)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ema_core import presets  # noqa: E402
from ema_core.checkpoint._peers import load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests._load_peer_helpers import module_state, refused, small_model, torch_ema_state  # noqa: E402
from tests.torch_models import TiedEmbedding  # noqa: E402

SWA = {"decay": 0.9}


def _swa() -> tuple[torch.nn.Module, EMA]:
    model = small_model()
    return model, EMA(model, config=presets.swa_utils(0.9))


def _swa_state(model: torch.nn.Module, **changes: Any) -> dict[str, Any]:
    return {**module_state(model), "n_averaged": torch.tensor(4), **changes}


def test_args_that_compare_to_several_values_disagree_with_the_state() -> None:
    """An ``args`` value whose ``==`` with the stored one is an array of several values (not
    one bool) is a disagreement, refused: not silently replaced by the stored value."""
    model = small_model()
    ema = EMA(model, config=presets.torch_ema(0.99))
    args = {"decay": np.array([0.99, 0.99])}
    refused(ema, ValueError, "disagree", torch_ema_state(model), peer="torch_ema", args=args)


def test_args_with_a_non_str_key_are_refused_as_args() -> None:
    """``args`` must have str keys: a dict with an int key is refused by name, before the
    preset is called with it."""
    model = small_model()
    ema = EMA(model, config=presets.torch_ema(0.99))
    state = torch_ema_state(model)
    refused(
        ema,
        TypeError,
        "args must be None or a dict of str keys",
        state,
        peer="torch_ema",
        args={1: 0.99},
    )


def test_meta_shadows_are_refused_by_name() -> None:
    """A peer state on the meta device (shapes, no values) is refused as such."""
    model = small_model()
    ema = EMA(model, config=presets.torch_ema(0.99))
    meta = [torch.empty(p.shape, device="meta") for p in model.parameters()]
    state = torch_ema_state(model, shadow_params=meta)
    refused(ema, ValueError, "is a meta tensor", state, peer="torch_ema")


def test_load_peer_inside_swap_is_refused_under_its_own_name() -> None:
    """Inside ``swap()`` the model holds the averages: load_peer refuses, naming itself."""
    model = small_model()
    ema = EMA(model, config=presets.torch_ema(0.99))
    with ema.swap(), pytest.raises(RuntimeError, match="load_peer"):
        load_peer(ema, torch_ema_state(model), peer="torch_ema")


def test_more_shadow_params_than_tracked_tensors_are_counted() -> None:
    """One shadow too many is refused with both counts (not left to ``zip``)."""
    model = small_model()
    extra = [p.detach() for p in model.parameters()] + [torch.zeros(1)]
    state = torch_ema_state(model, shadow_params=extra)
    ema = EMA(model, config=presets.torch_ema(0.99))
    refused(ema, ValueError, "5 shadow_params; this EMA tracks 4", state, peer="torch_ema")


def test_shadow_params_as_a_dict_are_refused_as_not_a_list() -> None:
    """``shadow_params`` is a list; a dict of them is refused as such."""
    model = small_model()
    shadows = {n: p.detach() for n, p in model.named_parameters()}
    state = torch_ema_state(model, shadow_params=shadows)
    ema = EMA(model, config=presets.torch_ema(0.99))
    refused(ema, TypeError, "must be a list of tensors", state, peer="torch_ema")


def test_initted_must_be_a_0d_bool_tensor() -> None:
    """ema-pytorch's ``initted`` is a 0-d bool tensor: a 1-element 1-d one is refused."""
    model = small_model()
    state = {**module_state(model, "ema_model."), "step": torch.tensor(3)}
    state["initted"] = torch.tensor([True])
    ema = EMA(model, config=presets.ema_pytorch())
    refused(ema, TypeError, "0-d bool tensor", state, peer="ema_pytorch", args={})


def test_a_bool_counter_is_refused() -> None:
    """A counter stored as a bool tensor is not a count (True is not step 1)."""
    model, ema = _swa()
    state = _swa_state(model, n_averaged=torch.tensor(True))
    refused(ema, TypeError, "0-d integer tensor", state, peer="swa_utils", args=SWA)


def test_online_model_entries_are_skipped_for_ema_pytorch_only() -> None:
    """``online_model.*`` is ema-pytorch's live model; in an AveragedModel state it is an entry
    the peer does not write, refused."""
    model, ema = _swa()
    state = _swa_state(model, **{"online_model.0.weight": torch.zeros(2, 3)})
    refused(
        ema,
        ValueError,
        r"'online_model\.0\.weight'\] is not an entry",
        state,
        peer="swa_utils",
        args=SWA,
    )


def test_two_entries_of_one_name_after_prefixes_are_refused() -> None:
    """``module.0.weight`` and ``module._orig_mod.0.weight`` both name ``0.weight``: refused,
    not one silently dropped."""
    model, ema = _swa()
    state = _swa_state(model, **{"module._orig_mod.0.weight": torch.zeros(2, 3)})
    refused(ema, ValueError, "two entries named '0.weight'", state, peer="swa_utils", args=SWA)


def test_tied_names_holding_the_same_nans_load() -> None:
    """Tied names are compared bit for bit, so the same NaN under both names is the same
    tensor (an element-wise ``==`` would call them different)."""
    ema = EMA(TiedEmbedding(), config=presets.timm(0.9))
    value = torch.tensor([[1.0, float("nan")], [2.0, 3.0], [4.0, 5.0]])
    state = {"emb.weight": value, "out.weight": value.clone()}
    load_peer(ema, state, peer="timm", args={"decay": 0.9}, step=2)
    assert torch.equal(ema.average["emb.weight"].isnan(), value.isnan())


def test_tied_names_of_another_dtype_with_the_same_bytes_differ() -> None:
    """Same bytes are not enough: a tied name holding int32 bits of the float32 values is not
    the same tensor, refused."""
    ema = EMA(TiedEmbedding(), config=presets.timm(0.9))
    value = torch.ones(3, 2)
    state = {"emb.weight": value, "out.weight": value.view(torch.int32).clone()}
    refused(ema, ValueError, "differ", state, peer="timm", args={"decay": 0.9}, step=2)


def test_an_ema_of_another_interval_does_not_continue_the_peer() -> None:
    """The interval is part of the average's rule (not a storage choice like the shadow dtype):
    an EMA built with the peer's preset but ``interval=2`` is refused."""
    model = small_model()
    config = dataclasses.replace(presets.torch_ema(0.99), interval=2)
    ema = EMA(model, config=config)
    refused(ema, ValueError, "interval", torch_ema_state(model), peer="torch_ema")
