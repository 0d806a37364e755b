"""Checkpoint promises a hostile-user hunt of 2026-12-05 found broken, each pinned: tied
weights under module names holding ``/`` or ``~`` (export and ``load_peer`` looked them up
escaped), a float8 peer shadow (torch's raw promotion error), the torch_ema count hint, and an
mmengine Runner checkpoint read as the README says."""

from __future__ import annotations

import pytest

from ema_core import presets
from ema_core.checkpoint import export, load_peer

torch = pytest.importorskip("torch")
from ema_core.torch import EMA  # noqa: E402


def _tied(name: str) -> torch.nn.Module:
    model = torch.nn.ModuleDict(
        {f"{name}enc": torch.nn.Embedding(4, 2), f"{name}dec": torch.nn.Linear(2, 4, bias=False)}
    )
    model[f"{name}dec"].weight = model[f"{name}enc"].weight
    return model


@pytest.mark.parametrize("name", ["text/", "emb~v2", "plain_"])
def test_export_and_load_peer_of_tied_weights_under_any_module_name(name: str) -> None:
    """The tied names came back JSON-pointer escaped (``text~1enc.weight``): ``KeyError``."""
    model = _tied(name)
    average = EMA(model, config=presets.timm(decay=0.9))
    with torch.no_grad():
        model[f"{name}enc"].weight.add_(1.0)
    average.update()
    out = export(average, format="state_dict")
    assert sorted(out) == sorted(model.state_dict())
    assert torch.equal(out[f"{name}dec.weight"], out[f"{name}enc.weight"])
    model.load_state_dict(out)  # strict
    state = {k: v.clone() for k, v in model.state_dict().items()}
    target = EMA(model, config=presets.timm(decay=0.9))
    load_peer(target, state, peer="timm", args={"decay": 0.9}, step=3)
    assert torch.equal(target.average[f"{name}enc.weight"], state[f"{name}enc.weight"])
    assert target.step == 3


def test_a_float8_peer_shadow_is_a_value_error_naming_it() -> None:
    """``torch.promote_types`` has no float8: a raw ``RuntimeError`` before; nothing written."""
    model = torch.nn.Linear(3, 2)
    average = EMA(model, config=presets.torch_ema(0.99))
    before = {n: v.clone() for n, v in average.average.items()}
    shadows = [torch.zeros(2, 3).to(torch.float8_e4m3fn), torch.zeros(2)]
    state = {"decay": 0.99, "num_updates": 3, "collected_params": None, "shadow_params": shadows}
    with pytest.raises(ValueError, match=r"'weight'.* has dtype torch.float8_e4m3fn"):
        load_peer(average, state, peer="torch_ema")
    assert all(torch.equal(before[n], v) for n, v in average.average.items())


def test_the_torch_ema_count_hint_names_both_ways() -> None:
    """torch_ema's own docs build it on the trainable params: the hint said only the
    opposite (frozen ones included)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    average = EMA(model, config=presets.torch_ema(0.99))
    shadows = [p.detach().clone() for p in model[1].parameters()]  # model[0] was frozen
    state = {"decay": 0.99, "num_updates": 3, "collected_params": None, "shadow_params": shadows}
    with pytest.raises(ValueError, match=r"has 2 shadow_params; .* exclude= the frozen ones"):
        load_peer(average, state, peer="torch_ema")


def test_an_mmengine_runner_checkpoint_loads_as_the_readme_says() -> None:
    """``EMAHook`` swaps the live weights and the averages before saving: ``ema_state_dict``
    then holds the live weights, ``state_dict`` the averages (README, ``load_peer`` table)."""
    pytest.importorskip("mmengine")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mmengine.hooks import EMAHook
        from mmengine.model.averaged_model import ExponentialMovingAverage

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    peer = ExponentialMovingAverage(model, momentum=0.1)
    for _ in range(5):
        with torch.no_grad():
            model.weight.add_(1.0)
        peer.update_parameters(model)
    hook = EMAHook(momentum=0.1)
    hook.ema_model = peer
    ckpt = {"state_dict": {k: v.clone() for k, v in model.state_dict().items()}}
    hook.before_save_checkpoint(None, ckpt)
    state = {
        "steps": ckpt["ema_state_dict"]["steps"],
        **{"module." + k: v for k, v in ckpt["state_dict"].items()},
    }
    average = EMA(model, config=presets.mmedit(0.1))
    load_peer(average, state, peer="mmengine", args={"momentum": 0.1})
    assert torch.equal(average.average["weight"], peer.module.weight.detach())
    assert not torch.equal(ckpt["ema_state_dict"]["module.weight"], peer.module.weight)
