"""Post-hoc EMA reconstruction: EDM2's acceptance on a synthetic run, streaming, errors."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

import ema_core
from ema_core._safetensors import Reader
from ema_core.posthoc import (
    PostHocWarning,
    coefficient_matrix,
    list_snapshots,
    reconstruct,
    save_snapshot,
)
from ema_core.schedules import power_function

STEPS, EVERY, SIZE = 3000, 100, 3000

# the fit warning of a layout that does not span its target (pinned in test_posthoc_warning.py)
MISFIT = (
    "ignore:the post-hoc EMA of sigma_rel .* is inaccurate. the closest mix"
    ":ema_core.posthoc.PostHocWarning"
)


STORED = ("float32", "float16", "bfloat16")


def _run(directory, interval):
    """A random walk plus a slow sine; EMAs of sigma_rel 0.05 and 0.10 snapshotted every 100
    steps (in ``directory / dtype`` for each stored dtype), 0.07 tracked directly. Returns
    {step: (ema_0.07, params)} at the snapshot steps."""
    rng = np.random.default_rng(16)
    amplitude = rng.normal(size=SIZE).astype(np.float32)
    walk = np.zeros(SIZE, np.float32)
    configs = {
        s: ema_core.Config(schedule=power_function(sigma_rel=s), interval=interval)
        for s in (0.05, 0.07, 0.10)
    }
    shadows = {s: walk.copy() for s in configs}
    seen = {}
    for t in range(1, STEPS + 1):
        walk += np.float32(0.02) * rng.standard_normal(SIZE, dtype=np.float32)
        params = walk + amplitude * np.float32(np.sin(2 * np.pi * t / 1500))
        for s, config in configs.items():
            shadows[s] = ema_core.ema_update(shadows[s], params, t, config=config)
        if t % EVERY == 0:
            for s, dtype in itertools.product((0.05, 0.10), STORED):
                save_snapshot(
                    directory / dtype,
                    {"w": shadows[s]},
                    step=t,
                    sigma_rel=s,
                    dtype=dtype,
                    interval=interval,
                )
            seen[t] = (shadows[0.07].copy(), params)
    return seen


@pytest.fixture(scope="module", params=[1, 4], ids=["interval1", "interval4"])
def run(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"run{request.param}")
    return directory, _run(directory, request.param)


@pytest.mark.parametrize("at", [1500, STEPS])
def test_reconstruction_matches_a_tracked_ema(run, at):
    directory, seen = run
    ema, params = seen[at]
    got = reconstruct(directory / "float32", 0.07, at=None if at == STEPS else at)["w"]
    assert got.dtype == np.float32
    error = np.linalg.norm(got - ema) / np.linalg.norm(ema - params)
    print(f"{directory.name} float32 at={at}: {error:.2e} of |ema - params|")  # README figures
    assert error <= 2e-3


@pytest.mark.parametrize(("dtype", "bound"), [("float16", 1e-3), ("bfloat16", 5e-3)])
def test_half_storage_costs(run, dtype, bound):
    """The error that fp16 / bf16 snapshots add (the README's figures; ``-s`` prints them)."""
    directory, seen = run
    for at in (1500, STEPS):
        ema, params = seen[at]
        got = reconstruct(directory / dtype, 0.07, at=at)["w"]
        error = np.linalg.norm(got - ema) / np.linalg.norm(ema - params)
        print(f"{directory.name} {dtype} at={at}: {error:.2e} of |ema - params|")
        assert error <= bound


def test_several_targets_in_one_pass_equal_single_ones(run):
    directory, seen = run
    directory = directory / "float32"
    both = reconstruct(directory, [0.07, 0.05], at=1500, dtype="float64")
    assert list(both) == [0.07, 0.05]
    for s in (0.07, 0.05):
        single = reconstruct(directory, s, at=1500, dtype="float64")["w"]
        # one solve with two right-hand sides: the same coefficients to an ulp or so
        np.testing.assert_allclose(both[s]["w"], single, rtol=1e-12, atol=1e-13)
    ema, params = seen[1500]
    assert np.linalg.norm(both[0.07]["w"] - ema) <= 2e-3 * np.linalg.norm(ema - params)


def test_a_tracked_sigma_rel_comes_back(run):
    directory = run[0] / "float32"
    got = reconstruct(directory, 0.05, at=2000, dtype="float64")["w"]
    with Reader(directory / "phema-0000002000-0.05.safetensors") as reader:
        tracked = reader.read("w")
    np.testing.assert_allclose(got, tracked, rtol=0, atol=1e-5 * np.abs(tracked).max())


def _small(tmp_path, steps=(100, 200, 300, 400)):
    rng = np.random.default_rng(1)
    for step in steps:
        for s in (0.05, 0.1):
            save_snapshot(
                tmp_path,
                {"w": rng.normal(size=(4, 3)), "n": np.array(step)},
                step=step,
                sigma_rel=s,
            )
    return tmp_path


def test_streams_one_file_at_a_time_and_skips_later_snapshots(tmp_path, monkeypatch):
    _small(tmp_path)
    open_now, opened, real_init, real_close = [0], [], Reader.__init__, Reader.close

    def init(self, path):
        real_init(self, path)
        open_now[0] += 1
        opened.append((path.name, open_now[0]))

    def close(self):
        open_now[0] -= 1
        real_close(self)

    monkeypatch.setattr(Reader, "__init__", init)
    monkeypatch.setattr(Reader, "close", close)
    got = reconstruct(tmp_path, [0.07, 0.08], at=300)
    assert max(n for _, n in opened) == 1 and open_now[0] == 0
    tensor_reads = opened[8:]  # the first 8 opens are list_snapshots reading the headers
    assert sorted(name for name, _ in tensor_reads) == sorted(
        f"phema-{s:010d}-{x}.safetensors" for s in (100, 200, 300) for x in ("0.05", "0.1")
    )
    assert got[0.07]["n"] == 300  # integer arrays come from a snapshot at `at`


def test_matches_the_coefficients(tmp_path):
    _small(tmp_path)
    got = reconstruct(tmp_path, 0.09, at=400, dtype="float64")["w"]
    steps, sigmas = [100, 100, 200, 200, 300, 300, 400, 400], [0.05, 0.1] * 4
    c = coefficient_matrix(steps, sigmas, 400, [0.09])[0]
    want = np.zeros((4, 3))
    for ci, step, s in zip(c, steps, sigmas, strict=True):
        with Reader(tmp_path / f"phema-{step:010d}-{s!r}.safetensors") as reader:
            want += ci * reader.read("w")
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_like_gives_framework_arrays(tmp_path):
    torch = pytest.importorskip("torch")
    _small(tmp_path)
    like = {"w": torch.zeros(4, 3, dtype=torch.bfloat16), "n": torch.zeros((), dtype=torch.int64)}
    got = reconstruct(tmp_path, 0.07, like=like)
    plain = reconstruct(tmp_path, 0.07)
    assert got["w"].dtype == torch.bfloat16 and got["n"].dtype == torch.int64
    assert torch.equal(got["w"], torch.from_numpy(plain["w"]).to(torch.bfloat16))
    with pytest.raises(ValueError, match=r"like has \['v'\] that the snapshots do not"):
        reconstruct(tmp_path, 0.07, like={"v": torch.zeros(4, 3), "n": torch.zeros(())})
    with pytest.raises(ValueError, match=r"like\['w'\] has shape \(3, 4\)"):
        reconstruct(tmp_path, 0.07, like={"w": torch.zeros(3, 4), "n": torch.zeros(())})


def test_like_jax(tmp_path):
    jnp = pytest.importorskip("jax.numpy")
    _small(tmp_path)
    got = reconstruct(tmp_path, 0.07, like={"w": jnp.zeros((4, 3)), "n": jnp.zeros((), jnp.int32)})
    np.testing.assert_array_equal(np.asarray(got["w"]), reconstruct(tmp_path, 0.07)["w"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"at": 250},
            ValueError,
            r"at=250 is not a snapshot step .* nearest snapshot steps are \[200, 300\]",
        ),
        ({"at": 500}, ValueError, r"nearest snapshot steps are \[400\]"),
        ({"at": 2.0}, TypeError, "at must be an int step or None, got float"),
        ({"sigma_rel": 0.3}, ValueError, "sigma_rel must be in"),
        ({"sigma_rel": [0.05, 0.05]}, ValueError, "distinct"),
        ({"sigma_rel": []}, ValueError, "distinct"),
        (
            {"dtype": "float16"},
            ValueError,
            r"dtype must be one of \['float32', 'float64'\], got 'f",
        ),
        ({"dtype": ["float32"]}, TypeError, r"dtype must be one of .*, got \['float32'\]"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, match):
    _small(tmp_path)
    args = {"sigma_rel": 0.07, **kwargs}
    with pytest.raises(error, match=match):
        reconstruct(tmp_path, args.pop("sigma_rel"), **args)


def test_empty_directory(tmp_path):
    with pytest.raises(ValueError, match="holds no snapshots"):
        reconstruct(tmp_path, 0.07)


def _close(directory, storages):
    """sigma_rels 0.10 and 0.11 at steps 100 and 200, stored as ``storages[i]`` (file order):
    0.04 amplifies their rounding 28.5 times (bfloat16's limit is 16, float32's 100)."""
    pairs = [(step, s) for step in (100, 200) for s in (0.10, 0.11)]
    for (step, s), storage in zip(pairs, storages, strict=True):
        save_snapshot(directory, {"w": np.full(3, s)}, step=step, sigma_rel=s, dtype=storage)
    return directory


@pytest.mark.filterwarnings(MISFIT)  # 0.04 from 0.10 and 0.11: the layout of the amplification
def test_float32_snapshots_do_not_warn_where_bfloat16_ones_do(tmp_path):
    exact = reconstruct(_close(tmp_path / "f32", ["float32"] * 4), 0.04)["w"]  # no warning
    with pytest.warns(PostHocWarning) as caught:
        got = reconstruct(_close(tmp_path / "bf16", ["bfloat16"] * 4), 0.04)["w"]
    limits = [str(w.message) for w in caught if "coefficients sum" in str(w.message)]
    assert len(limits) == 1
    assert re.search(r"sum to 28.5 .*\(limit 16 for bfloat16 snapshots\)", limits[0])
    # still computed; bf16's rounding (<= 2**-8 relative) comes back amplified up to 28.5 times
    assert got.dtype == np.float32 and np.all(np.abs(got - exact) <= 28.5 * 2**-8 * 0.11)


@pytest.mark.filterwarnings(MISFIT)  # the layout of the amplification (CLOSE)
def test_the_coarsest_storage_sets_the_limit_and_the_warning_names_the_caller(tmp_path):
    directory = _close(tmp_path, ["float32", "float64", "float16", "float32"])
    assert [i.storage for i in list_snapshots(directory)] == [
        "float32",
        "float64",
        "float16",
        "float32",
    ]
    reconstruct(directory, 0.04)  # 28.5 < float16's 45.3 (its misfit: the mark)
    with pytest.warns(PostHocWarning, match=r"\(limit 45.3 for float16 snapshots\)") as caught:
        reconstruct(directory, [0.05, 0.02])  # 0.02: 58.5
    assert caught and [w.filename for w in caught] == [__file__] * len(caught)
