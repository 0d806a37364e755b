"""save / load / load_peer / export given hostile but plausible arguments: each is refused with a
TypeError or ValueError naming the argument, before anything is written (an existing file stays
as it was, no file appears; an EMA keeps its bits), or handled exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ema_core as ema
from ema_core._types import EMAState
from ema_core.checkpoint import load, save

torch = pytest.importorskip("torch")
from ema_core import presets  # noqa: E402
from ema_core.checkpoint import export, load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

W = {"w": np.ones(2, np.float32)}


def state(step, weight):
    return EMAState(step, {"w": np.ones(2, np.float32)}, weight)


@pytest.fixture
def old_file(tmp_path):
    path = tmp_path / "e.safetensors"
    path.write_bytes(b"the old checkpoint")
    return path


def assert_only_old_file(path):
    assert path.read_bytes() == b"the old checkpoint"
    assert os.listdir(path.parent) == [path.name]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (state(-1, 1.0), ValueError, r"ema_or_state\.step must be in \[0, 2\*\*63 - 1\], got -1"),
        (
            state(2**64, 1.0),
            ValueError,
            r"ema_or_state\.step must be in \[0, 2\*\*63 - 1\], got 1844",
        ),
        (state(np.float32(3), 1.0), TypeError, r"ema_or_state\.step must have an integer dtype"),
        (
            state(0, float("nan")),
            ValueError,
            r"ema_or_state\.weight must be in \[0, 1\] \(the bias-.*got nan",
        ),
        (
            state(0, 2.0),
            ValueError,
            r"ema_or_state\.weight must be in \[0, 1\] \(the bias-.*got 2\.0",
        ),
        (state(0, np.asarray(1)), TypeError, r"ema_or_state\.weight must have a floating dtype"),
        (state(np.asarray(True), 1.0), TypeError, r"ema_or_state\.step must have an integer dtype"),
        (state(torch.tensor(-3), 1.0), ValueError, r"ema_or_state\.step must be in .*got -3"),
    ],
    ids=["neg-step", "huge-step", "float-step", "nan-w", "big-w", "int-w", "bool-step", "torch"],
)
def test_save_refuses_a_step_or_weight_load_would_refuse(old_file, value, error, message):
    with pytest.raises(error, match=message):
        save(old_file, value)
    assert_only_old_file(old_file)


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        (None, TypeError, r"path must be a str or os\.PathLike, got NoneType"),
        (3, TypeError, r"path must be a str or os\.PathLike, got int"),
        ("", ValueError, r"path must name a file, got ''"),
    ],
)
def test_save_and_load_name_a_bad_path(path, error, message):
    with pytest.raises(error, match=message):
        save(path, ema.init(W))
    with pytest.raises(error, match=message):
        load(path, ema.init(W))


def test_save_onto_a_directory_is_refused_before_writing(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match=r"path .*d' is a directory; save writes a file"):
        save(tmp_path / "d", ema.init(W))
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == []


def test_big_endian_numpy_leaves_round_trip_exactly(tmp_path):
    values = np.array([1.5, -2.25, 3e38], dtype=">f4")
    path = save(tmp_path / "b", EMAState(0, {"w": values}, 1.0))
    native = load(path, EMAState(0, {"w": np.zeros(3, np.float32)}, 1.0)).shadow["w"]
    assert native.dtype == np.float32 and np.array_equal(native, values)
    back = load(path, EMAState(0, {"w": np.zeros(3, ">f4")}, 1.0)).shadow["w"]
    assert back.dtype == np.dtype(">f4") and np.array_equal(back, values)


@pytest.mark.parametrize(
    ("like", "message"),
    [
        (EMAState(True, {"w": np.zeros(2, np.float32)}, 1.0), r"like\.step must be an int or"),
        (EMAState(None, {"w": np.zeros(2, np.float32)}, 1.0), r"like\.step must be an int or"),
        (EMAState(0, {"w": np.zeros(2, np.float32)}, 1), r"like\.weight must be a float or"),
        (EMAState(0, {"w": np.zeros(2, np.float32)}, np.asarray(1)), r"like\.weight must be a"),
    ],
    ids=["bool-step", "none-step", "int-weight", "int-array-weight"],
)
def test_load_refuses_a_like_step_or_weight_it_would_truncate(tmp_path, like, message):
    path = save(tmp_path / "e", state(3, 0.5))
    with pytest.raises(TypeError, match=message):
        load(path, like)


def peer_setup():
    model = torch.nn.Linear(2, 1)
    averaged = EMA(model, config=presets.torch_ema(0.99))
    with torch.no_grad():
        model.weight.add_(1.0)
    averaged.update()
    before = {n: t.clone() for n, t in averaged.state_dict()["shadow"].items()}
    peer = {"decay": 0.99, "num_updates": 7, "collected_params": None,
            "shadow_params": [torch.ones(1, 2), torch.zeros(1)]}  # fmt: skip
    return averaged, before, peer


def assert_same(averaged, before):
    assert averaged.step == 1
    for name, t in averaged.state_dict()["shadow"].items():
        assert torch.equal(t, before[name]), name


def test_load_peer_refuses_a_meta_tensor(tmp_path):
    averaged, before, peer = peer_setup()
    peer["shadow_params"][0] = torch.ones(1, 2, device="meta")
    with pytest.raises(ValueError, match=r"the torch_ema state's 'weight' is a meta tensor"):
        load_peer(averaged, peer, peer="torch_ema")
    assert_same(averaged, before)


@pytest.mark.parametrize("decay", [np.array([0.99, 0.99]), torch.tensor([0.99, 0.5])])
def test_load_peer_args_that_are_arrays_are_refused_by_name(decay):
    averaged, before, peer = peer_setup()
    with pytest.raises(ValueError, match=r"args disagree with the torch_ema state: decay: state"):
        load_peer(averaged, peer, peer="torch_ema", args={"decay": decay})
    assert_same(averaged, before)


@pytest.mark.parametrize("where", ["file", "under-a-file", "empty"])
def test_export_diffusers_refuses_a_path_that_is_no_folder(tmp_path, where):
    averaged = EMA(torch.nn.Linear(2, 1), config=presets.diffusers())
    blocker = tmp_path / "afile"
    blocker.write_text("keep")
    path = {"file": blocker, "under-a-file": blocker / "sub", "empty": ""}[where]
    message = r"path must name a folder, got ''" if where == "empty" else r"is not a folder"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ValueError, match=message):
            export(averaged, format="diffusers", path=path, model_config={})
    finally:
        os.chdir(cwd)
    assert os.listdir(tmp_path) == ["afile"] and blocker.read_text() == "keep"
