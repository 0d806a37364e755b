"""README "## Scaling out: FSDP2, HSDP, DDP and JAX meshes": promises no other test pins.

The multi-rank behaviour (uneven shards, DCP onto 4 ranks, HSDP, DDP replicas, the JAX meshes)
is pinned by ``tests/test_dist_*.py``, ``tests/test_torch_fsdp_configs.py`` and the JAX
sharding tests. Here, in this process only: ``ddp_ema(keep_on="rank0")`` refuses on the ranks
that keep no EMA exactly what rank 0 refuses (no process group: the rank is faked), and, on a
one-rank gloo group (``FileStore``, set up once for the module), the DTensor promises that one
rank can show: shadow layouts and strides, float32 shadows under bf16 mixed precision, the
all-reduces ``Config(guard_finite=True)`` costs (and none without it), the refusals' wording
(both layouts, the fix) with nothing written, and ``copy_to`` into a DTensor of the same layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
fsdp = pytest.importorskip("torch.distributed.fsdp")

import ema_core as ema  # noqa: E402
from ema_core.torch import EMA, ddp_ema  # noqa: E402

HAS_FSDP2 = dist.is_available() and dist.is_gloo_available() and hasattr(fsdp, "fully_shard")
needs_fsdp2 = pytest.mark.skipif(not HAS_FSDP2, reason="needs gloo and FSDP2 (fully_shard)")


# --- ddp_ema(keep_on="rank0"): the same refusal on every rank -----------------------------------


def _outcome(call: Any) -> tuple[str, str]:
    try:
        kept = call()
    except Exception as error:  # the type and the words are what is compared
        return type(error).__name__, str(error)
    return "ok", type(kept).__name__


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def _both_ranks(module: Any, options: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """What rank 0 (which builds the EMA) and rank 1 (which keeps none) get from
    ``ddp_ema(module, keep_on="rank0", **options)``."""
    with (
        mock.patch.object(dist, "is_initialized", return_value=True),
        mock.patch.object(dist, "is_available", return_value=True),
    ):
        outcomes = []
        for rank in (0, 1):
            with mock.patch.object(dist, "get_rank", return_value=rank):
                outcomes.append(_outcome(lambda: ddp_ema(module, keep_on="rank0", **options)))
    return tuple(outcomes)


BAD_OPTIONS = {
    "decay above 1": {"decay": 2.0},
    "decay a string": {"decay": "x"},
    "unknown option": {"decai": 0.9},
    "decay and config": {"decay": 0.9, "config": ema.Config()},
    "schedule a string": {"schedule": "bad"},
    "config a string": {"config": "x"},
    "dtype int32": {"decay": 0.9, "dtype": torch.int32},
    "dtype a word": {"decay": 0.9, "dtype": "float"},
    "buffers policy": {"decay": 0.9, "buffers": "bad"},
    "exclude all": {"decay": 0.9, "exclude": "*"},
    "include none": {"decay": 0.9, "include": "nope"},
    "device meta": {"decay": 0.9, "device": "meta"},
    "device nonsense": {"decay": 0.9, "device": "nonsense"},
    "device a float": {"decay": 0.9, "device": 3.5},
    "device cuda:7": {"decay": 0.9, "device": "cuda:7"},
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_ddp_ema_rank0_only_refuses_alike_on_every_rank(case: str) -> None:
    """README: "A bad option to ``ddp_ema(keep_on="rank0")`` (a ``device=`` included) raises
    the same error on every rank": rank 1 (no EMA) gets rank 0's exception type and words."""
    if case == "device cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    rank0, rank1 = _both_ranks(_net(), BAD_OPTIONS[case])
    assert rank0[0] != "ok", rank0  # a refusal on rank 0 ...
    assert rank1 == rank0  # ... and the very same one on rank 1


def test_ddp_ema_rank0_only_keeps_none_elsewhere_for_good_options() -> None:
    rank0, rank1 = _both_ranks(_net(), {"decay": 0.9, "device": "cpu"})
    assert (rank0, rank1) == (("ok", "EMA"), ("ok", "NoneType"))


def _lacks(kind: str) -> bool:
    backend = getattr(torch, kind, None) if kind != "mps" else torch.backends.mps
    return not (backend is not None and backend.is_available())


@pytest.mark.parametrize(
    "device",
    [
        pytest.param(
            kind,
            marks=pytest.mark.skipif(not _lacks(kind), reason=f"this machine has {kind}"),
        )
        for kind in ("mps", "xpu")
    ],
)
def test_ddp_ema_rank0_only_refuses_a_missing_accelerator_on_every_rank(device: str) -> None:
    """A device of a kind torch knows but this machine lacks: rank 0 cannot build the shadows
    there, so rank 1 must refuse too (else it walks on into the next collective and hangs)."""
    rank0, rank1 = _both_ranks(_net(), {"decay": 0.9, "device": device})
    assert rank0[0] == "ValueError", rank0
    assert f"device={device!r}" in rank0[1], rank0
    assert rank1 == rank0, (rank0, rank1)


