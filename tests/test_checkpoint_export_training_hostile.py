"""``export`` and ``load_peer`` the way training scripts use them, against the real peers.

Models trained in bf16 with float32 shadows, ``EMA(..., dtype=...)``, channels_last weights, tied
weights, non-persistent buffers, integer buffers under each ``non_float`` mode, models wrapped by
``torch.compile`` (``_orig_mod.``) or ``DataParallel`` (``module.``), an export taken mid-run
while training goes on. Each export is loaded by the peer that reads it (timm's own loader,
diffusers' ``EMAModel.from_pretrained``, ema-pytorch, mmengine), which then continues within the
preset's parity bound of ema-core; each peer's state goes into ema-core bit for bit.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ema_core import Config, presets  # noqa: E402
from ema_core.checkpoint import export, load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests.peers import load_timm_model_ema, require, ulps  # noqa: E402
from tests.test_presets_peers import bound_for  # noqa: E402


class Tied(torch.nn.Module):
    """A language-model-like module: an embedding tied to the output layer, a BatchNorm and a
    non-persistent rotary-like buffer."""

    def __init__(self, persistent: bool = False) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(6, 4)
        self.out = torch.nn.Linear(4, 6, bias=False)
        self.out.weight = self.emb.weight
        self.bn = torch.nn.BatchNorm1d(4)
        self.register_buffer("inv_freq", torch.arange(4.0), persistent=persistent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.bn(self.emb(x)))  # type: ignore[no-any-return]


class OptimizedModule(torch.nn.Module):
    """What ``torch.compile(model)`` is to names and to ``export``: a wrapper holding the model
    as ``_orig_mod`` (the real one costs seconds of dynamo import; its
    ``_orig_mod`` layout is all that ``export`` and the EMA's names see)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self._orig_mod = model


def _conv_bn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 2),
    )


def _steps(model: torch.nn.Module, seed: int = 1) -> Iterator[int]:
    """Endless training steps: noise added to each parameter (in its own dtype) and one
    train-mode forward, so BatchNorm statistics and its counter move; yields t = 1, 2, ..."""
    gen = torch.Generator().manual_seed(seed)
    t = 0
    while True:
        t += 1
        with torch.no_grad():
            for p in model.parameters():
                p.add_((0.1 * torch.randn(p.shape, generator=gen)).to(p.dtype))
            model.train()
            first = next(model.parameters())
            model(torch.randn(4, 3, 4, 4, generator=gen).to(first.dtype))
        yield t


def _advance(steps: Iterator[int], n: int, *updates: Callable[[int], None]) -> int:
    t = 0
    for _ in range(n):
        t = next(steps)
        for update in updates:
            update(t)
    return t


def _timm_helpers() -> Any:
    """timm's ``models/_helpers.py`` by file path (``import timm`` needs torchvision)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        pytest.skip("timm is not installed")
    path = Path(spec.origin).parent / "models" / "_helpers.py"
    file_spec = importlib.util.spec_from_file_location("_timm_helpers_hostile", path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def _within(bound: float, theirs: dict[str, torch.Tensor], ema: EMA, what: str) -> None:
    """Each of the peer's tensors (by the model's names) within ``bound`` float32 ulps of
    ema-core's average; integers equal."""
    averages = export(ema, format="state_dict")  # tied weights under each of the model's names
    assert sorted(theirs) == sorted(averages), what
    for name, value in theirs.items():
        ours = averages[name]
        if not value.is_floating_point():
            assert torch.equal(value, ours), f"{what}: {name}"
            continue
        gap = ulps(value.double().numpy(), ours.double().numpy())
        assert gap <= bound, f"{what}: {name} {gap:.2f} ulps (bound {bound})"


