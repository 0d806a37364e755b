"""The torch ``EMA`` and ``ema_core.checkpoint`` in fine-tuning workflows: the EMA of a
pretrained backbone loaded into the EMA of the backbone plus a new head (``strict=False``),
``include=`` / ``exclude=`` EMAs saved and loaded across, checkpoints of a model with one layer
more or less, a model wrapped in a new parent, configs that differ only in ``dtype``, the
schedule or the buffer policy, ``copy_to`` of a backbone EMA into a bigger model, a reset of the
EMA to the current weights, a frozen backbone and a second fine-tune started from ``copy_to``'d
averages. Every partial load either loads exactly the names both sides have (bit for bit, the
others untouched) or raises a ``ValueError`` / ``TypeError`` naming what differs and changes
nothing."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from ema_core import Config, schedules

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from ema_core.checkpoint import check, load, save  # noqa: E402
from ema_core.torch import EMA  # noqa: E402


def _backbone(seed: int = 0) -> nn.Sequential:
    """A small pretrained-style backbone with BatchNorm statistics and an integer counter."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))


class _FineTune(nn.Module):
    """The backbone under a new parent (``backbone.*``) plus a new head (``head.*``)."""

    def __init__(self, backbone: nn.Module, classes: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(3, classes)

    def forward(self, x: Any) -> Any:
        return self.head(self.backbone(x))


class _Wrapped(nn.Module):
    """A parent holding the model as ``module`` (DistributedDataParallel's layout)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner

    def forward(self, x: Any) -> Any:
        return self.module(x)


def _step(model: nn.Module, ema: EMA, steps: int, seed: int = 1, only: str | None = None) -> None:
    """``steps`` stand-in training steps, each followed by ``ema.update()``: the trainable
    parameters (those whose name starts with ``only``, when given) move by random amounts;
    without ``only`` a train-mode forward also moves the BatchNorm statistics."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad and (only is None or name.startswith(only)):
                    p.add_((torch.randn(p.shape, generator=gen) * 0.1).to(p.dtype))
            if only is None:
                model.train()
                model(torch.randn(8, 4, generator=gen))
        ema.update()


def _pretrained(steps: int = 3) -> tuple[nn.Sequential, EMA]:
    """A backbone and its EMA after ``steps`` updates (decay 0.9, buffers copied)."""
    net = _backbone()
    ema = EMA(net, decay=0.9)
    _step(net, ema, steps)
    return net, ema


def _shadows(ema: EMA) -> dict[str, Any]:
    """A copy of the EMA's raw shadows by name (what a load writes)."""
    return {n: t.clone() for n, t in ema.state_dict()["shadow"].items()}


def _weight(ema: EMA) -> float:
    """The EMA's bias-correction weight, as its ``state_dict()`` holds it."""
    return float(ema.state_dict()["weight"])


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    """The two mappings hold the same names and, under each, the same dtype and bits."""
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        assert torch.equal(got[name], value), name


def _assert_untouched(ema: EMA, before: dict[str, Any], step: int = 0) -> None:
    """Nothing changed: the shadows keep their bits and the step its value."""
    _assert_same(_shadows(ema), before)
    assert ema.step == step


def _prefixed(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``state`` with ``prefix`` put in front of every shadow name (a model under a parent)."""
    return dict(state, shadow={prefix + n: t for n, t in state["shadow"].items()})


def test_a_backbone_ema_renamed_into_backbone_plus_head_loads_its_names_bit_for_bit() -> None:
    """The timm-style fine-tune: the pretrained EMA's names, given the ``backbone.`` prefix, load
    bit for bit with ``strict=False``; the new head keeps the shadow it started with (its
    weights at construction, ``init="params"``); the counter and weight are the checkpoint's;
    the live model is untouched, the loaded shadows are copies, not the source's tensors, and
    an explicit step below the loaded counter is refused."""
    net, pre = _pretrained()
    ft = _FineTune(copy.deepcopy(net))
    ema = EMA(ft, decay=0.9)
    head = {n: t.clone() for n, t in _shadows(ema).items() if n.startswith("head.")}
    assert torch.equal(head["head.weight"], ft.head.weight)
    live = {n: t.clone() for n, t in ft.state_dict().items()}
    pretrained = _shadows(pre)
    ema.load_state_dict(_prefixed(pre.state_dict(), "backbone."), strict=False)
    want = {**{"backbone." + n: t for n, t in pretrained.items()}, **head}
    _assert_same(_shadows(ema), want)
    assert ema.step == 3 and _weight(ema) == 1.0
    _assert_same(ft.state_dict(), live)
    _step(net, pre, 1, seed=7)  # the source moves on: the loaded shadows stay
    _assert_same(_shadows(ema), want)
    with pytest.raises(ValueError, match=r"step=2 is below this EMA's step 3"):
        ema.update(2)  # the loaded counter is the one later host steps are checked against
    _assert_same(_shadows(ema), want)
    ema.update()
    assert ema.step == 4


def test_a_strict_load_across_a_new_parent_names_both_sides_and_changes_nothing() -> None:
    """Without the prefix, a strict load names the first missing (``backbone.0.weight``) and
    unexpected (``0.weight``) names, and writes no shadow and no step."""
    _, pre = _pretrained()
    ema = EMA(_FineTune(_backbone(seed=1)), decay=0.9)
    before = _shadows(ema)
    with pytest.raises(
        ValueError,
        match=r"missing \['backbone\.0\.weight', .*unexpected \['0\.weight', .*pass strict=False",
    ):
        ema.load_state_dict(pre.state_dict())
    _assert_untouched(ema, before)


def test_a_loose_load_with_no_name_in_common_writes_no_shadow() -> None:
    """``strict=False`` loads "the names both have": with none in common (the parent's prefix
    forgotten) every shadow keeps its bits; the counter is the checkpoint's, as the docstring
    says (shadows, counter and weight are restored)."""
    _, pre = _pretrained()
    ema = EMA(_FineTune(_backbone(seed=1)), decay=0.9)
    before = _shadows(ema)
    ema.load_state_dict(pre.state_dict(), strict=False)
    _assert_untouched(ema, before, step=3)


def test_a_ddp_style_parent_named_module_loads_strictly_both_ways() -> None:
    """A parent holding the model as ``module`` (DDP's layout) tracks the plain names, so its
    state loads strictly into the EMA of the plain model, bit for bit, and the plain EMA's
    ``copy_to`` writes into the wrapped model's tensors."""
    net = _backbone()
    wrapped = _Wrapped(copy.deepcopy(net))
    outer = EMA(wrapped, decay=0.9)
    _step(wrapped, outer, 2)
    plain = EMA(net, decay=0.9)
    assert plain.names == outer.names
    plain.load_state_dict(outer.state_dict())
    _assert_same(_shadows(plain), _shadows(outer))
    assert plain.step == 2
    fresh = _Wrapped(_backbone(seed=3))
    plain.copy_to(fresh)
    _assert_same(fresh.module.state_dict(), plain.average)


class _Compiled(nn.Module):
    """What ``torch.compile`` returns, without importing the compiler: the model held as
    ``_orig_mod``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.add_module("_orig_mod", inner)


def test_a_compiled_backbone_under_the_new_parent_loads_the_plain_names_strictly() -> None:
    """A backbone compiled inside the fine-tune model (``backbone._orig_mod.*``, the layout of
    ``torch.compile``'s wrapper) tracks ``backbone.*``: the state of an EMA of the uncompiled
    model loads strictly, bit for bit, and ``copy_to`` writes into the wrapped tensors."""
    ft = _FineTune(_backbone())
    plain = EMA(ft, decay=0.9)
    _step(ft, plain, 2)
    compiled = _FineTune(_Compiled(_backbone(seed=1)))
    ema = EMA(compiled, decay=0.9)
    assert ema.names == plain.names
    ema.load_state_dict(plain.state_dict())
    _assert_same(_shadows(ema), _shadows(plain))
    ema.copy_to(compiled)
    now = {n.replace("_orig_mod.", ""): t for n, t in compiled.state_dict().items()}
    _assert_same(now, plain.average)


def test_include_and_exclude_emas_of_one_backbone_share_names_and_loads() -> None:
    """``include="backbone.*"`` and ``exclude="head.*"`` track the same full names, and the
    filters are not part of the config: one's state loads strictly into the other. A head-only
    EMA refuses it strictly by name and, loosely, keeps every shadow (none in common)."""
    ft = _FineTune(_backbone())
    only_backbone = EMA(ft, decay=0.9, include="backbone.*")
    no_head = EMA(ft, decay=0.9, exclude="head.*")
    assert only_backbone.names == no_head.names
    assert all(n.startswith("backbone.") for n in no_head.names)
    _step(ft, only_backbone, 2)
    no_head.load_state_dict(only_backbone.state_dict())
    _assert_same(_shadows(no_head), _shadows(only_backbone))
    only_head = EMA(ft, decay=0.9, include="head.*")
    before = _shadows(only_head)
    with pytest.raises(
        ValueError, match=r"missing \['head\.weight', 'head\.bias'\], unexpected \['backbone\.0\."
    ):
        only_head.load_state_dict(only_backbone.state_dict())
    _assert_untouched(only_head, before)
    only_head.load_state_dict(only_backbone.state_dict(), strict=False)
    _assert_untouched(only_head, before, step=2)


def test_a_backbone_only_ema_loads_loosely_into_the_full_ema() -> None:
    """A backbone-only EMA's state into an EMA of the whole model: the backbone's shadows bit
    for bit, the head's left at the head's weights (its start), the counter the checkpoint's."""
    ft = _FineTune(_backbone())
    part = EMA(ft, decay=0.9, include="backbone.*")
    _step(ft, part, 2)
    full = EMA(ft, decay=0.9)
    head = {n: t.clone() for n, t in ft.head.state_dict().items()}
    full.load_state_dict(part.state_dict(), strict=False)
    want = {**_shadows(part), **{"head." + n: t for n, t in head.items()}}
    _assert_same(_shadows(full), want)
    assert full.step == 2


def test_a_full_ema_loads_loosely_into_a_head_only_ema() -> None:
    """The full EMA's state into an ``include="head.*"`` EMA: only the head's shadows, bit for
    bit; the backbone names of the state are skipped."""
    ft = _FineTune(_backbone())
    full = EMA(ft, decay=0.9)
    _step(ft, full, 2)
    head_only = EMA(ft, decay=0.9, include="head.*")
    head_only.load_state_dict(full.state_dict(), strict=False)
    want = {n: t for n, t in _shadows(full).items() if n.startswith("head.")}
    _assert_same(_shadows(head_only), want)
    assert head_only.step == 2


def test_a_new_head_of_another_size_is_refused_by_name_until_its_names_are_dropped() -> None:
    """The classic class-count change: the old head's shadow has another shape, so even a
    loose load is a ``ValueError`` naming ``head.weight``'s shapes and nothing is written, the
    backbone included; with the head's names dropped from the state the backbone loads."""
    ft = _FineTune(_backbone(), classes=2)
    old = EMA(ft, decay=0.9)
    _step(ft, old, 2)
    ema = EMA(_FineTune(_backbone(seed=1), classes=5), decay=0.9)
    before = _shadows(ema)
    with pytest.raises(
        ValueError,
        match=r"\['head\.(weight|bias)'\] has shape \((2, 3|2,)\) dtype torch\.float32; this "
        r"EMA's shadow has shape \((5, 3|5,)\)",
    ):
        ema.load_state_dict(old.state_dict(), strict=False)
    _assert_untouched(ema, before)
    state = old.state_dict()
    backbone = {n: t for n, t in state["shadow"].items() if not n.startswith("head.")}
    ema.load_state_dict(dict(state, shadow=backbone), strict=False)
    want = {**before, **{n: t.clone() for n, t in backbone.items()}}
    _assert_same(_shadows(ema), want)


def _layers(*sizes: tuple[int, int]) -> nn.Sequential:
    """Linear layers of the given (in, out) sizes, a ``Tanh`` after the first one."""
    torch.manual_seed(0)
    first, *rest = (nn.Linear(a, b) for a, b in sizes)
    return nn.Sequential(first, nn.Tanh(), *rest)


def test_a_file_with_one_layer_more_or_less_loads_loosely_and_strict_names_it(
    tmp_path: Path,
) -> None:
    """A file of a model with one more layer (``3.*``) is refused strictly, by ``check`` as by
    ``load``, naming the unexpected names; loosely, the common layers load bit for bit. The
    other way round, the EMA's extra layer keeps its shadows."""
    bigger = _layers((4, 6), (6, 2), (2, 2))
    big = EMA(bigger, decay=0.9)
    _step(bigger, big, 2, only="")
    path = tmp_path / "big.safetensors"
    save(path, big)
    ema = EMA(_layers((4, 6), (6, 2)), decay=0.9)
    before = _shadows(ema)
    for read in (check, load):
        with pytest.raises(
            ValueError,
            match=r"big\.safetensors: .*unexpected \['3\.(weight|bias)', '3\.(weight|bias)'\]",
        ):
            read(path, ema)
        _assert_untouched(ema, before)
    check(path, ema, strict=False)
    _assert_untouched(ema, before)
    assert load(path, ema, strict=False) is ema
    _assert_same(_shadows(ema), {n: t for n, t in _shadows(big).items() if n[0] != "3"})
    assert ema.step == 2
    small_path = tmp_path / "small.safetensors"
    save(small_path, ema)
    other = EMA(_layers((4, 6), (6, 2), (2, 2)), decay=0.9)
    extra = {n: t for n, t in _shadows(other).items() if n[0] == "3"}
    load(small_path, other, strict=False)
    _assert_same(_shadows(other), {**_shadows(ema), **extra})


def test_a_layer_inserted_in_the_middle_is_refused_even_loosely_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """A layer inserted in the middle shifts the later names onto tensors of other shapes: a
    loose load is a ``ValueError`` naming the shifted name and both shapes, and the layer
    whose name and shape still agree (``0.*``) is not written either (checked before any
    write); ``check`` says the same."""
    small = _layers((4, 6), (6, 2))
    src = EMA(small, decay=0.9)
    _step(small, src, 2, only="")
    path = tmp_path / "small.safetensors"
    save(path, src)
    ema = EMA(_layers((4, 6), (6, 6), (6, 2)), decay=0.9)
    before = _shadows(ema)
    for read in (check, load):
        with pytest.raises(
            ValueError,
            match=r"\['2\.(weight|bias)'\] has shape \((2, 6|2,)\) dtype torch\.float32; "
            r"this EMA's shadow has shape \((6, 6|6,)\)",
        ):
            read(path, ema, strict=False)
        _assert_untouched(ema, before)


def test_a_config_differing_only_in_the_shadow_dtype_is_refused_both_ways() -> None:
    """A float64-shadow EMA and a float32 state: strictly, the config difference names
    ``dtype`` with both values; loosely, the shadow's dtype is refused by name (never a cast);
    nothing changes either way."""
    model = _backbone()
    src = EMA(model, decay=0.9)
    _step(model, src, 2)
    ema = EMA(model, decay=0.9, dtype=torch.float64)
    before = _shadows(ema)
    with pytest.raises(ValueError, match=r"dtype: 'float64' in this EMA, None in state_dict"):
        ema.load_state_dict(src.state_dict())
    _assert_untouched(ema, before)
    with pytest.raises(
        ValueError,
        match=r"\['0\.weight'\] has shape \(6, 4\) dtype torch\.float32; this EMA's shadow has "
        r"shape \(6, 4\) dtype torch\.float64",
    ):
        ema.load_state_dict(src.state_dict(), strict=False)
    _assert_untouched(ema, before)


def test_a_dtype_named_only_in_the_config_loads_loosely_bit_for_bit() -> None:
    """``dtype="float32"`` over a float32 model makes the same shadows as the default: the
    strict load still names the ``dtype`` field, a loose one loads bit for bit, and both EMAs
    then update identically."""
    model = _backbone()
    src = EMA(model, decay=0.9)
    _step(model, src, 2)
    ema = EMA(model, decay=0.9, dtype="float32")
    before = _shadows(ema)
    with pytest.raises(ValueError, match=r"dtype: 'float32' in this EMA, None in state_dict"):
        ema.load_state_dict(src.state_dict())
    _assert_untouched(ema, before)
    ema.load_state_dict(src.state_dict(), strict=False)
    _assert_same(_shadows(ema), _shadows(src))
    with torch.no_grad():
        model[0].weight.add_(0.5)
    src.update()
    ema.update()
    _assert_same(_shadows(ema), _shadows(src))
    assert ema.step == src.step == 3


def test_a_schedule_only_difference_loads_loosely_and_continues_on_this_emas_schedule() -> None:
    """A state of ``decay=0.9`` into a ``warmup(0.99)`` EMA: strictly refused naming the
    schedule; loosely the shadows and step 3 load, and the next update applies this EMA's
    schedule at step 4 (as a strict load of the same shadows under this config does)."""
    model = _backbone()
    src = EMA(model, decay=0.9)
    _step(model, src, 3)
    ema = EMA(model, schedule=schedules.warmup(0.99))
    ref = EMA(model, schedule=schedules.warmup(0.99))
    before = _shadows(ema)
    with pytest.raises(ValueError, match=r"schedule.*in this EMA, .* in state_dict"):
        ema.load_state_dict(src.state_dict())
    _assert_untouched(ema, before)
    ema.load_state_dict(src.state_dict(), strict=False)
    ref.load_state_dict(dict(src.state_dict(), config=ref.state_dict()["config"]))
    _assert_same(_shadows(ema), _shadows(src))
    old = _shadows(ema)["0.weight"]
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update()
    ref.update()
    _assert_same(_shadows(ema), _shadows(ref))
    assert ema.step == 4
    decay = float(schedules.warmup(0.99)(4))
    want = old + (1.0 - decay) * (model[0].weight.detach() - old)
    torch.testing.assert_close(_shadows(ema)["0.weight"], want)


def test_a_buffer_policy_difference_loads_loosely_and_buffers_follow_at_the_next_update() -> None:
    """A ``buffers="skip"`` state (no BatchNorm statistics) into a ``buffers="copy"`` EMA:
    strictly the ``buffers`` field is named; loosely the parameters load, the statistics keep
    their shadows until the next update copies the model's, bit for bit."""
    model = _backbone()
    src = EMA(model, decay=0.9, buffers="skip")
    _step(model, src, 2)
    ema = EMA(model, decay=0.9, buffers="copy")
    before = _shadows(ema)
    with pytest.raises(ValueError, match=r"buffers: 'copy' in this EMA, 'skip' in state_dict"):
        ema.load_state_dict(src.state_dict())
    _assert_untouched(ema, before)
    ema.load_state_dict(src.state_dict(), strict=False)
    buffers = {n: t for n, t in before.items() if n.startswith("1.running") or "num_b" in n}
    _assert_same(_shadows(ema), {**_shadows(src), **buffers})
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 4))
    ema.update()
    shadows = _shadows(ema)
    for name, value in model.named_buffers():
        assert torch.equal(shadows[name], value), name


def test_a_half_shadow_file_into_float32_shadows_is_refused_loosely_by_dtype(
    tmp_path: Path,
) -> None:
    """A bf16 model's ``dtype="same"`` EMA saved to a file and loaded loosely into the default
    EMA (float32 shadows): a ``ValueError`` naming the file, the shadow and both dtypes, from
    ``check`` and ``load`` alike, and nothing written."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(torch.bfloat16)
    src = EMA(model, decay=0.9, dtype="same")
    _step(model, src, 2, only="")
    path = tmp_path / "half.safetensors"
    save(path, src)
    ema = EMA(model, decay=0.9)
    before = _shadows(ema)
    for read in (check, load):
        with pytest.raises(
            ValueError,
            match=r"half\.safetensors: state_dict\['shadow'\]\['(weight|bias)'\] has shape "
            r"\((3, 4|3,)\) dtype torch\.bfloat16; this EMA's shadow has shape \((3, 4|3,)\) "
            r"dtype torch\.float32",
        ):
            read(path, ema, strict=False)
        _assert_untouched(ema, before)


def test_a_zero_started_state_loaded_loosely_reads_as_its_averages_or_is_refused() -> None:
    """The README: ``strict=False`` "loads the averages whatever the config", and ``average``
    refuses to read a zero-started state (weight below 1) under a config whose ``init`` is not
    ``"zeros"`` ("the raw shadows would come back, pulled toward 0"). Loaded loosely into an
    ``init="params"`` EMA, such a state must either read as the same averages or be refused
    (a ``ValueError`` naming the init or weight) with nothing written."""
    model = _backbone()
    src = EMA(model, config=Config(0.5, init="zeros", buffers="copy"))
    _step(model, src, 2)
    assert _weight(src) == 0.75
    ema = EMA(model, decay=0.5)
    before = _shadows(ema)
    try:
        ema.load_state_dict(src.state_dict(), strict=False)
    except ValueError as err:
        assert "init" in str(err) or "weight" in str(err)
        _assert_untouched(ema, before)
        return
    got, want = ema.average, src.average
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, msg=name)


def test_load_state_dict_refuses_a_strict_that_is_not_a_bool() -> None:
    """The README: every public entry, ``load_state_dict`` included, "validates before it
    writes: types raise ``TypeError``", and ``checkpoint.load`` refuses ``strict=None``: the
    EMA's own ``load_state_dict`` must too, not read ``None`` or ``0`` as a loose load (nor
    ``"no"`` as a strict one), and write nothing."""
    _, pre = _pretrained()
    state = pre.state_dict()
    partial = dict(state, shadow={n: t for n, t in state["shadow"].items() if n != "2.bias"})
    ema = EMA(_backbone(seed=2), decay=0.9)
    before = _shadows(ema)
    for value in (None, 0, "no"):
        with pytest.raises(TypeError, match="strict"):
            ema.load_state_dict(partial, strict=value)  # type: ignore[arg-type]
        _assert_untouched(ema, before)


def test_checkpoint_load_of_a_strict_that_is_not_a_bool_is_a_type_error(tmp_path: Path) -> None:
    """``checkpoint.load`` and ``check`` refuse ``strict=None`` by name, before reading."""
    _, pre = _pretrained()
    path = tmp_path / "pre.safetensors"
    save(path, pre)
    ema = EMA(_backbone(seed=2), decay=0.9)
    before = _shadows(ema)
    for read in (check, load):
        with pytest.raises(TypeError, match=r"strict must be a bool \(True or False\), got None"):
            read(path, ema, strict=None)  # type: ignore[arg-type]
    _assert_untouched(ema, before)


def test_reset_to_the_current_weights_by_loading_a_fresh_emas_state() -> None:
    """A reset mid-run: loading ``EMA(model, config=ema.config).state_dict()`` makes the
    averages the model's current tensors bit for bit and the step 0 (``update(1)`` is
    accepted again); the fresh EMA's shadows were copied, not shared."""
    model = _backbone()
    ema = EMA(model, decay=0.9)
    _step(model, ema, 3)
    fresh = EMA(model, config=ema.config)
    kept = _shadows(fresh)
    ema.load_state_dict(fresh.state_dict())
    _assert_same(ema.average, dict(model.state_dict()))
    assert ema.step == 0 and _weight(ema) == 1.0
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(1)
    assert ema.step == 1
    _assert_same(_shadows(fresh), kept)
    assert not torch.equal(ema.average["0.weight"], kept["0.weight"])


