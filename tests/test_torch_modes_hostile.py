"""The torch ``EMA`` against torch's own modes: inference mode, sparse and quantized tensors."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import ema_core  # noqa: E402
from ema_core.torch import EMA  # noqa: E402


def test_an_ema_built_inside_inference_mode_updates_outside_it() -> None:
    model = torch.nn.Linear(3, 2)
    torch.nn.init.zeros_(model.weight.data)
    with torch.inference_mode():
        ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update()  # was: RuntimeError, in-place update to an inference tensor
    assert not any(a.is_inference() for a in ema.average.values())
    assert torch.equal(ema.average["weight"], torch.full((2, 3), 2.0))
    with torch.inference_mode():
        ema.update()  # and inside it again
    assert torch.equal(ema.average["weight"], torch.full((2, 3), 3.0))
    assert ema.step == 2


@pytest.mark.parametrize("outer_inference", [False, True])
@pytest.mark.parametrize("copy", [True, False])
def test_swap_of_a_module_built_in_inference_mode_restores_it(
    copy: bool, outer_inference: bool
) -> None:
    with torch.inference_mode():
        model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
        for t in model.parameters():
            t.fill_(1.0)
    ema = EMA(model, decay=0.5, buffers="average")
    with torch.inference_mode():
        for t in model.parameters():
            t.fill_(5.0)
        model[1].running_mean.fill_(5.0)
    ema.update()  # averages 3.0 (parameters), running_mean 2.5
    live = {n: t.clone() for n, t in model.state_dict().items()}
    pointers = {n: t.data_ptr() for n, t in model.state_dict().items()}
    # was: RuntimeError, and the model left holding the shadows
    with torch.inference_mode(outer_inference), ema.swap(copy=copy):
        assert torch.equal(model[0].weight, torch.full((2, 3), 3.0))
        assert torch.equal(model[1].running_mean, torch.full((2,), 2.5))
    for name, value in model.state_dict().items():
        assert torch.equal(value, live[name]), name
        assert value.data_ptr() == pointers[name], name
    shadows = {a.data_ptr() for a in ema.average.values()}
    assert not shadows & {t.data_ptr() for t in model.state_dict().values()}


def _quantized() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates its quantized tensors
        return torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: torch.eye(3).to_sparse(), "torch.sparse_coo"),
        (_quantized, "torch.qint8"),
    ],
)
def test_sparse_and_quantized_tensors_are_refused_by_name(make, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match=rf"\['odd'\].*{words}.*only dense"):
        EMA({"ok": torch.ones(2), "odd": make()}, decay=0.5)


def test_a_parameter_replaced_by_a_sparse_one_is_refused_before_any_write() -> None:
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    before = {n: a.clone() for n, a in ema.average.items()}
    with torch.no_grad():
        model.bias.fill_(7.0)
    model.weight = torch.nn.Parameter(torch.eye(2, 3).to_sparse())
    with pytest.raises(TypeError, match=r"\['weight'\].*sparse_coo.*only dense"):
        ema.update()
    assert ema.step == 0
    for name, value in ema.average.items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("copy", [None, True, False])
@pytest.mark.parametrize("transform", ["vmap", "grad"])
def test_inside_a_torch_func_transform_is_a_type_error_and_writes_nothing(
    transform: str, copy: bool | None
) -> None:
    """Was torch's raw NotImplementedError ("Cannot access storage of BatchedTensorImpl")."""
    shadow = torch.zeros(3)

    def step(p: torch.Tensor) -> torch.Tensor:
        return ema_core.ema_update(shadow, p, 1, decay=0.5, copy=copy).sum()

    run = torch.func.vmap(step) if transform == "vmap" else torch.func.grad(step)
    with pytest.raises(TypeError, match=r"inside a torch\.func transform .*outside the transform"):
        run(torch.ones(4, 3) if transform == "vmap" else torch.ones(3))
    assert torch.equal(shadow, torch.zeros(3))


@pytest.mark.parametrize("copy", [None, True, False])
@pytest.mark.parametrize("transform", ["vmap", "grad"])
def test_the_same_transform_tensors_twice_in_a_row_are_still_a_type_error(
    transform: str, copy: bool | None
) -> None:
    """The stateless cache records the layout of leaves seen twice in a row (by identity: a
    freed tensor's id can come back in the next call, as it did once in ``make test``); a
    transform's tensors have no storage to record, so the second call too is the TypeError,
    not torch's "Cannot access data pointer" RuntimeError from the cache."""
    shadow = torch.zeros(3)

    def step(p: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            with pytest.raises(TypeError, match=r"inside a torch\.func transform"):
                ema_core.ema_update(shadow, p, 1, decay=0.5, copy=copy)
        return p.sum()

    run = torch.func.vmap(step) if transform == "vmap" else torch.func.grad(step)
    run(torch.ones(4, 3) if transform == "vmap" else torch.ones(3))
    assert torch.equal(shadow, torch.zeros(3))