@pytest.mark.slow
def test_bf16_model_exports_float32_averages_that_load_into_it(tmp_path: Path) -> None:
    """A bf16 channels_last model with float32 shadows: the export holds the float32 averages
    bit for bit under the model's names, timm's loader reads them, and the bf16 model loads
    them strictly (rounded to bf16 by ``load_state_dict``)."""
    model = _conv_bn().to(torch.bfloat16).to(memory_format=torch.channels_last)
    ema = EMA(model, config=presets.timm(0.9))
    _advance(_steps(model), 4, lambda t: ema.update())
    exported = export(ema, format="timm")["state_dict_ema"]
    assert sorted(exported) == sorted(model.state_dict())
    for name, value in exported.items():
        want = torch.float32 if value.is_floating_point() else torch.int64
        assert value.dtype == want and torch.equal(value, ema.average[name]), name
    torch.save({"state_dict": model.state_dict(), "state_dict_ema": exported}, tmp_path / "c.pth")
    loaded = _timm_helpers().load_state_dict(str(tmp_path / "c.pth"), use_ema=True)
    fresh = _conv_bn(5).to(torch.bfloat16)
    fresh.load_state_dict(loaded, strict=True)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, ema.average[name].to(value.dtype)), name


@pytest.mark.parametrize("dtype", ["same", torch.float32, torch.float64])
def test_shadow_dtype_variants_export_their_own_dtype(dtype: Any) -> None:
    """``EMA(bf16_model, dtype=...)``: the export is the shadow in its dtype, bit for bit (copied
    buffers keep the model's dtype), never cast."""
    model = _conv_bn().to(torch.bfloat16)
    ema = EMA(model, decay=0.9, dtype=dtype)
    _advance(_steps(model), 3, lambda t: ema.update())
    exported = export(ema, format="state_dict")
    for name, value in exported.items():
        assert value.dtype == ema.average[name].dtype, name
        assert torch.equal(value, ema.average[name]), name
    float_dtype = torch.bfloat16 if dtype == "same" else dtype
    assert exported["0.weight"].dtype == float_dtype


def test_export_mid_training_is_a_snapshot_and_changes_nothing() -> None:
    """An export taken at step 3 keeps its values while training goes on, and the EMA continues
    bit for bit as an identical EMA that was never exported."""
    model = _conv_bn()
    ema = EMA(model, config=presets.timm(0.95, use_warmup=True))
    twin = EMA(model, config=presets.timm(0.95, use_warmup=True))
    steps = _steps(model)
    _advance(steps, 3, ema.update, twin.update)
    taken = export(ema, format="state_dict")
    kept = {n: v.clone() for n, v in taken.items()}
    _advance(steps, 4, ema.update, twin.update)
    for name, value in kept.items():
        assert torch.equal(taken[name], value), f"{name} moved after the export"
        assert torch.equal(ema.average[name], twin.average[name]), name
    assert not torch.equal(ema.average["0.weight"], kept["0.weight"])


@pytest.mark.parametrize("wrap", ["compile", "data_parallel"])
def test_wrapped_tied_model_exports_the_plain_models_state_dict(wrap: str) -> None:
    """An EMA of ``torch.compile(model)`` or ``DataParallel(model)`` with tied weights and a
    non-persistent buffer exports the plain model's ``state_dict()`` keys (no wrapper prefix, the
    tied weight under both names, no ``inv_freq``), which the plain model loads strictly."""
    torch.manual_seed(0)
    model = Tied()
    wrapped = OptimizedModule(model) if wrap == "compile" else torch.nn.DataParallel(model)
    ema = EMA(wrapped, config=presets.timm(0.9))
    with torch.no_grad():
        model.emb.weight.add_(1.0)
    ema.update()
    exported = export(ema, format="state_dict")
    assert sorted(exported) == sorted(model.state_dict())
    assert torch.equal(exported["out.weight"], ema.average["emb.weight"])
    fresh = Tied()
    fresh.load_state_dict(exported, strict=True)
    assert torch.equal(fresh.out.weight, ema.average["emb.weight"])
    assert fresh.out.weight is fresh.emb.weight


