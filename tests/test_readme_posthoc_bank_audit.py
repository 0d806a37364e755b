"""Audit of README "## Post-hoc EMA" and "### Tracking several EMAs at once: the bank": the
promises no other test pinned. Each test quotes its README words."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core
from ema_core._safetensors import Reader
from ema_core.posthoc import (
    list_snapshots,
    reconstruct,
    save_snapshot,
    sigma_rel_to_gamma,
    solve,
)
from ema_core.schedules import power_function

# the fit warning of a layout that does not span its target (pinned in test_posthoc_warning.py)
MISFIT = (
    "ignore:the post-hoc EMA of sigma_rel .* is inaccurate. the closest mix"
    ":ema_core.posthoc.PostHocWarning"
)


def _readme_first_snippet(snapshots: Path) -> tuple[np.ndarray, np.ndarray]:
    """The README's first post-hoc snippet, as written; returns (ema_0.07, params) at 2000."""
    rng = np.random.default_rng(0)
    configs = {s: ema_core.Config(schedule=power_function(sigma_rel=s)) for s in (0.05, 0.07, 0.10)}
    params = rng.normal(size=1000).astype(np.float32)
    shadows = {s: params.copy() for s in configs}
    for step in range(1, 2001):
        params = params + 0.02 * rng.standard_normal(1000, dtype=np.float32)
        for s, config in configs.items():
            shadows[s] = ema_core.ema_update(shadows[s], params, step, config=config)
        if step % 100 == 0:
            for s in (0.05, 0.10):
                save_snapshot(snapshots, {"w": shadows[s]}, step=step, sigma_rel=s)
    return shadows[0.07], params


def test_the_first_snippet_prints_what_the_readme_says(tmp_path: Path) -> None:
    # README: print(f"{error:.1e}")  # 2.5e-04 (the tests require <= 2e-3)
    tracked, params = _readme_first_snippet(tmp_path)
    rebuilt = reconstruct(tmp_path, 0.07)["w"]
    error = np.linalg.norm(rebuilt - tracked) / np.linalg.norm(tracked - params)
    assert error <= 2e-3
    assert f"{error:.1e}" == "2.5e-04"
    # the default `at` is the last snapshot step, 2000
    np.testing.assert_array_equal(rebuilt, reconstruct(tmp_path, 0.07, at=2000)["w"])


def test_the_first_snippets_solve_has_the_printed_shape_and_amplification() -> None:
    # README: solve(times, [0.05, 0.10] * 20, 2000, [0.07]) ... (1, 40) 1.4
    times = [step for step in range(100, 2001, 100) for _ in (0.05, 0.10)]
    solution = solve(times, [0.05, 0.10] * 20, 2000, [0.07])
    assert solution.coefficients.shape == (1, 40)
    assert solution.coefficients.dtype == np.float64  # "the coefficients are always float64"
    assert round(float(solution.amplification[0]), 1) == 1.4
    # Solution(coefficients, condition, amplification): amplification is sum |x|, rows sum to 1
    np.testing.assert_allclose(solution.amplification, np.abs(solution.coefficients).sum(axis=1))
    np.testing.assert_allclose(solution.coefficients.sum(axis=1), 1.0, rtol=1e-12)
    assert solution.condition == pytest.approx(
        np.linalg.cond(_gram(times, [0.05, 0.10] * 20)), rel=1e-6
    )


def _gram(times: list[int], sigma_rels: list[float]) -> np.ndarray:
    """The Gram matrix of the profiles from EDM2's closed form (equation 151), a second route."""
    from ema_core.posthoc import inner_products

    t = np.asarray(times, dtype=np.float64)
    g = np.asarray([sigma_rel_to_gamma(s) for s in sigma_rels])
    return inner_products(t[:, None], g[:, None], t[None, :], g[None, :])


def test_the_coefficients_depend_only_on_the_ratios_of_the_snapshot_times() -> None:
    # README: "The coefficients depend only on the ratios of snapshot times (every inner product
    # scales by 1/c when all times scale by c, and the coefficients are normalised)"
    times = [100, 100, 250, 250, 400, 400, 700, 700]
    sigmas = [0.05, 0.10] * 4
    base = solve(times, sigmas, 700, [0.07, 0.15, 0.03]).coefficients
    for c in (4, 7, 1000):
        scaled = solve([t * c for t in times], sigmas, 700 * c, [0.07, 0.15, 0.03]).coefficients
        np.testing.assert_allclose(scaled, base, rtol=1e-9, atol=1e-12)
    # and at a middle target the later snapshots get 0 at every scale
    middle = solve([t * 4 for t in times], sigmas, 1000, [0.07]).coefficients[0]
    assert np.all(middle[4:] == 0.0)


