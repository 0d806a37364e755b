"""ema_core.checkpoint refusals: bad arguments, mismatched EMAs and states, files that are not
ema-core checkpoints, sharded EMAs; a refused load writes nothing, a refused save no file."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

import ema_core as ema
from ema_core import _safetensors
from ema_core.checkpoint import load, save

torch = pytest.importorskip("torch")
from ema_core.torch import EMA, full_state_dict  # noqa: E402
from tests.test_checkpoint import model, same_ema, train  # noqa: E402


def shadows_bytes(ema_):
    return {n: t.clone() for n, t in ema_.state_dict()["shadow"].items()}


def assert_untouched(ema_, before, step):
    assert ema_.step == step
    for name, t in shadows_bytes(ema_).items():
        assert torch.equal(t, before[name]), name


@pytest.fixture
def saved(tmp_path):
    net = model()
    first = EMA(net, decay=0.9)
    train(net, first, 2)
    return save(tmp_path / "e.safetensors", first), net


def test_load_refusals_leave_the_ema_untouched(saved, tmp_path):
    path, net = saved
    target = EMA(copy.deepcopy(net), decay=0.9)
    before = shadows_bytes(target)
    with pytest.raises(
        ValueError,
        match=r"state_dict\['config'\] differs from this EMA's config: schedule\.decay: 0\.5 in "
        r"this EMA, 0\.9 in state_dict;",
    ):
        load(path, EMA(copy.deepcopy(net), decay=0.5))
    with pytest.raises(
        ValueError, match=r"e\.safetensors: .*missing \[\].*unexpected \['2\.weight', '2\.bias'\]"
    ):
        load(path, EMA(copy.deepcopy(net), decay=0.9, exclude="2.*"))
    other = model(torch.float64)
    with pytest.raises(
        ValueError,
        match=r"\['0\.weight'\] has shape \(3, 4\) dtype torch\.float32; this EMA's shadow "
        r"has shape \(3, 4\) dtype torch\.float64",
    ):
        load(path, EMA(other, decay=0.9))
    wider = torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2)
    )
    with pytest.raises(
        ValueError,
        match=r"has shape \(3, 4\) dtype torch\.float32; this EMA's shadow has shape \(5, 4\)",
    ):
        load(path, EMA(wider, decay=0.9))
    with pytest.raises(ValueError, match="config must be None when loading into an EMA"):
        load(path, target, config=ema.Config())
    assert_untouched(target, before, 0)
    partial = EMA(copy.deepcopy(net), decay=0.9, exclude="2.*")
    load(path, partial, strict=False)  # the names both have
    assert partial.step == 2 and set(partial.names) < set(shadows_bytes(target))


def test_bad_arguments(saved, tmp_path):
    path, net = saved
    state = ema.init({"w": np.ones(2)})
    with pytest.raises(
        TypeError, match=r"like must be an ema_core\.torch\.EMA or an ema_core\.EMAState, got dict"
    ):
        load(path, {"w": np.ones(2)})
    with pytest.raises(
        TypeError,
        match=r"ema_or_state must be an ema_core\.torch\.EMA, its state_dict\(\) or an "
        r"ema_core\.EMAState, got Linear",
    ):
        save(tmp_path / "x", torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="config must be None when saving an EMA"):
        save(tmp_path / "x", EMA(net), ema.Config())
    with pytest.raises(TypeError, match=r"config must be an ema_core\.Config or None, got float"):
        save(tmp_path / "x", state, 0.9)
    with pytest.raises(TypeError, match=r"metadata must map str to str, got str 'step' -> int 3"):
        save(tmp_path / "x", state, metadata={"step": 3})
    with pytest.raises(TypeError, match="metadata must be a mapping of str to str, got list"):
        save(tmp_path / "x", state, metadata=["a"])
    with pytest.raises(
        ValueError, match=r"metadata key 'ema_core\.config' starts with 'ema_core\.'"
    ):
        save(tmp_path / "x", state, metadata={"ema_core.config": "x"})
    with pytest.raises(TypeError, match=r"ema_or_state 'shadow/w' has dtype complex128"):
        save(tmp_path / "x", ema.EMAState(0, {"w": np.ones(2, complex)}, 1.0))
    with pytest.raises(
        TypeError, match=r"ema_or_state 'shadow/w/0/0' is a float; save writes numpy, torch"
    ):
        save(tmp_path / "x", ema.EMAState(0, {"w": [[1.0]]}, 1.0))
    with pytest.raises(
        ValueError,
        match=r"ema_or_state\.shadow\[0\] and ema_or_state\.shadow\['0'\] would both be saved "
        r"as 'shadow/0'",
    ):
        save(tmp_path / "x", ema.EMAState(0, {0: np.ones(1), "0": np.ones(1)}, 1.0))
    with pytest.raises(TypeError, match="strict must be a bool"):
        load(path, state, strict=1)
    assert os.listdir(tmp_path) == ["e.safetensors"]  # nothing written by a refused save


def test_state_refusals(tmp_path):
    cfg = ema.Config(schedule=0.5)
    path = save(tmp_path / "s", ema.init({"w": np.ones(2, np.float32), "v": np.ones(3)}), cfg)
    with pytest.raises(
        ValueError,
        match=r"like has \['shadow/u'\] that the file lacks, the file has \['shadow/v'\]",
    ):
        load(path, ema.init({"w": np.ones(2, np.float32), "u": np.ones(3)}))
    with pytest.raises(
        ValueError,
        match=r"'shadow/w' has shape \(2,\) dtype float32; like\.shadow\['w'\] has shape \(2,\) "
        r"dtype float64",
    ):
        load(path, ema.init({"w": np.ones(2), "v": np.ones(3)}))
    with pytest.raises(
        ValueError,
        match=r"'shadow/v' has shape \(3,\) dtype float64; like\.shadow\['v'\] has shape \(4,\)",
    ):
        load(path, ema.init({"w": np.ones(2, np.float32), "v": np.ones(4)}))
    with pytest.raises(
        ValueError,
        match=r"was saved with another config: schedule\.decay: 0\.25 in config, 0\.5 in "
        r".*; pass the config the state was saved with \(to the EMA, EMACallback or "
        r"load/check\), or config=None to load without comparing \(the file's config is "
        r".*Constant\(decay=0\.5\)",
    ):
        load(
            path,
            ema.init({"w": np.ones(2, np.float32), "v": np.ones(3)}),
            config=ema.Config(schedule=0.25),
        )
    bare = save(tmp_path / "b", ema.init({"w": np.ones(2)}))
    with pytest.raises(ValueError, match=r"holds no config \(saved with config=None\)"):
        load(bare, ema.init({"w": np.ones(2)}), config=cfg)
    small = ema.EMAState(np.zeros((), np.int8), {"w": np.ones(2)}, np.ones(()))
    big = save(tmp_path / "big", ema.EMAState(np.asarray(300), {"w": np.ones(2)}, np.ones(())))
    with pytest.raises(ValueError, match=r"step 300 does not fit like\.step's dtype int8"):
        load(big, small)
    loose = load(path, ema.init({"w": np.zeros(2, np.float32), "u": np.zeros(3)}), strict=False)
    assert loose.shadow["w"].tolist() == [1.0, 1.0] and loose.shadow["u"].tolist() == [0.0] * 3


def write_raw(path, metadata, tensors=None):
    tensors = tensors or {"step": np.asarray(1), "weight": np.asarray(1.0), "shadow/w": np.ones(2)}
    codes = {"int64": "I64", "float64": "F64"}
    specs = [(n, codes[a.dtype.name], a.shape) for n, a in tensors.items()]
    with open(path, "wb") as f:
        _safetensors.write(f, specs, list(tensors.values()), metadata)
    return path


def test_files_that_are_not_ema_core_checkpoints(tmp_path):
    like = ema.init({"w": np.zeros(2)})
    ours = {"ema_core.format": "ema_core.checkpoint", "ema_core.format_version": "1"}
    assert load(write_raw(tmp_path / "ok", ours), like).shadow["w"].tolist() == [1.0, 1.0]
    with pytest.raises(
        ValueError,
        match=r"plain is not an ema-core checkpoint: its metadata has ema_core\.format = None",
    ):
        load(write_raw(tmp_path / "plain", {"format": "pt"}), like)
    with pytest.raises(
        ValueError, match="format version 2; this ema-core reads versions up to 1: upgrade"
    ):
        load(write_raw(tmp_path / "new", {**ours, "ema_core.format_version": "2"}), like)
    with pytest.raises(ValueError, match=r"ema_core\.format_version = 'x'"):
        load(write_raw(tmp_path / "odd", {**ours, "ema_core.format_version": "x"}), like)
    (tmp_path / "junk").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="junk is not a safetensors file: its header is not JSON"):
        load(tmp_path / "junk", like)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty is not a safetensors file \(header length -1"):
        load(tmp_path / "empty", like)
    full = (tmp_path / "ok").read_bytes()
    (tmp_path / "torn").write_bytes(full[:-3])
    with pytest.raises(ValueError, match="torn is truncated or padded"):
        load(tmp_path / "torn", like)
    negative = {"step": np.asarray(-1), "weight": np.asarray(1.0), "shadow/w": np.ones(2)}
    with pytest.raises(ValueError, match="'step' must be >= 0, got -1"):
        load(write_raw(tmp_path / "neg", ours, negative), like)
    odd = {
        "step": np.asarray(1),
        "weight": np.asarray(1.0),
        "shadow/w": np.ones(2),
        "extra": np.ones(1),
    }
    with pytest.raises(ValueError, match="holds a tensor 'extra': not a shadow, step or weight"):
        load(write_raw(tmp_path / "extra", ours, odd), like)


def test_a_state_dict_saves_like_its_ema(tmp_path, saved):
    _, net = saved
    first = EMA(net, decay=0.9)
    train(net, first, 1)
    second = EMA(copy.deepcopy(net), decay=0.9)
    load(save(tmp_path / "d", first.state_dict()), second)
    same_ema(first, second)
    broken = {**first.state_dict(), "step": torch.tensor(-1)}
    with pytest.raises(ValueError, match=r"state_dict\['step'\] must be >= 0"):
        save(tmp_path / "d", broken)


def test_sharded_ema_is_not_gathered_silently(tmp_path):
    import torch.distributed as dist
    from torch.distributed import fsdp
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        net = torch.nn.Linear(3, 2)
        fsdp.fully_shard(net, mesh=init_device_mesh("cpu", (1,)))
        sharded = EMA(net, decay=0.5)
        with pytest.raises(
            ValueError,
            match=r"DTensor \(sharded, FSDP2\): save it with torch\.distributed\.checkpoint",
        ):
            save(tmp_path / "f", sharded)
        assert os.listdir(tmp_path) == []
        full = full_state_dict(sharded)
        full["shadow"]["weight"] += 1.0
        other = EMA(torch.nn.Linear(3, 2), decay=0.5)
        other.load_state_dict(full)
        load(save(tmp_path / "f", other), sharded)  # each rank cuts its shard from the file
        assert torch.equal(sharded.average["weight"].full_tensor(), full["shadow"]["weight"])
    finally:
        dist.destroy_process_group()