@pytest.mark.parametrize("non_float", ["copy", "freeze"])
def test_integer_buffer_is_exported_per_non_float_mode(non_float: str) -> None:
    """``num_batches_tracked`` is exported int64: the model's counter under ``"copy"``, the
    value at construction under ``"freeze"``."""
    model = _conv_bn()
    ema = EMA(model, config=Config(0.9, non_float=non_float))  # type: ignore[arg-type]
    _advance(_steps(model), 3, lambda t: ema.update())
    counter = export(ema, format="state_dict")["1.num_batches_tracked"]
    assert counter.dtype == torch.int64
    assert int(counter) == (3 if non_float == "copy" else 0)


def test_integer_buffer_under_non_float_error_is_refused_by_name() -> None:
    """``non_float="error"`` on a model with a BatchNorm counter is refused when the EMA is
    built, naming the buffer."""
    with pytest.raises(TypeError, match="num_batches_tracked"):
        EMA(_conv_bn(), config=Config(0.9, non_float="error"))


def _quiet(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


@pytest.mark.slow
def test_diffusers_folder_of_a_compiled_bf16_channels_last_model_resumes(tmp_path: Path) -> None:
    """A bf16 channels_last diffusers model under ``torch.compile``, float32 shadows, exported
    mid-run: ``EMAModel.from_pretrained`` gets the averages bit for bit and the step, and then
    continues (updated from the bf16 weights) within the diffusers bound of ema-core."""
    diffusers = require("diffusers")
    from diffusers.configuration_utils import register_to_config

    class Net(diffusers.ModelMixin, diffusers.ConfigMixin):  # type: ignore[misc]
        @register_to_config
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(width, 4, 3)
            self.head = torch.nn.Linear(4, 4)

    torch.manual_seed(0)
    model = Net().to(torch.bfloat16).to(memory_format=torch.channels_last)
    args = {"decay": 0.99, "update_after_step": 2, "use_ema_warmup": True, "power": 0.75}
    ema = EMA(OptimizedModule(model), config=presets.diffusers(**args))
    gen = torch.Generator().manual_seed(1)

    def train() -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_((0.1 * torch.randn(p.shape, generator=gen)).to(p.dtype))
        ema.update()

    for _ in range(6):
        train()
    path, config = tmp_path / "ema", model.config
    folder = export(ema, format="diffusers", path=path, model_config=config, args=args)
    theirs = _quiet(require("diffusers.training_utils").EMAModel.from_pretrained, str(folder), Net)
    assert theirs.optimization_step == 6
    names = [n for n, _ in model.named_parameters()]
    for name, shadow in zip(names, theirs.shadow_params, strict=True):
        assert shadow.dtype == torch.float32 and torch.equal(shadow, ema.average[name]), name
    bound = bound_for("diffusers", 0.99).ours_peer
    for _ in range(15):
        train()
        theirs.step(model.parameters())
        _within(bound, dict(zip(names, theirs.shadow_params, strict=True)), ema, "diffusers")


@pytest.mark.slow
def test_timm_continues_an_export_of_a_compiled_model() -> None:
    """ema-core on ``torch.compile(model)`` (timm preset, warmup), exported at step 10 into a
    real ``ModelEmaV3`` of the plain model (timm's resume: load ``state_dict_ema``), both then
    updated with ``step=t``: within the timm bound after every step."""
    model = _conv_bn()
    args = {"decay": 0.99, "use_warmup": True, "update_after_step": 3}
    ema = EMA(OptimizedModule(model), config=presets.timm(**args))
    steps = _steps(model)
    _advance(steps, 10, ema.update)
    peer = load_timm_model_ema().ModelEmaV3(model, **args)
    peer.module.load_state_dict(export(ema, format="timm")["state_dict_ema"], strict=True)
    bound = bound_for("timm", 0.99).ours_peer
    for _ in range(15):
        t = _advance(steps, 1, ema.update, lambda t: peer.update(model, step=t))
        _within(bound, peer.module.state_dict(), ema, f"timm at step {t}")


@pytest.mark.slow
def test_ema_pytorch_continues_an_export_as_the_readme_recipe_does() -> None:
    """The README's way back to ema-pytorch (load the export, set ``step`` and ``initted``):
    with a BatchNorm counter frozen by the preset, ema-pytorch continues within its bound."""
    ema_pytorch = require("ema_pytorch")
    model = _conv_bn()
    args = {"beta": 0.99, "update_after_step": 0, "update_every": 1}
    ema = EMA(model, config=presets.ema_pytorch(**args))
    steps = _steps(model)
    _advance(steps, 8, lambda t: ema.update())
    peer = ema_pytorch.EMA(model, **args)
    peer.ema_model.load_state_dict(export(ema, format="state_dict"), strict=True)
    peer.step.fill_(ema.step)
    peer.initted.fill_(True)
    bound = bound_for("ema_pytorch", 0.99).ours_peer
    for _ in range(12):
        t = _advance(steps, 1, lambda t: ema.update(), lambda t: peer.update())
        _within(bound, peer.ema_model.state_dict(), ema, f"ema-pytorch at step {t}")


@pytest.mark.slow
def test_bf16_torch_ema_state_widens_into_float32_shadows_bit_for_bit() -> None:
    """torch_ema on a bf16 channels_last model keeps bf16 shadows; ``load_peer`` into an EMA with
    float32 shadows takes them exactly (a lossless widening) with its count of updates."""
    torch_ema = require("torch_ema")
    model = _conv_bn().to(torch.bfloat16).to(memory_format=torch.channels_last)
    peer = torch_ema.ExponentialMovingAverage(model.parameters(), decay=0.99)
    _advance(_steps(model), 5, lambda t: peer.update())
    ema = EMA(model, config=presets.torch_ema(0.99))
    load_peer(ema, peer.state_dict(), peer="torch_ema")
    assert ema.step == 5
    names = [n for n, _ in model.named_parameters()]
    for name, shadow in zip(names, peer.shadow_params, strict=True):
        assert shadow.dtype == torch.bfloat16
        assert ema.average[name].dtype == torch.float32
        assert torch.equal(ema.average[name], shadow.float()), name


@pytest.mark.slow
def test_bf16_ema_pytorch_state_with_frozen_counter_loads_bit_for_bit() -> None:
    """ema-pytorch on a bf16 model (its state holds ``online_model.*`` too), loaded into float32
    shadows: each average is the peer's widened exactly, the int64 counter as the peer froze it."""
    ema_pytorch = require("ema_pytorch")
    model = _conv_bn().to(torch.bfloat16)
    args = {"beta": 0.99, "update_after_step": 2, "update_every": 1}
    peer = ema_pytorch.EMA(model, **args)
    _advance(_steps(model), 6, lambda t: peer.update())
    ema = EMA(model, config=presets.ema_pytorch(**args), dtype=torch.float32)
    load_peer(ema, peer.state_dict(), peer="ema_pytorch", args=args)
    assert ema.step == 6
    for name, value in peer.ema_model.state_dict().items():
        assert torch.equal(ema.average[name], value.to(ema.average[name].dtype)), name
    assert int(ema.average["1.num_batches_tracked"]) == int(
        peer.ema_model.state_dict()["1.num_batches_tracked"]
    )


@pytest.mark.slow
def test_mmengine_state_of_a_tied_model_loads_into_a_wrapped_ema_and_continues() -> None:
    """mmengine's ``ExponentialMovingAverage`` of a tied model (both names in its state, equal)
    goes into an EMA of ``DataParallel(model)`` bit for bit, then both continue within the
    mmengine bound (buffers copied from the model)."""
    averaged = require("mmengine.model.averaged_model")
    torch.manual_seed(0)
    model = Tied(persistent=True)
    args = {"momentum": 0.05, "interval": 1, "update_buffers": False}
    peer = _quiet(averaged.ExponentialMovingAverage, model, **args)
    gen = torch.Generator().manual_seed(3)

    def train() -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            model.train()
            model(torch.randint(0, 6, (5,), generator=gen))

    for _ in range(6):
        train()
        peer.update_parameters(model)
    state = peer.state_dict()
    assert torch.equal(state["module.emb.weight"], state["module.out.weight"])
    ema = EMA(torch.nn.DataParallel(model), config=presets.mmedit(**args))
    load_peer(ema, state, peer="mmengine", args=args)
    assert ema.step == 6
    assert torch.equal(ema.average["emb.weight"], state["module.emb.weight"])
    bound = bound_for("mmengine", 0.95).ours_peer
    for _ in range(10):
        train()
        peer.update_parameters(model)
        ema.update()
        _within(bound, peer.module.state_dict(), ema, "mmengine")


def test_timm_state_of_a_model_with_a_non_persistent_buffer_loads() -> None:
    """A model with a non-persistent buffer (rotary ``inv_freq``): timm's ``state_dict_ema``
    leaves it out, as ``module.state_dict()`` and ema-core's own export do; ``load_peer`` takes
    the state (the buffer is the model's own, not part of the peer's average)."""
    torch.manual_seed(0)
    model = Tied()
    args = {"decay": 0.99}
    peer = load_timm_model_ema().ModelEmaV3(model, **args)
    with torch.no_grad():
        model.bn.weight.add_(0.5)
    peer.update(model, step=1)
    ema = EMA(model, config=presets.timm(**args))
    load_peer(ema, peer.module.state_dict(), peer="timm", args=args, step=1)
    assert ema.step == 1
    assert torch.equal(ema.average["bn.weight"], peer.module.bn.weight)


def test_own_timm_export_round_trips_through_load_peer() -> None:
    """``export(format="timm")`` of an EMA whose model has a non-persistent buffer, given back
    to ``load_peer(peer="timm", step=ema.step)`` of a fresh EMA, restores the averages."""
    torch.manual_seed(0)
    model = Tied()
    ema = EMA(model, config=presets.timm(0.99))
    with torch.no_grad():
        model.bn.weight.add_(0.5)
    ema.update()
    exported = export(ema, format="timm")["state_dict_ema"]
    again = EMA(model, config=presets.timm(0.99))
    load_peer(again, exported, peer="timm", args={"decay": 0.99}, step=ema.step)
    assert "inv_freq" not in exported and again.step == ema.step
    for name, value in ema.average.items():  # the tied weight once, inv_freq kept as built
        assert torch.equal(again.average[name], value), name


def test_export_inside_swap_and_after_a_dtype_change_holds_the_averages() -> None:
    """An export taken inside ``swap()`` (model holding the averages) and one taken after
    ``model.to(torch.bfloat16)`` mid-run, before the next update, are both the float32
    averages bit for bit; training then continues on the bf16 model."""
    model = _conv_bn()
    ema = EMA(model, config=presets.timm(0.9))
    steps = _steps(model)
    _advance(steps, 3, lambda t: ema.update())
    before = {n: v.clone() for n, v in ema.average.items()}
    with ema.swap():
        inside = export(ema, format="state_dict")
    model.to(torch.bfloat16)
    after = export(ema, format="state_dict")
    for name, value in before.items():
        assert torch.equal(inside[name], value) and torch.equal(after[name], value), name
        assert after[name].dtype == value.dtype, name
    _advance(steps, 1, lambda t: ema.update())
    assert ema.average["0.weight"].dtype == torch.float32
    assert not torch.equal(ema.average["0.weight"], before["0.weight"])


def test_doubly_prefixed_peer_states_of_a_data_parallel_model_load() -> None:
    """``AveragedModel(DataParallel(model))`` (``module.module.*``) and timm's
    ``ModelEmaV3(DataParallel(model)).state_dict()`` go into an EMA of the plain model bit for
    bit, with the peer's count."""
    swa_utils = require("torch.optim.swa_utils")
    model = _conv_bn()
    wrapped = torch.nn.DataParallel(model)
    swa = swa_utils.AveragedModel(
        wrapped, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9), use_buffers=True
    )
    timm = load_timm_model_ema().ModelEmaV3(wrapped, decay=0.9)
    t = _advance(
        _steps(model),
        3,
        lambda t: swa.update_parameters(wrapped),
        lambda t: timm.update(wrapped, step=t),
    )
    ema = EMA(model, config=presets.swa_utils(0.9, use_buffers=True))
    load_peer(ema, swa.state_dict(), peer="swa_utils", args={"decay": 0.9, "use_buffers": True})
    assert ema.step == 3
    for name, value in swa.module.module.state_dict().items():
        assert torch.equal(ema.average[name], value), name
    ema = EMA(model, config=presets.timm(0.9))
    load_peer(ema, timm.state_dict(), peer="timm", args={"decay": 0.9}, step=t)
    for name, value in timm.module.module.state_dict().items():
        assert torch.equal(ema.average[name], value), name