@pytest.mark.filterwarnings(MISFIT)  # a small layout
def test_reconstruct_needs_no_interval_snapshots_of_interval_4_mix_as_steps_4x(
    tmp_path: Path,
) -> None:
    # README: "so the solve needs no interval; it is kept in the metadata"
    rng = np.random.default_rng(5)
    arrays = {
        (k, s): {"w": rng.normal(size=6).astype(np.float32)}
        for k in (1, 2, 3, 5)
        for s in (0.05, 0.10)
    }
    for (k, s), tree in arrays.items():
        save_snapshot(tmp_path / "one", tree, step=100 * k, sigma_rel=s)
        save_snapshot(tmp_path / "four", tree, step=400 * k, sigma_rel=s, interval=4)
    assert {i.interval for i in list_snapshots(tmp_path / "four")} == {4}
    one = reconstruct(tmp_path / "one", [0.07, 0.2], dtype="float64")
    four = reconstruct(tmp_path / "four", [0.07, 0.2], dtype="float64")
    for s in (0.07, 0.2):
        np.testing.assert_allclose(four[s]["w"], one[s]["w"], rtol=1e-9, atol=1e-12)


def test_an_interval_n_power_function_at_step_n_k_is_the_step_1_one_at_k() -> None:
    # README: "with Config(interval=n) (compensated, the default) the EMA is EDM2's with
    # t_delta = n: at update k (step n k) it is the step-1 power function in k"
    n, updates = 4, 60
    rng = np.random.default_rng(9)
    iterates = rng.normal(size=(updates, 5))
    every = ema_core.Config(schedule=power_function(sigma_rel=0.1), interval=n)
    once = ema_core.Config(schedule=power_function(sigma_rel=0.1))
    a, b = np.zeros(5), np.zeros(5)  # ema_update may blend in place: two arrays
    for k in range(1, updates + 1):
        a = ema_core.ema_update(a, iterates[k - 1], n * k, config=every)
        b = ema_core.ema_update(b, iterates[k - 1], k, config=once)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # and a second route: EDM2's decay (1 - n/t) ** (gamma + 1) applied by hand
    gamma = ema_core.schedules.sigma_rel_to_gamma(0.1)
    c = np.zeros(5)
    for k in range(1, updates + 1):
        d = (1.0 - n / (n * k)) ** (gamma + 1.0)
        c = d * c + (1.0 - d) * iterates[k - 1]
    np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings(MISFIT)  # a small layout
def test_several_targets_come_in_the_given_order_from_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # README: "with a sequence of sigma_rels, {sigma_rel: {name: array}} in the given order,
    # computed in one pass over the files"
    rng = np.random.default_rng(3)
    for step in (100, 200, 300):
        for s in (0.05, 0.10):
            save_snapshot(tmp_path, {"w": rng.normal(size=4)}, step=step, sigma_rel=s)
    opened: list[str] = []
    real_init = Reader.__init__

    def init(self: Any, path: Path) -> None:
        real_init(self, path)
        opened.append(Path(path).name)

    monkeypatch.setattr(Reader, "__init__", init)
    targets = [0.2, 0.05, 0.07, 0.12]
    got = reconstruct(tmp_path, targets, dtype="float64")
    assert list(got) == targets
    reads = opened[6:]  # the first 6 opens are the listing's header reads
    assert sorted(reads) == sorted(set(reads)) and len(reads) <= 6  # each file at most once
    monkeypatch.undo()
    for s in targets:
        single = reconstruct(tmp_path, s, dtype="float64")["w"]
        np.testing.assert_allclose(got[s]["w"], single, rtol=1e-12, atol=1e-13)


