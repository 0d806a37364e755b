"""torch promises a hunt (1209, on 2026-12-05) found broken, each test failing before its fix: an
``EMA`` / ``EMABank`` of a model holding a TorchScript module with children (scripted, traced,
or one scripted block inside an ordinary model) raised while being built; the stateless
``ema_update`` traced by ``torch.compile`` made dynamo warn 22 times per call (an error under
``-W error``) and skipped the check of shadows sharing memory (a tied pair's update was lost).
Both now run as the ``EMA`` class's ``update`` does under compile: eagerly, a graph break."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import ema_core as ema

torch = pytest.importorskip("torch")
nn = torch.nn

from ema_core.torch import EMA, EMABank  # noqa: E402

JIT_DEPRECATED = r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
SCRIPT_METHOD = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def _block() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "script": lambda: torch.jit.script(_block()),
    "trace": lambda: torch.jit.trace(_block(), torch.ones(1, 3)),
    "inner script": lambda: nn.Sequential(torch.jit.script(_block()), nn.Linear(3, 2)),
}


def _move(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_an_ema_of_a_torchscript_module_with_children(kind: str) -> None:
    model = MODELS[kind]()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    averager = EMA(model, decay=0.5)
    assert averager.names == tuple(before)
    _move(model)
    averager.update()
    live = {n: p.detach().clone() for n, p in model.named_parameters()}
    want = ema.ema_update(before, live, 1, decay=0.5, copy=True)
    for name, value in averager.average.items():
        assert torch.equal(value, want[name]), name
    with averager.swap():
        for name, p in model.named_parameters():
            assert torch.equal(p, want[name]), name
    for name, p in model.named_parameters():
        assert torch.equal(p, live[name]), name
    bank = EMABank(model, sigma_rels=(0.05, 0.1))
    bank.update()
    assert [e.step for e in bank] == [1, 1]


@pytest.mark.filterwarnings(SCRIPT_METHOD)
def test_ema_update_under_torch_compile_warns_nothing_and_matches_eager() -> None:
    torch.manual_seed(0)
    shadow = {"w": torch.randn(5), "b": torch.randn(3, dtype=torch.bfloat16)}
    params = {"w": torch.randn(5), "b": torch.randn(3, dtype=torch.bfloat16)}
    want = ema.ema_update({k: v.clone() for k, v in shadow.items()}, params, 3, decay=0.9)

    @torch.compile(backend="eager")
    def step(s: dict[str, torch.Tensor], p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return ema.ema_update(s, p, 3, decay=0.9)

    got = step(shadow, params)  # pytest turns any warning into an error
    for name in want:
        assert torch.equal(got[name], want[name]), name
        assert torch.equal(shadow[name], want[name]), name  # updated in place


@pytest.mark.filterwarnings(SCRIPT_METHOD)
def test_ema_update_under_torch_compile_refuses_shadows_that_share_memory() -> None:
    tied = torch.zeros(4)
    shadow = {"emb.weight": tied, "head.weight": tied}
    params = {"emb.weight": torch.ones(4), "head.weight": torch.ones(4)}

    @torch.compile(backend="eager")
    def step() -> None:
        ema.ema_update(shadow, params, 1, decay=0.5)

    with pytest.raises(ValueError, match=r"shadow\['emb.weight'\] and shadow\['head.weight'\]"):
        step()
    assert torch.equal(tied, torch.zeros(4))
