"""``ema_core.backends.torch.EMA``: tracking, buffers, swap, copy_to, average, checkpoints."""

from __future__ import annotations

import io

import pytest

import ema_core
from ema_core import Config, schedules

torch = pytest.importorskip("torch")

from ema_core.torch import EMA  # noqa: E402
from ema_core.torch._prefixes import strip_all  # noqa: E402


def _net(dtype=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 2)
    )
    return model if dtype is None else model.to(dtype)


def _train_step(model, step):
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(8, 3, generator=gen).to(next(model.parameters()).dtype)
    model.train()
    loss = model(x).float().square().mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.1 * p.grad)
            p.grad = None


def _snapshot(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


CONFIGS = [
    Config(schedule=schedules.warmup(0.999), init="copy", buffers="average"),
    Config(schedule=schedules.num_updates(0.99), interval=3, buffers="average"),
    Config(schedule=0.9, interval=2, compensate=False, init="copy", buffers="average"),
    Config(schedule=schedules.warmup(0.99), init="zeros", correction="power", buffers="average"),
    Config(schedule=schedules.power_function(sigma_rel=0.05), dtype="same", buffers="average"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_update_equals_the_functional_core_bitwise(config, dtype):
    model = _net(dtype)
    ema = EMA(model, config=config)
    named = dict(model.named_parameters()) | dict(model.named_buffers())
    state = ema_core.init(named, config)
    for step in range(1, 8):
        _train_step(model, step)
        ema.update()
        state = ema_core.update(state, named, config)
    want = ema_core.average(state, config)
    for name, avg in ema.average.items():
        assert avg.dtype == want[name].dtype, name
        assert torch.equal(avg, want[name]), name
    assert ema.step == 7


def test_zeros_init_average_is_bias_corrected_like_the_core():
    model = _net()
    config = Config(schedule=schedules.num_updates(0.99), init="zeros", buffers="skip")
    ema = EMA(model, config=config)
    named = dict(model.named_parameters())
    state = ema_core.init(named, config)
    for step in range(1, 5):
        _train_step(model, step)
        ema.update(step)
        state = ema_core.update(state, named, config)
    want = ema_core.average(state, config)
    for name, avg in ema.average.items():
        assert torch.equal(avg, want[name]), name


@pytest.mark.parametrize("buffers", ["copy", "average", "skip"])
def test_batchnorm_buffers_follow_the_policy(buffers):
    model = _net()
    ema = EMA(model, decay=0.9, buffers=buffers)
    bn = model[1]
    mean_ref = bn.running_mean.clone()
    for step in range(1, 301):
        _train_step(model, step)
        ema.update()
        mean_ref += 0.1 * (bn.running_mean - mean_ref)
    if buffers == "skip":
        assert not any("running" in n or "num_batches" in n for n in ema.names)
        return
    avg = ema.average
    assert int(avg["1.num_batches_tracked"]) == 300 == int(bn.num_batches_tracked)
    if buffers == "copy":
        assert torch.equal(avg["1.running_mean"], bn.running_mean)
    else:
        assert not torch.equal(avg["1.running_mean"], bn.running_mean)
        torch.testing.assert_close(avg["1.running_mean"], mean_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_prefixes_of_ddp_and_torch_compile_are_removed():
    plain = _net()
    compiled = torch.compile(_net())
    assert EMA(compiled).names == EMA(plain).names
    assert strip_all(["_orig_mod.module.0.weight"]) == ["0.weight"]
    assert strip_all(["encoder.module.weight"]) == ["encoder.module.weight"]


def test_a_ddp_wrapped_module_tracks_the_plain_names():
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        # init_sync=False: with one rank the broadcast of its own weights is a no-op, and its
        # finished gloo work, freed on gloo's thread, could deadlock the group's teardown on
        # the GIL (pytorch/pytorch#56297; 150 set-ups in a row here hung)
        wrapped = torch.nn.parallel.DistributedDataParallel(_net(), init_sync=False)
        assert EMA(wrapped).names == EMA(_net()).names
        assert all(n.startswith("module.") for n, _ in wrapped.named_parameters())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("copy", [True, False])
def test_swap_is_bit_exact_and_aliases_storage_only_with_copy_false(copy):
    model = _net()
    ema = EMA(model, decay=0.5)
    _train_step(model, 1)
    ema.update()
    live = _snapshot(model)
    pointers = {n: p.data_ptr() for n, p in model.named_parameters()}
    shadows = ema.average
    with ema.swap(copy=copy):
        for name, p in model.named_parameters():
            # copy=True keeps the model's storage; copy=False points it at the shadow's
            want = pointers[name] if copy else shadows[name].data_ptr()
            assert p.data_ptr() == want
            assert torch.equal(p, shadows[name])
    for name, p in model.named_parameters():
        assert p.data_ptr() == pointers[name]
    for name, value in _snapshot(model).items():
        assert torch.equal(value, live[name]), name
    with ema.swap(copy=copy):
        pass
    for name, value in _snapshot(model).items():
        assert torch.equal(value, live[name]), name


def test_swap_restores_the_live_weights_after_an_exception():
    model = _net()
    ema = EMA(model, decay=0.5)
    _train_step(model, 1)
    ema.update()
    live = _snapshot(model)
    with pytest.raises(ZeroDivisionError), ema.swap():
        assert not torch.equal(model[0].weight, live["0.weight"])
        1 / 0  # noqa: B018
    for name, value in _snapshot(model).items():
        assert torch.equal(value, live[name]), name
    with ema.swap():  # usable again
        pass


def test_swap_of_bf16_params_gives_the_rounded_fp32_average():
    model = _net(torch.bfloat16)
    ema = EMA(model, decay=0.9)
    assert ema.average["0.weight"].dtype == torch.float32
    _train_step(model, 1)
    ema.update()
    before = model[0].weight.detach().clone()
    with ema.swap():
        assert model[0].weight.dtype == torch.bfloat16
        assert torch.equal(model[0].weight, ema.average["0.weight"].bfloat16())
    assert torch.equal(model[0].weight, before)


def test_update_and_nested_swap_are_refused_inside_swap():
    ema = EMA(_net())
    with ema.swap():
        with pytest.raises(RuntimeError, match="inside swap"):
            ema.update()
        with pytest.raises(RuntimeError, match="inside swap"), ema.swap():
            pass


def test_copy_to_writes_averages_into_another_module():
    model, other = _net(), _net(torch.float64)
    ema = EMA(model, decay=0.5, buffers="average")
    _train_step(model, 1)
    ema.update()
    ema.copy_to(other)
    for name, avg in ema.average.items():
        assert torch.equal(other.state_dict()[name], avg.to(torch.float64)), name
    with pytest.raises(ValueError, match="copy_to"):
        ema.copy_to(torch.nn.Linear(3, 6))


def _run(ema, model, steps):
    for step in steps:
        _train_step(model, step)
        ema.update()


def test_state_dict_resumes_bit_identically_through_torch_save():
    config = Config(schedule=schedules.warmup(0.99), init="zeros")
    model_a, model_b = _net(), _net()
    straight = EMA(model_a, config=config)
    _run(straight, model_a, range(1, 11))
    first = EMA(model_b, config=config)
    _run(first, model_b, range(1, 6))
    buffer = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "ema": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model_c = _net()
    model_c.load_state_dict(saved["model"])
    resumed = EMA(model_c, config=config)
    live_before = _snapshot(model_c)
    resumed.load_state_dict(saved["ema"])
    assert all(torch.equal(v, live_before[n]) for n, v in _snapshot(model_c).items())
    assert resumed.step == 5
    _run(resumed, model_c, range(6, 11))
    for name, avg in straight.average.items():
        assert torch.equal(resumed.average[name], avg), name


def _broken(state, **changes):
    out = dict(state, **changes)
    return out


def test_load_state_dict_checks_everything_before_writing():
    model = _net()
    ema = EMA(model, decay=0.9)
    good = {k: (dict(v) if isinstance(v, dict) else v) for k, v in ema.state_dict().items()}
    before = {n: t.clone() for n, t in ema.average.items()}
    shadow = dict(good["shadow"])
    bad_shape = dict(shadow, **{"0.weight": torch.zeros(2, 2)})
    bad_dtype = dict(shadow, **{"0.weight": shadow["0.weight"].double()})
    missing = {n: t for n, t in shadow.items() if n != "0.bias"}
    cases = [
        (_broken(good, version=99), ValueError, "version"),
        (_broken(good, shadow=bad_shape), ValueError, "shape"),
        (_broken(good, shadow=bad_dtype), ValueError, "dtype"),
        (_broken(good, shadow=missing), ValueError, "missing"),
        (_broken(good, config="Config(other)"), ValueError, "config"),
        (_broken(good, step=1.5), TypeError, "step"),
        ({k: v for k, v in good.items() if k != "weight"}, ValueError, "weight"),
        ([1, 2], TypeError, "dict"),
    ]
    for state, error, words in cases:
        with pytest.raises(error, match=words):
            ema.load_state_dict(state)
    for name, t in ema.average.items():
        assert torch.equal(t, before[name])
    ema.load_state_dict(_broken(good, shadow=missing, config="Config(other)"), strict=False)


@pytest.mark.parametrize(
    ("dtype", "want"),
    [(None, torch.float32), ("same", torch.bfloat16), (torch.float64, torch.float64)],
)
def test_shadow_dtype_policy(dtype, want):
    ema = EMA(_net(torch.bfloat16), dtype=dtype)
    assert ema.average["0.weight"].dtype == want
    assert ema.average["1.num_batches_tracked"].dtype == torch.int64


def test_named_tensors_include_and_exclude():
    model = _net()
    plain = tuple(n for n, _ in model.named_parameters())
    assert EMA(dict(model.named_parameters())).names == plain
    assert EMA(list(model.named_parameters()), include="0.*").names == ("0.weight", "0.bias")
    names = EMA(model, exclude=["*.bias", "1.*"]).names
    assert names == ("0.weight", "3.weight")
    assert EMA(model, include=lambda n: n.endswith("bias"), buffers="skip").names == (
        "0.bias",
        "1.bias",
        "3.bias",
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"decay": 1.5}, ValueError, "decay"),
        ({"decay": 0.9, "schedule": 0.9}, TypeError, "at most one"),
        ({"buffers": "mean"}, ValueError, "buffers"),
        ({"include": 3}, TypeError, "include"),
        ({"include": "nothing*"}, ValueError, "no tensors"),
        ({"config": 0.9}, TypeError, "config"),
        ({"dtype": "int8"}, ValueError, "dtype"),
        ({"config": Config(non_float="error")}, TypeError, "non_float"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, words):
    with pytest.raises(error, match=words):
        EMA(_net(), **kwargs)


def test_bad_steps_and_sources_raise_and_change_nothing():
    model = _net()
    ema = EMA(model, decay=0.5)
    _train_step(model, 1)
    before = {n: t.clone() for n, t in ema.average.items()}
    for step, error in ((-1, ValueError), (1.5, TypeError), (torch.tensor([1, 2]), TypeError)):
        with pytest.raises(error, match="step"):
            ema.update(step)
    assert all(torch.equal(t, before[n]) for n, t in ema.average.items())
    with pytest.raises(TypeError, match="module_or_named_tensors"):
        EMA(torch.zeros(3))
    with pytest.raises(ValueError, match="two tensors"):
        EMA([("a", torch.zeros(1)), ("_orig_mod.a", torch.zeros(1))])
    # a leading module. goes only when every name has one (a DDP model's state_dict)
    assert EMA([("a", torch.zeros(1)), ("module.a", torch.zeros(1))]).names == ("a", "module.a")
    assert EMA([("module.a", torch.zeros(1)), ("module.b", torch.zeros(1))]).names == ("a", "b")


def test_non_float_freeze_leaves_integer_tensors_alone():
    model = _net()
    ema = EMA(model, config=Config(schedule=0.5, non_float="freeze", buffers="copy"))
    _run(ema, model, range(1, 4))
    assert int(ema.average["1.num_batches_tracked"]) == 0
    assert torch.equal(ema.average["1.running_mean"], model[1].running_mean)


def test_host_device_shadow_on_a_cpu_model_is_an_ordinary_ema():
    model = _net()
    ema = EMA(model, decay=0.5, device="cpu")
    _run(ema, model, [1])
    assert not ema.average["0.weight"].is_pinned()
    assert type(ema._bound.store).__name__ == "Local"


def test_fsdp2_sharded_params_are_averaged_and_swapped_in_their_shards():
    dist = pytest.importorskip("torch.distributed")
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    if not (dist.is_available() and hasattr(fsdp, "fully_shard")):
        pytest.skip("FSDP2 (torch.distributed.fsdp.fully_shard) is not available")
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        plain, sharded = _net(torch.bfloat16), _net(torch.bfloat16)
        fsdp.fully_shard(sharded, mesh=init_device_mesh("cpu", (1,)))
        ema_plain, ema_sharded = EMA(plain, decay=0.5), EMA(sharded, decay=0.5)
        for model in (plain, sharded):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        ema_plain.update()
        ema_sharded.update()
        weight = sharded[0].weight
        assert type(weight.detach()) is not torch.Tensor  # a DTensor, not a plain tensor
        live = weight.full_tensor().clone()
        average = ema_sharded.average["0.weight"].full_tensor()
        assert torch.equal(average, ema_plain.average["0.weight"])
        with ema_sharded.swap():
            assert torch.equal(weight.full_tensor(), average.bfloat16())
        assert torch.equal(weight.full_tensor(), live)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("decay", [0.0, 0.7, 1.0, "tensor"])
def test_remote_store_computes_what_the_local_store_does(decay):
    """The pinned-host path (``Remote``) run with both sides on the CPU: its per-tensor
    round trip through a work tensor gives the local result bit for bit (the CUDA parts, pinned
    memory and the event, are in tests/test_torch_gpu.py)."""
    import array_api_compat.torch as xp

    from ema_core.torch import _store

    gen = torch.Generator().manual_seed(3)
    live = [torch.randn(5, 3, generator=gen).bfloat16(), torch.randn(4, generator=gen)]
    live.append(torch.tensor(9))
    kinds = ["float", "float", "exact"]
    a = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen), torch.tensor(2)]
    b = [t.clone() for t in a]
    d = torch.tensor(0.25, dtype=torch.float64) if decay == "tensor" else decay
    _store.Local(a, live, kinds).apply(xp, d, 1.0 - d)
    remote = _store.Remote(b, live, kinds)
    remote.apply(xp, d, 1.0 - d)
    remote.wait()
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
