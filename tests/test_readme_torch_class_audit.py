"""Audit of README "## torch models: the `EMA` class" and the NumPy part of "## NumPy and CuPy
backends": the promises there that no other test pinned. Each test quotes its claim."""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core

torch = pytest.importorskip("torch")

from ema_core import checkpoint  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def _net() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 2)
    )


def _bump(model: Any, by: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(by)


def _copies(ema: EMA) -> dict[str, Any]:
    return {n: t.detach().clone() for n, t in ema.average.items()}


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for n, value in a.items():
        assert value.dtype == b[n].dtype and torch.equal(value, b[n]), n


# ---- the README example ----


def _example_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "resumed = EMA(" in b and "averager.swap()" in b]
    return block


def test_the_readme_example_prints_step_20_copied_counter_20_and_resumes_bit_for_bit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # "torch.save(averager.state_dict(), buffer)  # shadows, step, config: resume bit for bit"
    # and its print: resumed.step, the copied integer BatchNorm counter, eval_loss > 0
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(_example_block(), "README.md[EMA class]", "exec"), namespace)
    out = capsys.readouterr().out.split()
    model, averager, resumed = namespace["model"], namespace["averager"], namespace["resumed"]
    counter = int(model[1].num_batches_tracked)  # 20 train-mode forwards
    assert out == [str(counter), str(counter), "True"] and counter == 20
    assert resumed.step == averager.step == 20
    _same(_copies(resumed), _copies(averager))
    # resumed bit for bit: the next update gives the same bits on both
    _bump(model, 0.25)
    averager.update(21)
    resumed.update(21)
    _same(_copies(resumed), _copies(averager))


# ---- Options ----


def test_a_config_without_buffers_averages_them_the_copy_default_does_not_apply() -> None:
    # "a `Config` carries its buffer policy, `Config.buffers`, whose default is "average":
    # with `config=` the "copy" default below does not apply"
    assert ema_core.Config().buffers == "average"
    assert EMA(_net(), decay=0.5).config.buffers == "copy"
    model = _net()
    ema = EMA(model, config=ema_core.Config(schedule=0.5))
    assert ema.config.buffers == "average"
    start = model[1].running_mean.clone()
    model.train()
    model(torch.randn(8, 3))
    ema.update()
    live = model[1].running_mean
    assert not torch.equal(live, start)
    torch.testing.assert_close(ema.average["1.running_mean"], start + 0.5 * (live - start))


def test_device_takes_a_torch_device_or_a_string_torch_parses() -> None:
    # "`device=` takes a `torch.device` or a string torch parses"
    for device in (torch.device("cpu"), "cpu", "cpu:0"):
        model = _net()
        ema = EMA(model, decay=0.5, device=device)
        _bump(model, 1.0)
        ema.update()
        want = model[0].weight - 0.5
        torch.testing.assert_close(ema.average["0.weight"], want, rtol=0, atol=1e-6)
        assert ema.average["0.weight"].device.type == "cpu"


# ---- copies and pickles ----


def test_deep_copied_ema_first_then_model_tracks_the_original_model() -> None:
    # "in the other order it tracks the original (the EMA cannot know that the model is
    # copied after it)"
    model = _net()
    ema = EMA(model, decay=0.5)
    ema2, model2 = copy.deepcopy((ema, model))
    assert model2 is not model
    _bump(model, 2.0)  # only the original moves
    ema2.update()
    w = model[0].weight.detach()
    torch.testing.assert_close(ema2.average["0.weight"], w - 1.0, rtol=0, atol=1e-6)
    copied = model2[0].weight.detach().clone()
    with ema2.swap():
        assert torch.equal(model[0].weight, ema2.average["0.weight"])
        assert torch.equal(model2[0].weight, copied)
    assert torch.equal(model[0].weight, w)
    assert ema.step == 0  # the original EMA is independent


def test_a_shallow_copy_is_an_independent_ema_of_the_users_model() -> None:
    # "`copy.deepcopy(ema)` (or `copy.copy`) gives an independent EMA of the same model: its
    # own shadows, step and weight, and its `swap()` writes into the user's model"
    model = _net()
    ema = EMA(model, config=ema_core.Config(schedule=0.5, init="zeros"))
    _bump(model, 1.0)
    ema.update()
    before, state = _copies(ema), ema.state_dict()
    step, weight = int(state["step"]), float(state["weight"])
    twin = copy.copy(ema)
    _same(_copies(twin), before)
    _bump(model, 3.0)
    twin.update()
    twin.update()
    assert twin.step == 3 and ema.step == step == 1
    assert float(twin.state_dict()["weight"]) != weight
    assert float(ema.state_dict()["weight"]) == weight
    _same(_copies(ema), before)
    with twin.swap():
        assert torch.equal(model[0].weight, twin.average["0.weight"])
    # its own shadows: writing the twin's state does not reach the original
    for t in twin.state_dict()["shadow"].values():
        assert all(t.data_ptr() != s.data_ptr() for s in ema.state_dict()["shadow"].values())