def test_fp16_peer_widens_and_a_float32_peer_into_bf16_shadows_is_refused() -> None:
    """An fp16 torch_ema shadow goes into ema-core's float32 shadow exactly; a float32 peer
    shadow into ``dtype="same"`` bf16 shadows would round, so it is refused naming both dtypes
    and nothing is written."""
    torch_ema = require("torch_ema")
    model = torch.nn.Linear(3, 3).half()
    peer = torch_ema.ExponentialMovingAverage(model.parameters(), decay=0.9)
    with torch.no_grad():
        model.weight.add_(0.1)
    peer.update()
    ema = EMA(model, config=presets.torch_ema(0.9))
    load_peer(ema, peer.state_dict(), peer="torch_ema")
    assert torch.equal(ema.average["weight"], peer.shadow_params[0].float())
    wide = torch.nn.Linear(3, 3)
    wide_peer = torch_ema.ExponentialMovingAverage(wide.parameters(), decay=0.9)
    wide.to(torch.bfloat16)
    narrow = EMA(wide, config=presets.torch_ema(0.9), dtype="same")
    kept = {n: v.clone() for n, v in narrow.average.items()}
    with pytest.raises(ValueError, match=r"torch\.float32.*torch\.bfloat16"):
        load_peer(narrow, wide_peer.state_dict(), peer="torch_ema")
    assert narrow.step == 0
    for name, value in kept.items():
        assert torch.equal(narrow.average[name], value), name


