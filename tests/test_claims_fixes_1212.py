"""README claims checks of 2026-12-05, what they found: in "Post-hoc EMA", the include=/exclude=
recipe for a model whose names hold ``/`` (the snapshots' file names escape it), and a module's
extra state kept by ``reconstruct(..., like=)`` (a non-container the same object, a container
rebuilt around its own contents); in "the EMA class", ``buffers="skip"`` leaving integer
buffers out too."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from ema_core.posthoc import list_snapshots, reconstruct  # noqa: E402
from ema_core.torch import EMABank  # noqa: E402


class _Slashed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.add_module("enc/dec", torch.nn.Linear(3, 3))
        self.head = torch.nn.Linear(3, 2)


def test_the_include_recipe_works_for_names_holding_a_slash(tmp_path):
    torch.manual_seed(0)
    model = _Slashed()
    bank = EMABank(
        model, sigma_rels=(0.05, 0.10), exclude=["head.*"], snapshot_every=1, snapshot_dir=tmp_path
    )
    for step in (1, 2):
        bank.update(step)
    names = set(list_snapshots(tmp_path)[0].names)
    assert names == {"enc~1dec.weight", "enc~1dec.bias"}
    like = {  # the README's recipe
        k: v
        for k, v in model.state_dict().items()
        if k.replace("~", "~0").replace("/", "~1") in names
    }
    weights = reconstruct(tmp_path, 0.07, like=like)
    assert sorted(weights) == ["enc/dec.bias", "enc/dec.weight"]
    result = _Slashed().load_state_dict(weights, strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"]


class _Extra(torch.nn.Module):
    def __init__(self, extra: object) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.extra = extra

    def get_extra_state(self) -> object:
        return self.extra

    def set_extra_state(self, state: object) -> None:
        self.extra = state


@pytest.mark.parametrize(
    "extra", [None, "text", 3.5, torch.ones(2), {"scale": 2.0}, [1.0, 2.0]], ids=repr
)
def test_extra_state_comes_back_as_the_readme_says(tmp_path, extra):
    model = _Extra(extra)
    bank = EMABank(model, sigma_rels=(0.05, 0.10), snapshot_every=1, snapshot_dir=tmp_path)
    bank.update(1)
    like = model.state_dict()
    weights = reconstruct(tmp_path, 0.07, like=like)
    got = weights["_extra_state"]
    if isinstance(extra, (dict, list)):  # rebuilt around its contents: equal, a new container
        assert got == extra and got is not like["_extra_state"]
    else:
        assert got is like["_extra_state"]
    _Extra(None).load_state_dict(weights)  # loads strictly


def test_buffers_skip_leaves_out_every_buffer_integer_ones_too():
    # README (the EMA class): "skip" leaves every buffer out; otherwise integer ones are copied
    from ema_core.torch import EMA

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    assert EMA(model, decay=0.9, buffers="skip").names == (
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
    )
    assert "1.num_batches_tracked" in EMA(model, decay=0.9, buffers="copy").names


@pytest.mark.parametrize("dtype", ["float64", "complex128", "float32"])
def test_the_textbook_form_fails_the_properties_in_every_float_dtype(dtype):
    # "The textbook s + (1-d)*(p - s) computed in dtype fails at decay 0": the kit drew float32
    # values for float64 leaves, whose differences are exact, and passed it in float64
    import numpy as np

    from ema_core import testing

    with pytest.raises(AssertionError):
        testing.assert_ema_properties(lambda s, p, d: s + (1 - d) * (p - s), np, dtype=dtype)

    def core_form(s, p, d):  # ema-core's: p - d (p - s) below decay 1/2
        return s + (1 - d) * (p - s) if d >= 0.5 else p - d * (p - s)

    testing.assert_ema_properties(core_form, np, dtype=dtype)