def test_accumulation_is_float32_unless_float64_is_asked_for(tmp_path: Path) -> None:
    # README: "Accumulation is float32 (dtype="float64" on request)"
    rng = np.random.default_rng(4)
    for step in (100, 200):
        for s in (0.05, 0.10):
            tree = {"w": rng.normal(size=8), "h": rng.normal(size=3).astype(np.float16)}
            save_snapshot(tmp_path, tree, step=step, sigma_rel=s, dtype="float64")
    single = reconstruct(tmp_path, 0.07)
    double = reconstruct(tmp_path, 0.07, dtype="float64")
    assert {a.dtype for a in single.values()} == {np.dtype(np.float32)}
    assert {a.dtype for a in double.values()} == {np.dtype(np.float64)}
    np.testing.assert_allclose(single["w"], double["w"], rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings(MISFIT)  # a small layout
def test_integer_and_bool_arrays_come_from_the_snapshot_at_at_unaveraged(tmp_path: Path) -> None:
    # README: "Integer and bool arrays ... are stored as they are and never averaged:
    # `reconstruct` returns them from a snapshot at `at`"
    for step in (100, 200, 300):
        for s in (0.05, 0.10):
            tree = {
                "w": np.full(2, step / 100.0),
                "count": np.array([step, -step], dtype=np.int64),
                "flag": np.array([step == 200, step != 200]),
            }
            save_snapshot(tmp_path, tree, step=step, sigma_rel=s)
    (info,) = [i for i in list_snapshots(tmp_path) if (i.step, i.sigma_rel) == (100, 0.05)]
    with Reader(info.path) as reader:
        assert reader.entries["count"].code == "I64" and reader.entries["flag"].code == "BOOL"
    got = reconstruct(tmp_path, [0.07, 0.2], at=200)
    for s in (0.07, 0.2):
        assert got[s]["count"].dtype == np.int64 and got[s]["count"].tolist() == [200, -200]
        assert got[s]["flag"].dtype == np.bool_ and got[s]["flag"].tolist() == [True, False]


def test_the_metadata_records_every_framework_policies_and_aliases(tmp_path: Path) -> None:
    # README: "Metadata (strings): ... the source dtypes and framework(s), `policies` (each array
    # "average" or "copy") and `aliases` (...; JSON)"
    torch = pytest.importorskip("torch")
    import json

    tree = {
        "b": torch.ones(2, dtype=torch.bfloat16),
        "a": np.ones(3, np.float16),
        "n": np.array(7, np.int32),
    }
    path = save_snapshot(tmp_path, tree, step=10, sigma_rel=0.05)
    with Reader(path) as reader:
        meta = reader.metadata
        codes = {name: entry.code for name, entry in reader.entries.items()}
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["framework"] == "numpy,torch"
    assert json.loads(meta["dtypes"]) == ["bfloat16", "float16", "int32"]
    assert json.loads(meta["policies"]) == ["average", "average", "copy"]
    assert json.loads(meta["aliases"]) == {}
    assert codes == {"b": "F32", "a": "F32", "n": "I32"}  # floats as float32 by default
    assert meta["sigma_rel"] == "0.05" and meta["gamma"] == repr(sigma_rel_to_gamma(0.05))


def test_posthoc_reads_and_writes_without_the_safetensors_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # README: "It needs numpy only (... no torch, no `safetensors` package)"
    for name in [m for m in sys.modules if m == "safetensors" or m.startswith("safetensors.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # any import of it now fails
    rng = np.random.default_rng(6)
    for step in (100, 200):
        for s in (0.05, 0.10):
            save_snapshot(
                tmp_path, {"w": rng.normal(size=3)}, step=step, sigma_rel=s, dtype="bfloat16"
            )
    assert len(list_snapshots(tmp_path)) == 4
    assert reconstruct(tmp_path, 0.07)["w"].shape == (3,)


def test_like_takes_a_state_dict_not_the_module(tmp_path: Path) -> None:
    # README: "(`like=` takes a state dict or a nest of arrays, not the module)"
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    for step in (10, 20):
        for s in (0.05, 0.10):
            save_snapshot(tmp_path, model.state_dict(), step=step, sigma_rel=s)
    with pytest.raises(TypeError, match="like must be a mapping or a nest of arrays, got one"):
        reconstruct(tmp_path, 0.07, like=model)
    got = reconstruct(tmp_path, 0.07, like=model.state_dict())
    assert list(got) == list(model.state_dict())
    model.load_state_dict(got)  # strict: the model's names


def test_a_torch_state_dicts_names_are_kept_as_they_are(tmp_path: Path) -> None:
    # README: "A torch `state_dict`'s names are kept as they are."
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sequential(torch.nn.BatchNorm1d(3)))
    state = model.state_dict()
    path = save_snapshot(tmp_path, state, step=5, sigma_rel=0.1)
    (info,) = list_snapshots(tmp_path)
    assert info.path == path and info.names == tuple(state)
    assert "1.0.num_batches_tracked" in info.names  # dots are not path separators


def test_an_ema_of_a_module_named_with_a_slash_is_snapshotted(tmp_path: Path) -> None:
    # README: "save_snapshot(dir, ema) also takes a torch EMA of a power function"; a
    # state_dict's names are kept, '/' and '~' written '~1' and '~0' in the files (as in a
    # checkpoint) and mapped back by like=. torch allows '/' in a module name.
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Module()
    model.add_module("enc/dec", torch.nn.Linear(2, 2))
    model.add_module("tied", torch.nn.Linear(2, 2))
    model.tied.weight = model.get_submodule("enc/dec").weight
    ema = EMA(model, config=ema_core.Config(schedule=power_function(sigma_rel=0.05)))
    ema.update(1)
    save_snapshot(tmp_path, ema)
    (info,) = list_snapshots(tmp_path)
    assert info.names == ("enc~1dec.weight", "enc~1dec.bias", "tied.bias")
    assert dict(info.aliases) == {"tied.weight": "enc~1dec.weight"}
    out = reconstruct(tmp_path, 0.05, like=model.state_dict())
    assert list(out) == list(model.state_dict())
    for name in model.state_dict():
        assert torch.equal(
            out[name], ema.average[name if name != "tied.weight" else "enc/dec.weight"]
        )


def test_a_bank_of_a_module_named_with_a_slash_writes_its_snapshots(tmp_path: Path) -> None:
    # README: "`snapshot_every=n, snapshot_dir=...` writes one snapshot per EMA after the update
    # of every n-th step"
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMABank

    model = torch.nn.Module()
    model.add_module("enc/dec", torch.nn.Linear(2, 2))
    bank = EMABank(model, sigma_rels=(0.05, 0.10), snapshot_every=1, snapshot_dir=tmp_path)
    bank.update(1)
    assert len(list_snapshots(tmp_path)) == 2


def test_the_bank_snippet_writes_6_steps_x_2_sigma_rels_and_loads(tmp_path: Path) -> None:
    # README: print(len(list_snapshots(snapshots)), "snapshots")  # 6 steps x 2 sigma_rels
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMABank

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    bank = EMABank(model, sigma_rels=(0.05, 0.10), snapshot_every=50, snapshot_dir=tmp_path)
    for step in range(1, 301):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        bank.update(step)
    found = list_snapshots(tmp_path)
    assert [(i.step, i.sigma_rel) for i in found] == [
        (t, s) for t in range(50, 301, 50) for s in (0.05, 0.10)
    ]
    weights = reconstruct(tmp_path, 0.07, like=model.state_dict())
    assert sorted(weights) == ["bias", "weight"] and weights["weight"].dtype == torch.float32
    plain = reconstruct(tmp_path, 0.07)
    for name in weights:
        assert torch.equal(weights[name], torch.from_numpy(plain[name]))
    model.load_state_dict(weights)
    # a tracked sigma_rel at the last step is that EMA's average itself (float32 storage)
    for k, s in enumerate((0.05, 0.10)):
        tracked = reconstruct(tmp_path, s, like=model.state_dict())
        for name, value in bank[k].average.items():
            assert torch.equal(tracked[name], value), (s, name)


def test_a_bank_built_from_configs_copies_no_buffers_unless_asked(tmp_path: Path) -> None:
    # README: "arrays the EMA copied (policy "copy": BatchNorm statistics under
    # `buffers="copy"`, the bank's default)": the default of a bank built from sigma_rels; a
    # bank built from configs keeps each Config's buffers (Config's default: "average").
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMABank

    model = torch.nn.BatchNorm1d(2)
    by_sigma = EMABank(model, sigma_rels=(0.05, 0.10))
    configs = [ema_core.Config(schedule=power_function(sigma_rel=s)) for s in (0.05, 0.10)]
    by_config = EMABank(model, configs=configs)
    assert {e.config.buffers for e in by_sigma} == {"copy"}
    assert {e.config.buffers for e in by_config} == {ema_core.Config().buffers}


def test_a_bank_blends_at_most_3_shadows_per_pass_4_as_2_plus_2() -> None:
    # README: "(at most 3 shadows per pass: 4 at once ran slower than 2 + 2)"
    from ema_core.backends.host._bank_loops import MOST, _parts

    assert MOST == 3
    for k in range(1, 13):
        sizes = [p.stop - p.start for p in _parts(k)]
        assert sum(sizes) == k and max(sizes) <= 3 and len(sizes) == math.ceil(k / 3)
        assert max(sizes) - min(sizes) <= 1  # groups of about equal size
        bounds = [p.start for p in _parts(k)] + [k]
        assert bounds == sorted(bounds) and bounds[0] == 0
    assert [(p.start, p.stop) for p in _parts(4)] == [(0, 2), (2, 4)]
    assert [(p.start, p.stop) for p in _parts(3)] == [(0, 3)]


def test_a_bank_of_4_and_of_5_equals_separate_emas_bit_for_bit() -> None:
    # README: "Every average is bit-equal to that of a separate `EMA` with the same config",
    # here across the groups of at most 3 shadows a pass (K = 4: 2 + 2, K = 5: 2 + 3)
    torch = pytest.importorskip("torch")
    from ema_core.backends.host import _numba
    from ema_core.torch import EMA, EMABank

    for sigma_rels in [(0.03, 0.05, 0.08, 0.12), (0.03, 0.05, 0.08, 0.12, 0.2)]:
        gen = torch.Generator().manual_seed(len(sigma_rels))
        model = torch.nn.Linear(16, 8)
        bank = EMABank(model, sigma_rels=sigma_rels)
        separate = [EMA(model, config=e.config) for e in bank]
        for step in range(1, 8):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=gen))
            bank.update(step)
            for ema in separate:
                ema.update(step)
        if _numba.usable():  # the compiled one-pass loop ran, not K separate updates
            assert bank._fused is not None and bank._fused.compiled
        for got, want in zip(bank, separate, strict=True):
            for name, value in want.average.items():
                assert torch.equal(got.average[name].view(torch.int32), value.view(torch.int32))