def test_pickle_of_an_ema_stores_the_model_with_it() -> None:
    # "`pickle` / `torch.save` of an EMA stores the model with it"
    model = _net()
    ema = EMA(model, decay=0.5)
    _bump(model, 1.0)
    ema.update()
    loaded = pickle.loads(pickle.dumps(ema))
    live = model[0].weight.detach().clone()
    with loaded.swap():  # writes into its own (unpickled) model, never the user's
        assert torch.equal(model[0].weight, live)
    _same(_copies(loaded), _copies(ema))
    buffer = io.BytesIO()
    torch.save(ema, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    _bump(model, 10.0)  # the user's model moves; the saved EMA's own model does not
    saved.update()
    loaded.update()  # each blends toward its own copy of the model, as it was when saved
    _same(_copies(saved), _copies(loaded))
    ema.update()
    assert not torch.equal(ema.average["0.weight"], saved.average["0.weight"])


# ---- following the module in the reads ----


def test_reads_follow_a_model_to_float64_before_any_update() -> None:
    # "`average`, `state_dict()`, `copy_to` and `checkpoint.export` follow such a change
    # before they read" (model.to(dtype): the shadow kept, converted by the dtype rule)
    model = _net()
    ema = EMA(model, decay=0.5)
    _bump(model, 1.0)
    ema.update()
    before = _copies(ema)
    model.to(torch.float64)
    average = ema.average
    assert average["0.weight"].dtype == torch.float64
    assert torch.equal(average["0.weight"], before["0.weight"].double())
    assert ema.state_dict()["shadow"]["0.weight"].dtype == torch.float64
    exported = checkpoint.export(ema, format="state_dict")
    assert exported["0.weight"].dtype == torch.float64
    other = _net().double()
    ema.copy_to(other)
    assert torch.equal(other[0].weight, before["0.weight"].double())


def test_a_view_over_the_same_memory_waits_for_the_next_update() -> None:
    # "a view over the same memory, `p.data = p.data.view(...)`, waits for the next update";
    # a reshaped tensor "raises ValueError before anything is written"
    model = _net()
    ema = EMA(model, decay=0.5)
    before = _copies(ema)
    model[0].weight.data = model[0].weight.data.view(3, 6)
    _same(_copies(ema), before)  # the reads keep the old shape, no error
    assert ema.state_dict()["shadow"]["0.weight"].shape == (6, 3)
    with pytest.raises(ValueError, match=r"'0\.weight'.*shape"):
        ema.update()
    _same(_copies(ema), before)
    assert ema.step == 0


def test_a_change_the_reads_cannot_follow_leaves_the_shadows_readable() -> None:
    # "one they cannot follow leaves the shadows readable and is raised by the next update"
    model = _net()
    ema = EMA(model, decay=0.5)
    _bump(model, 1.0)
    ema.update()
    before = _copies(ema)
    model[1].register_buffer("running_var", None)  # gone
    _same(_copies(ema), before)
    state = ema.state_dict()
    assert torch.equal(state["shadow"]["1.running_var"], before["1.running_var"])
    assert set(checkpoint.export(ema, format="state_dict")) == set(before)
    with pytest.raises(ValueError, match=r"'1\.running_var'"):
        ema.update()
    _same(_copies(ema), before)
    assert ema.step == 1


# ---- swap ----


def test_swap_writes_the_models_own_storage_and_a_bn_forward_and_step_inside_change_only_it() -> (
    None
):
    # "`swap()` copies the averages into the model's own tensors ... a write inside the block
    # (a train-mode BatchNorm forward, an optimizer step) changes only the model, never the
    # EMA"; "the live weights back on exit, even after an exception, bit for bit"
    model = _net()
    ema = EMA(model, decay=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _bump(model, 1.0)
    model.train()
    model(torch.randn(8, 3))
    ema.update()
    before = _copies(ema)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    pointers = {k: v.data_ptr() for k, v in model.state_dict().items()}
    with contextlib.suppress(KeyError), ema.swap():
        for k, v in model.state_dict().items():
            assert v.data_ptr() == pointers[k], k
            assert torch.equal(v, before[k].to(v.dtype)), k
        model(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
        assert not torch.equal(model[1].running_mean, before["1.running_mean"])
        raise KeyError("inside")
    _same(_copies(ema), before)
    for k, v in model.state_dict().items():
        assert v.data_ptr() == pointers[k] and torch.equal(v, live[k]), k


# ---- NumPy ----


@pytest.mark.parametrize("decay", [0.9, 0.3])
@pytest.mark.parametrize("pdtype", ["float32", "float16"])
def test_the_host_engine_gives_a_nan_where_shadow_and_params_are_both_nan(
    host_kernels: str, decay: float, pdtype: str
) -> None:
    # "where the shadow and the params are both NaN, the result is a NaN, but whose sign and
    # payload it carries is not fixed" (the README's "the engine keeps the shadow's NaN" does
    # not hold: see the audit report; only the NaN itself is asserted)
    n = 20_000
    rng = np.random.default_rng(0)
    s = rng.standard_normal(n).astype(np.float32)
    p = rng.standard_normal(n).astype(pdtype)
    at = np.array([0, 7, 4_096, n - 1])
    s.view(np.uint32)[at] = 0x7FC01234  # a positive quiet NaN with a payload
    bits = {"float32": (np.uint32, 0xFFC05678), "float16": (np.uint16, 0xFE05)}[pdtype]
    p.view(bits[0])[at] = bits[1]  # a negative NaN with another payload
    want = s.astype(np.float64) + (1 - decay) * (p.astype(np.float64) - s)
    out = ema_core.ema_update(s, p, 1, decay=decay)
    assert out is s
    assert np.isnan(s[at]).all(), host_kernels
    others = np.ones(n, bool)
    others[at] = False
    assert np.isfinite(s[others]).all()
    np.testing.assert_allclose(s[others], want[others], rtol=1e-6, atol=1e-6)