def test_reset_by_loading_the_models_own_state_dict_as_shadows_copies_it() -> None:
    """A reset through the model's ``state_dict()`` put in as the shadows (step 0, weight 1):
    the averages equal the weights bit for bit and do not follow later in-place writes to the
    model (the load copies)."""
    model = _backbone()
    ema = EMA(model, decay=0.9)
    _step(model, ema, 3)
    weights = {n: t.clone() for n, t in model.state_dict().items()}
    state = dict(
        ema.state_dict(),
        shadow=model.state_dict(),
        step=torch.tensor(0),
        weight=torch.tensor(1.0, dtype=torch.float64),
    )
    ema.load_state_dict(state)
    _assert_same(ema.average, weights)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    _assert_same(ema.average, weights)
    assert ema.step == 0


def test_copy_to_of_a_backbone_ema_into_the_bigger_model() -> None:
    """``copy_to`` has no loose mode: into the whole fine-tune model a backbone EMA's names are
    missing, a ``ValueError`` naming the first one and nothing written; into the backbone
    submodule (or a mapping of its renamed tensors) it writes every average bit for bit and
    leaves the head alone."""
    _, pre = _pretrained()
    ft = _FineTune(_backbone(seed=1))
    before = {n: t.clone() for n, t in ft.state_dict().items()}
    with pytest.raises(ValueError, match=r"copy_to: '0\.weight' with shape \(6, 4\) has no tensor"):
        pre.copy_to(ft)
    _assert_same(ft.state_dict(), before)
    renamed = {n.removeprefix("backbone."): t for n, t in ft.state_dict().items()}
    pre.copy_to({n: t for n, t in renamed.items() if not n.startswith("head.")})
    _assert_same(ft.backbone.state_dict(), pre.average)
    _assert_same(ft.head.state_dict(), {n[5:]: t for n, t in before.items() if n[:5] == "head."})
    other = _FineTune(_backbone(seed=2))
    pre.copy_to(other.backbone)
    _assert_same(other.backbone.state_dict(), pre.average)


