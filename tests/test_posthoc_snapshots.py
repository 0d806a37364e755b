"""Post-hoc EMA snapshots: save_snapshot / list_snapshots, every storage dtype and framework."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ema_core import _atomic
from ema_core._safetensors import Reader, bf16_to_float32, float32_to_bf16
from ema_core.posthoc import list_snapshots, save_snapshot, sigma_rel_to_gamma

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

STORAGE = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _values(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, 5)) * 10.0 ** rng.integers(-6, 6, size=(3, 5))
    x[0, :4] = [np.inf, -np.inf, 1 + 2**-8, 3.3e38]  # a tie, and a value bf16 rounds to inf
    return x.astype(np.float32)


def _as(framework, x):
    if framework == "numpy":
        return x
    if framework == "torch":
        return torch.from_numpy(x.copy())
    if framework == "jax":
        jnp = pytest.importorskip("jax.numpy")
        return jnp.asarray(x)
    if framework == "cupy":
        cupy = pytest.importorskip("cupy", reason="CuPy is not installed (needs a CUDA device)")
        return cupy.asarray(x)
    xp = pytest.importorskip("array_api_strict")
    return xp.asarray(x)


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax", "array_api_strict", "cupy"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_round_trip(tmp_path, framework, dtype):
    x = _values()
    count = np.arange(4, dtype=np.int32) * 2**29
    path = save_snapshot(
        tmp_path,
        {"w": _as(framework, x), "n": _as(framework, count), "f": _as(framework, x < 0)},
        step=300,
        sigma_rel=0.05,
        dtype=dtype,
    )
    want = torch.from_numpy(x).to(STORAGE[dtype])  # torch rounds to nearest, ties to even
    loaded = safetensors_torch.load_file(path)
    assert loaded["w"].dtype == STORAGE[dtype]
    assert torch.equal(loaded["w"], want)
    assert torch.equal(loaded["n"], torch.from_numpy(count))
    assert torch.equal(loaded["f"], torch.from_numpy(x < 0))
    with Reader(path) as reader:
        mine = reader.read("w")
        assert reader.read("n").tolist() == count.tolist()
    if dtype == "bfloat16":  # the reader gives bfloat16 as its bit patterns
        assert mine.dtype == np.uint16
        mine = bf16_to_float32(mine)
    np.testing.assert_array_equal(mine, want.to(torch.float64).numpy())
    (info,) = list_snapshots(tmp_path)
    assert info.framework == framework
    assert info.dtypes == ("float32", "int32", "bool")


@pytest.mark.parametrize("source", [torch.float16, torch.bfloat16, torch.float64])
def test_source_dtypes_are_recorded_and_stored_as_float32(tmp_path, source):
    x = torch.from_numpy(_values()[1:]).to(source)
    save_snapshot(tmp_path, {"w": x}, step=1, sigma_rel=0.1)
    (info,) = list_snapshots(tmp_path)
    assert info.dtypes == (str(source).removeprefix("torch."),)
    loaded = safetensors_torch.load_file(info.path)["w"]
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded, x.to(torch.float32))


def test_bf16_bits_match_torch_nan_included():
    x = np.array([np.nan, -np.nan, 1.0, -0.0, 1e-40, 65504.0, 1 + 3 * 2**-9], np.float32)
    bits = float32_to_bf16(x)
    want = torch.from_numpy(x).to(torch.bfloat16)
    assert np.isnan(bf16_to_float32(bits[:2])).all()
    assert bits[2:].tolist() == want[2:].view(torch.int16).numpy().view(np.uint16).tolist()


def test_metadata(tmp_path):
    sigma = 0.07123456789012345
    path = save_snapshot(tmp_path, [np.ones(2)], step=1200, sigma_rel=sigma, interval=4)
    assert path.name == f"phema-0000001200-{sigma!r}.safetensors"
    from safetensors import safe_open

    with safe_open(path, "np") as f:
        meta = f.metadata()
    assert float(meta["sigma_rel"]) == sigma and float(meta["gamma"]) == sigma_rel_to_gamma(sigma)
    assert (meta["step"], meta["interval"], json.loads(meta["names"])) == ("1200", "4", ["0"])
    assert meta["format_version"] == "1" and meta["framework"] == "numpy"
    (info,) = list_snapshots(tmp_path)
    assert (info.step, info.sigma_rel, info.gamma, info.interval) == (
        1200,
        sigma,
        sigma_rel_to_gamma(sigma),
        4,
    )
    assert info.shapes == ((2,),)


def test_names_are_escaped_and_distinct(tmp_path):
    nest = {"a/b": np.zeros(1), "a": {"b": np.ones(1)}, "~1": np.full(1, 2.0), "/": np.full(1, 3.0)}
    path = save_snapshot(tmp_path, nest, step=1, sigma_rel=0.05)
    loaded = safetensors_torch.load_file(path)
    assert {k: v.item() for k, v in loaded.items()} == {"a~1b": 0, "a/b": 1, "~01": 2, "~1": 3}


def test_colliding_names_are_refused_before_writing(tmp_path):
    with pytest.raises(
        ValueError, match=r"averages\[0\] and averages\['0'\] would both be named '0'"
    ):
        save_snapshot(tmp_path, {0: np.ones(1), "0": np.ones(1)}, step=1, sigma_rel=0.05)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sigma_rel": 0.0}, ValueError, r"sigma_rel must be in \(0, 12\*\*-0.5"),
        ({"sigma_rel": 0.29}, ValueError, "got 0.29"),
        ({"sigma_rel": True}, TypeError, "sigma_rel must be a real number, got bool"),
        ({"sigma_rel": "0.1"}, TypeError, "got str"),
        ({"step": 0}, ValueError, "step must be >= 1, got 0"),
        ({"step": 1.0}, TypeError, "step must be an int, got float"),
        (
            {"step": 10, "interval": 4},
            ValueError,
            r"step must be a multiple of interval=4 \(the EMA's last update\), got 10",
        ),
        ({"interval": 0}, ValueError, "interval must be >= 1"),
        ({"dtype": "int8"}, ValueError, "dtype must be one of"),
        ({"averages": np.ones(2)}, TypeError, "mapping or a nest of arrays, got one ndarray"),
        ({"averages": {}}, ValueError, "averages holds no arrays"),
        (
            {"averages": {"z": np.ones(2, np.complex64)}},
            TypeError,
            r"averages\['z'\] has dtype complex64",
        ),
        ({"averages": {"z": 1.5}}, TypeError, r"averages\['z'\] has type float"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path, kwargs, error, match):
    args = {"averages": {"w": np.ones(2)}, "step": 100, "sigma_rel": 0.05, **kwargs}
    with pytest.raises(error, match=match):
        save_snapshot(tmp_path / "d", args.pop("averages"), **args)
    assert not (tmp_path / "d").exists()


def test_crash_mid_save_keeps_the_old_snapshot(tmp_path, monkeypatch):
    path = save_snapshot(tmp_path, {"w": np.ones(3)}, step=100, sigma_rel=0.05)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("killed")

    monkeypatch.setattr(_atomic.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        save_snapshot(tmp_path, {"w": np.zeros(3)}, step=100, sigma_rel=0.05)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_listing_sorts_and_skips_foreign_files(tmp_path):
    for step in (200, 100, 1000):
        for sigma in (0.1, 0.05):
            save_snapshot(tmp_path, {"w": np.ones(1)}, step=step, sigma_rel=sigma)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".phema-0000000300-0.05.safetensors.abc.tmp").write_bytes(b"half")
    infos = list_snapshots(tmp_path)
    assert [(i.step, i.sigma_rel) for i in infos] == [
        (100, 0.05),
        (100, 0.1),
        (200, 0.05),
        (200, 0.1),
        (1000, 0.05),
        (1000, 0.1),
    ]
    assert [n for n in sorted(os.listdir(tmp_path)) if n[0] == "p"] == [i.path.name for i in infos]


@pytest.mark.parametrize("content", [b"", b"\xff" * 20, b"\x08\0\0\0\0\0\0\0not json"])
def test_corrupt_snapshot_is_named(tmp_path, content):
    save_snapshot(tmp_path, {"w": np.ones(1)}, step=100, sigma_rel=0.05)
    bad = tmp_path / "phema-0000000200-0.05.safetensors"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=r"phema-0000000200-0\.05\.safetensors"):
        list_snapshots(tmp_path)


def test_foreign_safetensors_with_a_snapshot_name_is_refused(tmp_path):
    path = tmp_path / "phema-0000000100-0.05.safetensors"
    safetensors_torch.save_file({"w": torch.ones(1)}, path, metadata={"step": "100"})
    with pytest.raises(ValueError, match=r"not an ema-core snapshot .*format None"):
        list_snapshots(tmp_path)


def test_truncated_snapshot_is_refused(tmp_path):
    path = save_snapshot(tmp_path, {"w": np.ones(10)}, step=100, sigma_rel=0.05)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(
        ValueError,
        match=r"phema-0000000100-0\.05\.safetensors is truncated or padded: its tensors take "
        r"40 bytes, it holds 36",
    ):
        list_snapshots(tmp_path)


def test_snapshots_must_agree(tmp_path):
    save_snapshot(tmp_path / "a", {"w": np.ones(1)}, step=100, sigma_rel=0.05)
    save_snapshot(tmp_path / "a", {"w": np.ones(1)}, step=100, sigma_rel=0.1, interval=4)
    with pytest.raises(ValueError, match=r"has interval 1, .* has 4"):
        list_snapshots(tmp_path / "a")
    save_snapshot(tmp_path / "b", {"w": np.ones(1)}, step=100, sigma_rel=0.05)
    save_snapshot(tmp_path / "b", {"v": np.ones(1)}, step=100, sigma_rel=0.1)
    with pytest.raises(ValueError, match="hold different arrays"):
        list_snapshots(tmp_path / "b")
    save_snapshot(tmp_path / "c", {"w": np.ones(1)}, step=100, sigma_rel=0.05)
    save_snapshot(tmp_path / "c", {"w": np.ones(2)}, step=100, sigma_rel=0.1)
    with pytest.raises(ValueError, match="hold different arrays"):
        list_snapshots(tmp_path / "c")
