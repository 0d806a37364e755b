"""Fixes of the torch hunt of 2026-12-05: models wrapped by torch's activation checkpointing."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
wrapper = pytest.importorskip("torch.distributed.algorithms._checkpoint.checkpoint_wrapper")

from ema_core.checkpoint import export  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

OLD = "0._checkpoint_wrapped_module."


def _model(wrapped: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    if wrapped:  # as torchtitan and FSDP recipes do
        wrapper.apply_activation_checkpointing(
            model, check_fn=lambda m: isinstance(m, torch.nn.Linear)
        )
    return model


def _step(model: torch.nn.Module, ema: EMA, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(value)
    ema.update()


def test_the_ema_of_a_checkpoint_wrapped_model_uses_the_models_state_dict_names() -> None:
    model = _model(wrapped=True)
    assert any(OLD in name for name, _ in model.named_parameters())  # the raw names have it
    ema = EMA(model, decay=0.5)
    _step(model, ema, 1.0)
    assert sorted(ema.names) == sorted(model.state_dict())  # before: 0._checkpoint_wrapped_...
    averages = export(ema, format="state_dict")
    target = _model(wrapped=True)
    target.load_state_dict(averages)  # raised: missing keys
    plain = _model(wrapped=False)
    plain.load_state_dict(averages)
    ema.copy_to(plain.state_dict())  # raised: '0._checkpoint_wrapped_module.weight' ... not there
    ema.copy_to(plain)
    for name, value in plain.state_dict().items():
        assert torch.equal(value, ema.average[name]), name
    again = EMA(plain, decay=0.5)  # the EMA of the bare model loads the wrapped one's state
    again.load_state_dict(ema.state_dict())
    for name, value in again.average.items():
        assert torch.equal(value, ema.average[name]), name


def test_a_state_saved_under_the_old_wrapped_names_still_loads() -> None:
    model = _model(wrapped=True)
    ema = EMA(model, decay=0.5)
    _step(model, ema, 1.0)
    state = ema.state_dict()
    old = {(OLD + k[2:] if k.startswith("0.") else k): v for k, v in state["shadow"].items()}
    assert OLD + "weight" in old
    for wrapped in (True, False):
        target = _model(wrapped)
        loaded = EMA(target, decay=0.5)
        loaded.load_state_dict({**state, "shadow": old})
        assert loaded.step == ema.step
        for name, value in loaded.average.items():
            assert torch.equal(value, ema.average[name]), name


def test_an_ema_of_a_whole_model_in_a_checkpoint_wrapper_is_built_and_swaps() -> None:
    # the wrapper's own named_parameters() drops its part, so the EMA walked "0.weight" from
    # the wrapper, which has no child "0" (AttributeError while the EMA was built)
    torch.manual_seed(0)
    model = wrapper.checkpoint_wrapper(
        torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    )
    ema = EMA(model, decay=0.5)
    assert sorted(ema.names) == sorted(model.state_dict())
    live = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, ema, 2.0)
    with ema.swap():
        for name, value in model.state_dict().items():
            assert torch.equal(value, ema.average[name]), name
    for name, value in model.state_dict().items():
        want = live[name] + 2.0 if name in dict(model.named_parameters()) else live[name]
        assert torch.equal(value, want), name
    assert torch.allclose(ema.average["0.weight"], live["0.weight"] + 1.0)


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.bn, self.head = torch.nn.Embedding(5, 3), torch.nn.BatchNorm1d(3), None
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.emb.weight  # tied


@pytest.mark.parametrize("outer", ["DataParallel(checkpoint)", "checkpoint(DataParallel)"])
def test_a_whole_model_checkpoint_wrapper_inside_or_around_a_data_parallel_one(outer) -> None:
    # state_dict() keys lack the checkpoint part the prefix "module._checkpoint_wrapped_module."
    # holds: tied aliases, filters and untracked names kept "module." (export added
    # module.bn.*, left out head.weight; include="head.*" found nothing)
    def wrapped(model: torch.nn.Module) -> torch.nn.Module:
        if outer == "DataParallel(checkpoint)":
            return torch.nn.DataParallel(wrapper.checkpoint_wrapper(model))
        return wrapper.checkpoint_wrapper(torch.nn.DataParallel(model))

    torch.manual_seed(0)
    model = _Tied()
    ema = EMA(wrapped(model), decay=0.5)
    _step(model, ema, 1.0)
    bare = _Tied()
    bare.load_state_dict(export(ema, format="state_dict"))  # strict: raised (missing, unexpected)
    for name, value in bare.state_dict().items():
        assert torch.equal(value, ema.average["emb.weight" if name == "head.weight" else name])
    assert list(EMA(wrapped(_Tied()), decay=0.5, include="head.*").names) == ["emb.weight"]
    assert list(EMA(_Tied(), decay=0.5, include="head.*").names) == ["emb.weight"]


def test_an_old_named_state_loads_into_an_ema_that_excludes_some_tensors() -> None:
    # strict=False: the rename gave up when one old name was of a tensor the EMA does not
    # track, and every old-named shadow was left out silently
    torch.manual_seed(0)

    def layered() -> torch.nn.Module:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)
        )
        wrapper.apply_activation_checkpointing(
            model, check_fn=lambda m: isinstance(m, torch.nn.Linear) and m.out_features == 3
        )
        return model

    model = layered()
    ema = EMA(model, decay=0.5)
    _step(model, ema, 1.0)
    state = ema.state_dict()
    old = {
        **state,
        "shadow": {
            (k[:2] + "_checkpoint_wrapped_module." + k[2:] if k[0] in "01" else k): v
            for k, v in state["shadow"].items()
        },
    }
    assert "1._checkpoint_wrapped_module.weight" in old["shadow"]
    target = EMA(layered(), decay=0.5, exclude="1.*")
    target.load_state_dict(old, strict=False)
    assert sorted(target.names) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for name in target.names:
        assert torch.equal(target.average[name], ema.average[name]), name


def test_a_diffusers_export_of_a_checkpoint_wrapped_unet_names_the_unets_class(tmp_path) -> None:
    # config.json said "CheckpointWrapper", which diffusers' AutoModel cannot load
    import json

    diffusers = pytest.importorskip("diffusers")
    from ema_core import presets

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    ema = EMA(wrapper.checkpoint_wrapper(unet), config=presets.diffusers())
    ema.update()
    export(ema, format="diffusers", path=tmp_path / "unet_ema", model_config=unet.config)
    config = json.loads((tmp_path / "unet_ema" / "config.json").read_text())
    assert config["_class_name"] == "UNet2DModel"