# --- one-rank process group: DTensor shadows ---------------------------------------------------


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A 1-D CPU mesh over a one-rank gloo group, for the whole module."""
    if not HAS_FSDP2:
        pytest.skip("needs gloo and FSDP2 (fully_shard)")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    from torch.distributed.device_mesh import init_device_mesh

    store = dist.FileStore(str(tmp_path_factory.mktemp("pg") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        import gc

        gc.collect()
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def other_mesh(mesh: Any) -> Any:
    """Another mesh over the same (one) rank: a named dimension makes it unequal to ``mesh``."""
    from torch.distributed.device_mesh import init_device_mesh

    other = init_device_mesh("cpu", (1,), mesh_dim_names=("other",))
    assert other != mesh  # what the refusals below rely on
    return other


def _sharded(mesh: Any, seed: int = 0, **options: Any) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    for layer in (model[0], model[2]):
        fsdp.fully_shard(layer, mesh=mesh, **options)
    fsdp.fully_shard(model, mesh=mesh, **options)
    return model


def _locals(averaged: EMA) -> dict[str, torch.Tensor]:
    return {n: t.to_local().clone() for n, t in averaged.average.items()}


def _bump(model: torch.nn.Module, by: float) -> None:
    with torch.no_grad():
        for param in model.parameters():
            param.add_(by)


def _dtensor_param(value: torch.Tensor, on: Any, placements: list[Any]) -> Any:
    from torch.distributed.tensor import distribute_tensor

    return torch.nn.Parameter(distribute_tensor(value, on, placements))


@needs_fsdp2
@pytest.mark.slow
def test_shadows_take_mesh_placements_global_shape_and_stride(mesh: Any) -> None:
    """ "each shadow is a DTensor with its parameter's mesh, placements, global shape and
    stride": also for a DTensor whose global stride is not the contiguous one."""
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    model = _sharded(mesh)
    transposed = distribute_tensor(torch.randn(3, 5).t(), mesh, [Shard(0)])
    assert transposed.stride() != transposed.contiguous().stride()  # what this relies on
    for source, live in (
        (model, dict(model.named_parameters())),
        ({"t": transposed}, {"t": transposed}),
    ):
        averaged = EMA(source, decay=0.5)
        for name, param in live.items():
            shadow = averaged.average[name]
            assert isinstance(shadow, DTensor), name
            assert shadow.device_mesh == param.device_mesh, name
            assert shadow.placements == param.placements, name
            assert shadow.shape == param.shape and shadow.stride() == param.stride(), name
            assert shadow.to_local().shape == param.to_local().shape, name
            assert shadow.to_local().data_ptr() != param.to_local().data_ptr(), name


@needs_fsdp2
@pytest.mark.slow
def test_bf16_mixed_precision_keeps_float32_shadows_equal_to_an_unsharded_ema(mesh: Any) -> None:
    """``MixedPrecisionPolicy(param_dtype=torch.bfloat16)``: the sharded params and so the
    shadows stay float32, and after training steps they equal an EMA of the full params."""
    policy = fsdp.MixedPrecisionPolicy(param_dtype=torch.bfloat16)
    model = _sharded(mesh, mp_policy=policy)
    config = ema.Config(schedule=ema.schedules.warmup(0.9))
    averaged = EMA(model, config=config)
    full = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}
    reference = EMA(full, config=config)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        out = model(torch.randn(4, 3, generator=torch.Generator().manual_seed(step)))
        assert out.dtype == torch.bfloat16  # the forward did run in bf16
        opt.zero_grad()
        out.float().pow(2).mean().backward()
        opt.step()
        averaged.update()
        for name, param in model.named_parameters():
            full[name].copy_(param.full_tensor())
        reference.update()
    for name, value in averaged.average.items():
        assert value.dtype == torch.float32, name
        assert torch.equal(value.full_tensor(), reference.average[name]), name