def test_copy_to_of_the_full_ema_into_the_backbone_alone_names_the_prefixed_name() -> None:
    """The whole model's EMA into the backbone submodule: its names keep ``backbone.``, so the
    first is missing there (``ValueError`` naming it, nothing written); an ``include=`` EMA of
    the backbone writes into the whole model and only there."""
    ft = _FineTune(_backbone())
    full = EMA(ft, decay=0.9)
    _step(ft, full, 2)
    target = _FineTune(_backbone(seed=1))
    before = {n: t.clone() for n, t in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"copy_to: 'backbone\.0\.weight' with shape \(6, 4\)"):
        full.copy_to(target.backbone)
    _assert_same(target.state_dict(), before)
    part = EMA(ft, decay=0.9, include="backbone.*")
    part.load_state_dict(full.state_dict(), strict=False)
    part.copy_to(target)
    now = target.state_dict()
    for name, value in full.average.items():
        assert torch.equal(now[name], value if name.startswith("backbone.") else before[name])


def test_a_frozen_backbone_keeps_its_loaded_averages_bit_for_bit() -> None:
    """Fine-tune from the averages: ``copy_to`` the pretrained EMA into the backbone, load its
    state under ``backbone.`` loosely, freeze the backbone and train the head: the backbone's
    averages stay equal to its frozen tensors bit for bit (a blend of equal values), while the
    head's move."""
    net, pre = _pretrained()
    pre.copy_to(net)
    ft = _FineTune(net)
    ema = EMA(ft, decay=0.9)
    head = ema.average["head.weight"].clone()
    ema.load_state_dict(_prefixed(pre.state_dict(), "backbone."), strict=False)
    ft.backbone.requires_grad_(False)
    ft.backbone.eval()
    _step(ft, ema, 3, only="head.")
    assert ema.step == 6
    average = ema.average
    for name, value in ft.backbone.state_dict().items():
        assert torch.equal(average["backbone." + name], value), name
    assert not torch.equal(average["head.weight"], head)


