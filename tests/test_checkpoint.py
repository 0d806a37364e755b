"""ema_core.checkpoint: save / load round trips, the file format, and every refusal."""

from __future__ import annotations

import copy
import json
from collections import namedtuple

import numpy as np
import pytest

import ema_core as ema
from ema_core import _safetensors
from ema_core.checkpoint import load, save

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
from ema_core.torch import EMA  # noqa: E402

Pair = namedtuple("Pair", ["first", "second"])


def nest(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "layer": [rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(4)],
        "a/b": Pair(rng.integers(0, 9, 5), rng.random(2) > 0.5),  # an int and a bool leaf
        "a": {"b": np.float32(rng.standard_normal()) * np.ones((), np.float32)},
        "~": rng.standard_normal(1).astype(np.float16),
    }


def model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    return net.to(dtype)


def train(net, ema_, steps):
    for _ in range(steps):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(5, 4, dtype=next(net.parameters()).dtype))  # moves BatchNorm buffers
        ema_.update()


def same_ema(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["config"] == sb["config"] and torch.equal(sa["step"], sb["step"])
    assert torch.equal(sa["weight"], sb["weight"]) and list(sa["shadow"]) == list(sb["shadow"])
    for name, t in sa["shadow"].items():
        u = sb["shadow"][name]
        assert t.dtype == u.dtype and torch.equal(
            t.view(-1).view(torch.uint8), u.view(-1).view(torch.uint8)
        ), name


def test_numpy_state_round_trip_bit_exact(tmp_path):
    cfg = ema.Config(schedule=0.75, init="zeros")
    state = ema.init(nest(0), cfg)
    for seed in (1, 2, 3):
        state = ema.update(state, nest(seed), cfg)
    path = save(tmp_path / "s.safetensors", state, cfg)
    like = ema.init(nest(9), cfg)
    back = load(path, like, config=cfg)
    assert (
        type(back) is ema.EMAState and int(back.step) == 3 and back.step.dtype == state.step.dtype
    )
    assert back.weight.dtype == np.float64 and float(back.weight) == float(state.weight)
    assert isinstance(back.shadow["a/b"], Pair)
    for got, want in zip(
        ema._tree.flatten(back.shadow)[0], ema._tree.flatten(state.shadow)[0], strict=True
    ):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
        assert got.flags.writeable  # the user may update it in place
    with _safetensors.Reader(path) as reader:  # escaped names: no two paths collide
        assert set(reader.entries) == {
            "shadow/layer/0",
            "shadow/layer/1",
            "shadow/a~1b/first",
            "shadow/a~1b/second",
            "shadow/a/b",
            "shadow/~0",
            "step",
            "weight",
        }


def test_metadata_and_the_safetensors_package_read_the_file(tmp_path):
    cfg = ema.Config(schedule=lambda t: 0.5)
    state = ema.init({"w": np.arange(3.0)}, cfg)
    path = save(tmp_path / "s.safetensors", state, cfg, metadata={"run": "r1", "note": "é"})
    arrays = safetensors_numpy.load_file(path)
    assert sorted(arrays) == ["shadow/w", "step", "weight"]
    np.testing.assert_array_equal(arrays["shadow/w"], np.arange(3.0))
    with _safetensors.Reader(path) as reader:
        meta = reader.metadata
    assert (
        meta["ema_core.format"] == "ema_core.checkpoint" and meta["ema_core.format_version"] == "1"
    )
    assert meta["ema_core.library_version"] == ema.__version__
    assert meta["ema_core.source"] == "EMAState" and meta["ema_core.framework"] == "numpy"
    assert json.loads(meta["ema_core.dtypes"]) == {
        "shadow/w": "float64",
        "step": "int64",
        "weight": "float64",
    }
    assert " at 0x" not in meta["ema_core.config"] and "<lambda>" in meta["ema_core.config"]
    assert meta["run"] == "r1" and meta["note"] == "é"


def test_reader_reads_a_file_of_the_safetensors_package(tmp_path):
    import safetensors.torch

    x = torch.randn(3, 5).to(torch.bfloat16)
    safetensors.torch.save_file(
        {"x": x, "n": torch.tensor(7)}, tmp_path / "p.safetensors", {"k": "v"}
    )
    with _safetensors.Reader(tmp_path / "p.safetensors") as reader:
        assert reader.metadata == {"k": "v"}
        bits = reader.read("x")
        assert reader.read("n").item() == 7
    assert bits.dtype == np.uint16 and torch.equal(
        torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16), x
    )


def twin_steps(nets, emas, steps, seed):
    """The same random training steps on each (identical) model, then its EMA's update."""
    for net, ema_ in zip(nets, emas, strict=True):
        torch.manual_seed(seed)
        train(net, ema_, steps)


@pytest.mark.parametrize("dtype", ["same", None])
def test_torch_ema_round_trip_and_continue(tmp_path, dtype):
    net = model(torch.bfloat16)
    first = EMA(net, decay=0.9, dtype=dtype)
    train(net, first, 3)
    path = save(tmp_path / "e.safetensors", first)
    twin = copy.deepcopy(net)
    second = EMA(twin, decay=0.9, dtype=dtype)  # shadows = the live weights, step 0
    assert load(path, second) is second
    same_ema(first, second)
    if dtype == "same":
        assert second.average["0.weight"].dtype == torch.bfloat16  # bf16 stayed bf16
    for seed in range(3):
        twin_steps([net, twin], [first, second], 1, seed)
        same_ema(first, second)


def test_import_and_numpy_round_trip_import_no_framework(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, ema_core as ema\n"
        "from ema_core.checkpoint import load, save\n"
        "p = save(sys.argv[1], ema.init({'w': np.ones(2)}))\n"
        "load(p, ema.init({'w': np.zeros(2)}))\n"
        "print(sorted(m for m in ('torch', 'jax', 'cupy', 'safetensors') if m in sys.modules))\n"
        "from ema_core.checkpoint import load_peer, export\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "n")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split("\n")[:2] == ["[]", "True"]