@needs_fsdp2
@pytest.mark.slow
def test_guard_finite_gathers_one_scalar_per_sharded_param_and_nothing_without(
    mesh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "``Config(guard_finite=True)`` under FSDP2 costs one small all-reduce per mesh dimension
    for all the sharded params of a mesh together ... Without it, an update has no
    collective." On one rank DTensor skips its collectives (``CommDebugMode`` counts none), so
    the all-reduces are counted where they are asked for: ``torch.distributed.all_reduce`` calls
    during ``update()``, and the size of what each sums (the mesh has one dimension)."""
    gathered: list[tuple[int, ...]] = []
    original = dist.all_reduce

    def spy(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        gathered.append(tuple(tensor.shape))
        return original(tensor, *args, **kwargs)

    model = _sharded(mesh)
    sharded_params = len(list(model.parameters()))
    counts = {}
    for guard in (False, True):
        config = ema.Config(schedule=ema.schedules.constant(0.5), guard_finite=guard)
        averaged = EMA(model, config=config)
        _bump(model, 1.0)
        gathered.clear()
        with monkeypatch.context() as patch:
            patch.setattr(dist, "all_reduce", spy)
            averaged.update()
        counts[guard] = list(gathered)
        assert averaged.step == 1
    assert counts[False] == []
    assert counts[True] == [(sharded_params,)]  # one count per sharded param, one all-reduce


@needs_fsdp2
@pytest.mark.slow
@pytest.mark.parametrize("how", ["replicated", "other mesh"])
def test_a_param_resharded_another_way_is_refused_at_update_and_swap(
    mesh: Any, other_mesh: Any, how: str
) -> None:
    """A ``ValueError`` naming the param and both layouts "at every ``update()`` and
    ``swap()``", the fix (a new EMA, ``full_state_dict()``), and nothing written: neither the
    shadows nor the module's param (``swap()`` puts nothing in)."""
    from torch.distributed.tensor import Replicate, Shard

    model = _sharded(mesh)
    averaged = EMA(model, decay=0.5)
    whole = model[0].weight.full_tensor().detach()
    on, placements = (mesh, [Replicate()]) if how == "replicated" else (other_mesh, [Shard(0)])
    model[0].weight = _dtensor_param(whole + 10, on, placements)
    shadows = _locals(averaged)
    for call in (averaged.update, lambda: averaged.swap().__enter__()) * 2:
        with pytest.raises(ValueError) as caught:
            call()
        message = str(caught.value)
        assert "'0.weight'" in message
        assert f"placements {tuple(placements)}" in message  # the param's layout
        assert "placements (Shard(dim=0),)" in message  # and its shadow's
        if how == "other mesh":
            assert "other=1" in message and str(mesh) in message
        assert "full_state_dict()" in message and "new EMA" in message
        for name, value in _locals(averaged).items():
            assert torch.equal(value, shadows[name]), f"{name} was written"
        assert torch.equal(model[0].weight.full_tensor(), whole + 10)  # swap put nothing in
    assert averaged.step == 0


@needs_fsdp2
@pytest.mark.slow
@pytest.mark.parametrize("how", ["replicated", "other mesh"])
def test_load_state_dict_of_another_layout_names_key_layouts_and_the_ways_out(
    mesh: Any, other_mesh: Any, how: str
) -> None:
    """ "``load_state_dict`` of a DTensor on other placements or another mesh names the key and
    both layouts (use ``dcp.load`` or ``full_state_dict()``)", before any write."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    averaged = EMA(_sharded(mesh), decay=0.5)
    state = averaged.state_dict()
    on, placements = (mesh, [Replicate()]) if how == "replicated" else (other_mesh, [Shard(0)])
    bad = distribute_tensor(state["shadow"]["2.weight"].full_tensor() + 1, on, placements)
    first = distribute_tensor(state["shadow"]["0.weight"].full_tensor() + 1, mesh, [Shard(0)])
    shadows = {**state["shadow"], "0.weight": first, "2.weight": bad}
    before = _locals(averaged)
    with pytest.raises(ValueError) as caught:
        averaged.load_state_dict({**state, "shadow": shadows})
    message = str(caught.value)
    assert "['2.weight']" in message
    assert f"placements {tuple(placements)}" in message and "(Shard(dim=0),)" in message
    assert "dcp.load" in message and "full_state_dict()" in message
    for name, value in _locals(averaged).items():
        assert torch.equal(value, before[name]), f"{name} was written"


@needs_fsdp2
@pytest.mark.slow
def test_copy_to_fills_a_dtensor_of_the_same_layout_and_names_full_tensor_for_a_plain_one(
    mesh: Any,
) -> None:
    """``copy_to`` "puts a sharded average only into a DTensor of the same layout (into a plain
    tensor it is refused ...: use ``average[name].full_tensor()`` on every rank)"."""
    model = _sharded(mesh)
    averaged = EMA(model, decay=0.5)
    _bump(model, 2.0)
    averaged.update()
    target = _sharded(mesh, seed=1)  # FSDP2 modules refuse deepcopy
    averaged.copy_to(target)
    for name, param in target.named_parameters():
        assert torch.equal(param.full_tensor(), averaged.average[name].full_tensor()), name
    plain = {n: torch.full(t.shape, 7.0) for n, t in averaged.average.items()}
    with pytest.raises(ValueError, match=r"average\[name\]\.full_tensor\(\) on every rank"):
        averaged.copy_to(plain)
    assert all(bool((t == 7.0).all()) for t in plain.values())  # nothing written