def test_init_copy_does_not_copy_again_after_a_loose_load_past_step_one() -> None:
    """``init="copy"`` copies at the schedule's first update (t = 1): after a loose load at
    step 2 the next update is t = 3, so the new head's shadow (its weights at construction)
    is blended with decay 0.5, not copied (exact values: 1 and 3 give 2)."""
    pre_net = _backbone()
    config = Config(0.5, init="copy")
    pre = EMA(pre_net, config=config)
    _step(pre_net, pre, 2)
    ft = _FineTune(copy.deepcopy(pre_net))
    with torch.no_grad():
        ft.head.weight.fill_(1.0)
    ema = EMA(ft, config=config)
    ema.load_state_dict(_prefixed(pre.state_dict(), "backbone."), strict=False)
    with torch.no_grad():
        ft.head.weight.fill_(3.0)
    ema.update()
    assert ema.step == 3
    assert torch.equal(ema.average["head.weight"], torch.full((2, 3), 2.0))


def test_a_second_fine_tune_starts_at_the_copied_averages() -> None:
    """A second fine-tune from ``copy_to``'d averages: a new EMA of the model starts at them bit
    for bit (float32 model; a bias-corrected ``init="zeros"`` average too); over a bf16 model it
    starts at the averages rounded to bf16, widened back to its float32 shadows."""
    for config in (Config(0.9, buffers="copy"), Config(0.9, init="zeros", buffers="copy")):
        ft = _FineTune(_backbone())
        first = EMA(ft, config=config)
        _step(ft, first, 3)
        averages = {n: t.clone() for n, t in first.average.items()}
        first.copy_to(ft)
        second = EMA(ft, decay=0.9)
        _assert_same(second.average, averages)
    torch.manual_seed(0)
    half = nn.Linear(4, 3).to(torch.bfloat16)
    first = EMA(half, decay=0.9)
    _step(half, first, 3, only="")
    averages = {n: t.clone() for n, t in first.average.items()}
    assert averages["weight"].dtype == torch.float32
    first.copy_to(half)
    second = EMA(half, decay=0.9)
    for name, value in averages.items():
        assert torch.equal(second.average[name], value.to(torch.bfloat16).float()), name


def test_a_loose_load_inside_swap_is_refused_and_changes_nothing() -> None:
    """``load_state_dict(..., strict=False)`` inside ``swap()`` is a ``RuntimeError`` naming it;
    the shadows, the step and (after the block) the live weights are as they were."""
    net, pre = _pretrained()
    ema = EMA(_FineTune(copy.deepcopy(net)), decay=0.9)
    before = _shadows(ema)
    with ema.swap(), pytest.raises(RuntimeError, match=r"load_state_dict\(\) inside swap\(\)"):
        ema.load_state_dict(_prefixed(pre.state_dict(), "backbone."), strict=False)
    _assert_untouched(ema, before)