def test_checkpoint_load_of_a_state_dict_like_points_to_safetensors(tmp_path: Path) -> None:
    # README: the CLI's files are plain safetensors, read "with safetensors.torch.load_file ...,
    # not ema_core.checkpoint.load": passing a state dict as like says so
    from ema_core.checkpoint import load

    path = tmp_path / "ema-0.07.safetensors"
    path.write_bytes(b"")
    with pytest.raises(TypeError, match=r"got dict; a plain safetensors file .*load_file"):
        load(path, {"w": np.zeros(2)})
    with pytest.raises(TypeError, match=r"got list$"):
        load(path, [np.zeros(2)])


@pytest.mark.parametrize("sigma_rel", [0.05, 0.07, 0.1, 0.2, 0.2886, 1e-3, 1e-100])
def test_a_snapshot_records_the_gamma_its_ema_ran_with(tmp_path: Path, sigma_rel: float) -> None:
    # the schedule's and post-hoc's sigma_rel -> gamma are one function (schedules._gamma): a
    # snapshot of an EMA of power_function(sigma_rel=s) records s and the EMA's own gamma
    from ema_core import posthoc, schedules
    from ema_core.schedules import gamma_to_sigma_rel

    gamma = schedules.sigma_rel_to_gamma(sigma_rel)
    assert posthoc.sigma_rel_to_gamma(sigma_rel) == gamma
    assert posthoc.gamma_to_sigma_rel(gamma) == gamma_to_sigma_rel(gamma)
    # the nearest float64: no neighbour of gamma maps closer to sigma_rel
    error = abs(gamma_to_sigma_rel(gamma) - sigma_rel)
    for other in (math.nextafter(gamma, 0.0), math.nextafter(gamma, math.inf)):
        assert abs(gamma_to_sigma_rel(other) - sigma_rel) >= error
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMABank

    bank = EMABank(
        torch.nn.Linear(2, 2), sigma_rels=(sigma_rel,), snapshot_every=1, snapshot_dir=tmp_path
    )
    bank.update(1)
    (info,) = list_snapshots(tmp_path)
    assert info.sigma_rel == sigma_rel  # the given decimal, not one ulp beside it
    assert info.gamma == bank[0].config.schedule.gamma == gamma