def _ema_pytorch_state(model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    args = {"beta": 0.9, "update_after_step": 0, "update_every": 1}
    peer = require("ema_pytorch").EMA(model, **args)
    peer.update()
    return peer.state_dict(), args


def _mmengine_state(model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    args = {"momentum": 0.1}
    averaged = require("mmengine.model.averaged_model")
    peer = _quiet(averaged.ExponentialMovingAverage, model, **args)
    peer.update_parameters(model)
    return peer.state_dict(), args


@pytest.mark.slow
@pytest.mark.parametrize(
    ("peer", "run"), [("ema_pytorch", _ema_pytorch_state), ("mmengine", _mmengine_state)]
)
def test_module_peers_of_a_model_with_a_non_persistent_buffer_load(
    peer: str, run: Callable[[torch.nn.Module], tuple[dict[str, Any], dict[str, Any]]]
) -> None:
    """ema-pytorch's and mmengine's states (``nn.Module.state_dict()``: no non-persistent
    buffer) of a model with a rotary-like ``inv_freq`` load into an EMA of that model with the
    peer's count of updates."""
    torch.manual_seed(0)
    model = Tied()
    state, args = run(model)
    preset = presets.ema_pytorch if peer == "ema_pytorch" else presets.mmedit
    ema = EMA(model, config=preset(**args))
    load_peer(ema, state, peer=peer, args=args)  # type: ignore[arg-type]
    assert ema.step == 1
