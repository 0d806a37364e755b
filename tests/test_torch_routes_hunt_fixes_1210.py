"""Fixes of the torch functional-path hunt of 2026-12-05: the host engine's scratch made inside
``inference_mode``, and a negative-bit shadow copied from another float dtype."""

from __future__ import annotations

import textwrap

import pytest

torch = pytest.importorskip("torch")

import ema_core as ema  # noqa: E402
from tests.two_cpu_devices import run_script  # noqa: E402

INFERENCE = textwrap.dedent(
    """
    import torch, ema_core as ema
    from ema_core.torch import EMA

    n = 1 << 18  # a 512 x 512 bf16 weight: the host engine's torch blocks and their scratch
    shadow = {"w": torch.zeros(n), "b": torch.zeros(4), "n": torch.tensor(0)}
    params = {"w": torch.ones(n, dtype=torch.bfloat16), "b": torch.ones(4), "n": torch.tensor(7)}
    with torch.inference_mode():  # the first update of the thread, inside an eval block
        ema.ema_update(shadow, params, 1, decay=0.5)
    ema.ema_update(shadow, params, 2, decay=0.5)  # raised: the scratch was an inference tensor
    assert shadow["w"][:3].tolist() == [0.75] * 3 and shadow["b"].tolist() == [0.75] * 4
    model = torch.nn.Linear(512, 512).bfloat16()
    averaged = EMA(model, decay=0.5)
    with torch.inference_mode():
        averaged.update()
    averaged.update()
    assert averaged.step == 2
    print("INFERENCE-SCRATCH-OK")
    """
)


def test_an_update_inside_inference_mode_leaves_the_scratch_usable_outside() -> None:
    # EMA_CORE_NUMBA=0: the torch blocks with their scratch (numba off or missing)
    run_script(INFERENCE, "INFERENCE-SCRATCH-OK", {"EMA_CORE_NUMBA": "0"})


@pytest.mark.parametrize(
    ("shadow_dtype", "params_dtype"),
    [
        (torch.float32, torch.float16),
        (torch.float16, torch.float32),
        (torch.float32, torch.bfloat16),
    ],
)
def test_a_negative_bit_shadow_copies_the_params_with_their_sign(shadow_dtype, params_dtype):
    # decay 0 copies: torch 2.13's copy_ from float16 into a float32 neg view gave -1 for 1
    base = torch.zeros(4, dtype=shadow_dtype)
    shadow = torch._neg_view(base)
    params = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=params_dtype)
    ema.ema_update({"w": shadow}, {"w": params}, 1, decay=0.0)
    assert shadow.is_neg()
    assert shadow.tolist() == params.to(shadow_dtype).tolist()
    assert base.tolist() == (-params.to(shadow_dtype)).tolist()  # written through the view
