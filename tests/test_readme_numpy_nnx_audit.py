"""README "Install", "The two commands", "NumPy and CuPy backends" and "flax nnx": promises no
other test pinned. Each test quotes its claim. "Install" and "The two commands" are checked
from the files only (pyproject.toml, the Makefile, the lock, the recorded runs): nothing is
installed and ``make`` is not run. The CuPy parts need a GPU, save the route choice, which
reads sizes, dtypes and layouts only (numpy arrays stand in, as in test_cupy_backend.py)."""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib

import ema_core as ema
from ema_core import _settings
from ema_core.backends import host
from ema_core.backends.host import _blocks, _numba

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _name(requirement: str) -> str:
    """The distribution name of a requirement string (``"numba>=0.59"`` -> ``"numba"``)."""
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


# -- Install ---------------------------------------------------------------------------------


def test_install_the_only_runtime_dependency_is_array_api_compat() -> None:
    # "pip install ema-core   # the only runtime dependency is array-api-compat"
    deps = _pyproject()["project"]["dependencies"]
    assert [_name(d) for d in deps] == ["array-api-compat"]


@pytest.mark.parametrize(
    ("extra", "packages"),
    [
        ("torch", {"torch"}),
        ("jax", {"jax"}),
        ("cupy", {"cupy"}),
        ("numpy", {"numpy"}),
        # "one-pass compiled CPU loops for numpy and CPU torch": numba, and numpy for its arrays
        ("numba", {"numba", "numpy"}),
    ],
)
def test_install_every_extra_the_readme_names_exists(extra: str, packages: set[str]) -> None:
    # 'pip install "ema-core[torch]"   # or [jax], [cupy], [numpy]: frameworks are optional
    # extras'; 'pip install "ema-core[numba]"'
    install = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    assert f"[{extra}]" in install  # the README still names it
    extras = _pyproject()["project"]["optional-dependencies"]
    assert packages <= {_name(r) for r in extras[extra]}


def test_install_ema_core_imports_and_configures_with_no_framework_installed() -> None:
    # "the only runtime dependency is array-api-compat": numpy, torch, JAX, CuPy, numba are
    # extras, so the package imports without any of them (a fresh process: the import state of
    # this one cannot be undone)
    hidden = ["numpy", "torch", "jax", "cupy", "numba", "array_api_strict", "flax", "optax"]
    code = (
        f"import sys\nfor m in {hidden!r}: sys.modules[m] = None\n"
        "import ema_core as ema\n"
        "config = ema.Config(schedule=ema.schedules.warmup(0.99))\n"
        "print(type(config).__name__, config.schedule(10) > 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["Config", "True"]


@pytest.fixture
def numba_missing(monkeypatch: pytest.MonkeyPatch) -> Any:
    """numba as if it were not installed (``sys.modules[name] = None``), settings left on."""
    monkeypatch.delenv("EMA_CORE_NUMBA", raising=False)
    monkeypatch.setattr(_settings, "_kept", [])
    monkeypatch.setitem(sys.modules, "numba", None)
    _numba._installed.cache_clear()
    yield
    _numba._installed.cache_clear()


def test_install_without_the_numba_extra_numpy_updates_still_run(numba_missing: Any) -> None:
    # '"ema-core[numba]"  # optional': without numba (and EMA_CORE_NUMBA left at 1) numpy
    # updates take the numpy blocks and give the update rule's values
    assert not host.compiled()
    rng = np.random.default_rng(0)
    s = rng.standard_normal((300, 40)).astype(np.float32)
    p = rng.standard_normal((300, 40)).astype(np.float32)
    want = s + np.float32(1 - 0.9) * (p - s)
    out = ema.ema_update({"w": s}, {"w": p}, 1, decay=0.9)
    assert out["w"] is s
    assert s.tobytes() == want.tobytes()


# -- The two commands ------------------------------------------------------------------------


def _lock_names() -> list[str]:
    text = (ROOT / "requirements-dev.lock").read_text(encoding="utf-8")
    return [m.lower() for m in re.findall(r"^([A-Za-z0-9_.\-]+)==", text, flags=re.MULTILINE)]


def test_the_lock_is_for_cpython_3_11_on_linux_x86_64_with_jax_for_the_cpu() -> None:
    # "The lock is for CPython 3.11 on linux x86_64"; "torch 2.13.0+cpu, JAX for the CPU"
    header = (ROOT / "requirements-dev.lock").read_text(encoding="utf-8").split("\n\n", 1)[0]
    assert re.search(r"^# Python 3\.11(\.\d+)? on linux-x86_64$", header, flags=re.MULTILINE)
    names = _lock_names()
    assert {"jax", "jaxlib"} <= set(names)
    gpu_only = [n for n in names if "cuda" in n or n.startswith(("nvidia-", "jax-rocm"))]
    assert gpu_only == []


def test_make_python_picks_the_interpreter_of_the_venv() -> None:
    # "(`make PYTHON=python3.11 test` where `python3` is another version)"; "`make lock`
    # refreshes it, see DEVELOPERS.md". The Makefile is read, not run.
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^PYTHON \?= python3$", makefile, flags=re.MULTILINE)
    assert re.search(r"^\t.*\$\(PYTHON\) -m venv \$\(VENV\)", makefile, flags=re.MULTILINE)
    assert re.search(r"^test: \$\(STAMP\)$", makefile, flags=re.MULTILINE)  # test builds it
    assert "`make lock`" in (ROOT / "DEVELOPERS.md").read_text(encoding="utf-8")


def _commands() -> str:
    return README.split("## The two commands", 1)[1].split("\n## ", 1)[0]


def test_the_recorded_demo_run_says_what_the_readme_quotes() -> None:
    # "it prints its own run time: 16 s on the 2-core dev machine,
    # `benchmarks/results/cpu-2026-12-05-demo.txt`"; the accuracy rows quoted; "the EMA
    # trajectories agree with numpy's to about 1e-6 relative ... the check allows 1e-5)"
    section = _commands()
    found = re.search(r"run time: (\d+) s on the\s+2-core dev machine, `([^`]+)`", section)
    assert found is not None
    seconds, path = found.groups()
    record = (ROOT / path).read_text(encoding="utf-8")
    assert re.search(rf"^Done in {seconds} s\.$", record, flags=re.MULTILINE)
    rows = [line for line in section.splitlines() if line.startswith(("torch  ", "JAX  "))]
    assert len(rows) == 2
    for row in rows:
        assert row in record.splitlines(), row
    table = re.findall(
        r"^(\S.*?)\s+\d+\s+(\d\.\d+e[+-]\d+)\s+[\d.]+\s+[\d.]+\s+(\w+)$", record, re.M
    )
    assert [t[0] for t in table] == ["numpy", "torch", "jax (jit)", "array-api-strict"]
    diffs = [float(t[1]) for t in table]
    assert all(t[2] == "agrees" for t in table) and max(diffs) <= 1e-5
    # "to about 1e-6 relative (torch 1.01e-7, jitted JAX 9.10e-7 in the recorded run"
    assert max(diffs) < 1.5e-6
    quoted = re.search(
        r"torch (\d\.\d+e-\d+), jitted JAX (\d\.\d+e-\d+) in\s+the recorded", section
    )
    assert quoted is not None
    assert [float(q) for q in quoted.groups()] == diffs[1:3]
    assert "EMA trajectories agree to 1e-05 relative: yes" in record


def test_the_recorded_bench_run_took_what_the_readme_says() -> None:
    # "`make bench` runs the CPU benchmark (it prints its run time: 9 min 35 s on the 2-core
    # dev machine, `benchmarks/results/cpu-2026-12-02-make-bench.md`)"
    found = re.search(
        r"run time: (\d+ min \d+ s) on the\s+2-core dev machine, `([^`]+)`", _commands()
    )
    assert found is not None
    taken, path = found.groups()
    record = (ROOT / path).read_text(encoding="utf-8")
    assert f"The whole run took {taken}." in record


# -- NumPy -----------------------------------------------------------------------------------


def _reference(s: np.ndarray, p: np.ndarray, d: float) -> np.ndarray:
    """The README's steps in float32: ``p - s``, times ``1 - d`` (or ``d`` when ``d < 0.5``),
    added into the shadow (or subtracted from the params)."""
    s32, p32 = s.astype(np.float32), p.astype(np.float32)
    diff = p32 - s32
    if d < 0.5:
        return p32 - np.float32(d) * diff
    return s32 + np.float32(1.0 - d) * diff


def _leaves(rng: np.random.Generator, pdtype: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A large flat leaf (several blocks), a strided one, and small leaves gathered together."""
    shadows = {
        "big": rng.standard_normal(150_000).astype(np.float32),
        "strided": rng.standard_normal((200, 1200)).astype(np.float32)[:, ::2],
        **{f"small{i}": rng.standard_normal(33 + i).astype(np.float32) for i in range(6)},
    }
    params = {k: (rng.standard_normal(v.shape) * 3).astype(pdtype) for k, v in shadows.items()}
    return shadows, params


@pytest.mark.parametrize("pdtype", ["float32", "float16"])
@pytest.mark.parametrize("decay", [0.3, 0.49, 0.5, 0.9, 0.999])
def test_numpy_engine_follows_the_readmes_steps_bit_for_bit(
    host_kernels: str, pdtype: str, decay: float
) -> None:
    # "`p - s` into a reused scratch block, times `1 - d` (or `d` when `d < 0.5`), then added
    # into the shadow (or subtracted from the params)"; "Both are the core's steps in the same
    # order and precision, without FMA contraction": the numpy blocks and numba's loop alike
    shadows, params = _leaves(np.random.default_rng(1), pdtype)
    want = {k: _reference(shadows[k], params[k], decay) for k in shadows}
    out = ema.ema_update(shadows, params, 1, decay=decay)
    for k, s in shadows.items():
        assert out[k] is s, k  # in place
        assert np.ascontiguousarray(s).tobytes() == want[k].tobytes(), (k, host_kernels)


def test_numpy_blocks_are_65536_elements_and_strided_leaves_go_by_whole_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "without numba (or with `EMA_CORE_NUMBA=0`) each piece is processed in blocks of 65,536
    # elements"; "strided leaves are taken in slabs of whole rows"
    monkeypatch.setenv("EMA_CORE_NUMBA", "0")
    monkeypatch.setattr(_settings, "_kept", [])
    seen: list[tuple[int, ...]] = []
    real = _blocks._blend_block

    def spy(s: np.ndarray, p: np.ndarray, d: float, r: float) -> None:
        seen.append(s.shape)
        real(s, p, d, r)

    monkeypatch.setattr(_blocks, "_blend_block", spy)
    flat = np.zeros(150_000, np.float32)
    ema.ema_update({"w": flat}, {"w": np.ones(150_000, np.float32)}, 1, decay=0.5)
    assert seen == [(65536,), (65536,), (150_000 - 2 * 65536,)]
    assert flat.tolist() == [0.5] * 150_000

    seen.clear()
    strided = np.zeros((200, 1200), np.float32)[:, ::2]  # rows of 600, not contiguous
    ema.ema_update({"w": strided}, {"w": np.ones((200, 600), np.float32)}, 1, decay=0.5)
    assert all(shape[1:] == (600,) for shape in seen), seen  # whole rows
    assert all(int(np.prod(shape)) <= 65536 for shape in seen), seen
    assert sum(shape[0] for shape in seen) == 200 and len(seen) == -(-200 // (65536 // 600))
    assert (strided == 0.5).all()


def test_numpy_updates_make_no_model_sized_temporaries(host_kernels: str) -> None:
    # "**NumPy** ... updates in place without model-sized temporaries": with numba's loop and
    # with the numpy blocks, over a large flat leaf, a strided one and gathered small ones
    shadows, params = _leaves(np.random.default_rng(2), "float16")
    model = sum(s.nbytes for s in shadows.values())
    ema.ema_update(shadows, params, 1, decay=0.9)  # numba compiles (or loads) its loops here
    for step in (2, 3):
        tracemalloc.start()
        try:
            out = ema.ema_update(shadows, params, step, decay=0.9)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert all(out[k] is shadows[k] for k in shadows)
        assert peak < model // 4, (host_kernels, step, peak, model)


def test_a_strided_leaf_with_long_rows_is_still_blended_in_65536_element_blocks(
    host_kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "each piece is processed in blocks of 65,536 elements that stay in the L2 cache: `p - s`
    # into a reused scratch block"; "updates in place without model-sized temporaries". The
    # transpose of a tall (N, 2) matrix is a strided leaf of 2 rows of N elements: run in a
    # fresh thread, whose scratch blocks start empty, the scratch it keeps is looked at after.
    monkeypatch.setenv("EMA_CORE_NUMPY_THREADS", "1")
    monkeypatch.setattr(_settings, "_kept", [])
    n = 300_000
    shadow = np.zeros((n, 2), np.float32).T
    params = np.ones((n, 2), np.float32).T
    kept: dict[str, int] = {}

    def update() -> None:
        ema.ema_update({"w": shadow}, {"w": params}, 1, decay=0.75)
        scratch = _blocks._LOCAL.__dict__.get("scratch", {})
        kept["largest"] = max((buf.size for buf in scratch.values()), default=0)

    worker = threading.Thread(target=update)
    worker.start()
    worker.join()
    assert (shadow == 0.25).all()  # the values are right
    assert kept["largest"] <= _blocks.BLOCK, (host_kernels, kept, shadow.size)


@pytest.mark.parametrize(("each", "threads_used"), [((1 << 20) - 1, 1), (1 << 20, 2)])
def test_updates_under_2m_elements_stay_on_the_calling_thread_through_the_api(
    monkeypatch: pytest.MonkeyPatch, each: int, threads_used: int
) -> None:
    # "large contiguous leaves are cut into pieces shared over `EMA_CORE_NUMPY_THREADS`
    # threads"; "updates under 2M elements stay on the calling thread": two leaves of one
    # update, 2M - 2 elements in all (one thread) or 2M (two), through ema_update
    monkeypatch.setenv("EMA_CORE_NUMPY_THREADS", "2")
    monkeypatch.setattr(_settings, "_kept", [])
    ran_on: set[int] = set()
    real = host._blend_item

    def spy(item: Any, d: float, r: float, compiled: bool) -> None:
        ran_on.add(threading.get_ident())
        real(item, d, r, compiled)

    monkeypatch.setattr(host, "_blend_item", spy)
    shadows = {k: np.zeros(each, np.float32) for k in "ab"}
    params = {k: np.full(each, 2.0, np.float32) for k in "ab"}
    ema.ema_update(shadows, params, 1, decay=0.75)
    assert len(ran_on) == threads_used
    if threads_used == 1:
        assert ran_on == {threading.get_ident()}
    assert all((s == 0.5).all() for s in shadows.values())


# -- CuPy (the route choice only: no GPU here) -----------------------------------------------


def test_cupy_multi_tensor_path_takes_contiguous_float32_float64_shadows_up_to_4m() -> None:
    # "Contiguous float32/float64 shadows of up to 4M elements take a multi-tensor path"
    from ema_core.backends import cupy as fast

    assert fast.MULTI_MAX == 4 * 2**20
    route = fast.route
    for sdtype, pdtype in [("float32", "float32"), ("float32", "float16"), ("float64", "float32")]:
        at = np.zeros(fast.MULTI_MAX, sdtype)  # calloc'd: untouched pages cost nothing
        over = np.zeros(fast.MULTI_MAX + 1, sdtype)
        p_at, p_over = np.zeros(at.size, pdtype), np.zeros(over.size, pdtype)
        assert route("float", at, p_at, 0.5, non_float="copy") == "multi", sdtype
        assert route("float", over, p_over, 0.5, non_float="copy") == "fused", sdtype
    strided = np.zeros((8, 8), np.float32)[:, ::2]
    assert route("float", strided, np.zeros((8, 4), np.float32), 0.5, non_float="copy") == "fused"
    half = np.zeros(8, np.float16)  # a half shadow: not float32/float64
    assert route("float", half, np.zeros(8, np.float16), 0.5, non_float="copy") == "fused"


# -- flax nnx --------------------------------------------------------------------------------

_HAS_NNX = importlib.util.find_spec("flax") is not None and importlib.util.find_spec("jax")


def test_no_flax_adapter_is_shipped() -> None:
    # "No adapter is needed (so none is shipped)"
    package = Path(ema.__file__).parent
    names = [p.relative_to(package).as_posix() for p in package.rglob("*.py")]
    assert not [n for n in names if "flax" in n.lower() or "nnx" in n.lower()]
    imports = re.compile(r"^\s*(import|from)\s+flax\b", re.MULTILINE)
    assert not [n for n in names if imports.search((package / n).read_text(encoding="utf-8"))]


@pytest.mark.skipif(not _HAS_NNX, reason="jax and flax needed")
def test_an_nnx_param_state_is_taken_as_it_is_and_comes_back_as_one() -> None:
    # "`nnx.state(model, nnx.Param)` is an ordinary JAX pytree, so ema-core takes it as it is":
    # the shadow and the average are nnx States of the params' structure, whose values are
    # the update rule applied leaf by leaf
    import jax
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    config = ema.Config(schedule=0.75)
    state = ema.init(params, config)
    moved = jax.tree.map(lambda p: p * 3.0 + 1.0, params)
    state = ema.update(state, moved, config)
    average = ema.average(state, config)
    for tree in (state.shadow, average):
        assert type(tree) is type(params)
        assert jax.tree.structure(tree) == jax.tree.structure(params)
    for a, p, m in zip(
        jax.tree.leaves(average), jax.tree.leaves(params), jax.tree.leaves(moved), strict=True
    ):
        want = np.asarray(p) + np.float32(0.25) * (np.asarray(m) - np.asarray(p))
        np.testing.assert_allclose(np.asarray(a), want, rtol=1e-6)


@pytest.mark.skipif(not _HAS_NNX, reason="jax and flax needed")
def test_flax_nnx_ema_has_a_constant_decay_and_no_step_counter() -> None:
    # "flax's `nnx.EMA` (0.12) has a constant decay, no step counter, warm-up or bias
    # correction"
    import flax
    from flax import nnx

    if not hasattr(nnx, "EMA"):
        pytest.skip(f"flax {flax.__version__} has no nnx.EMA")
    params = inspect.signature(nnx.EMA.__init__).parameters
    assert params["decay"].annotation in (float, "float")
    words = ("step", "count", "warm", "bias", "correct", "schedule")
    assert not [name for name in params if any(w in name for w in words)], list(params)


@pytest.mark.parametrize(
    "shape_axes",
    [
        ((300_000, 2), (1, 0)),
        ((3, 70_000, 2), (2, 0, 1)),
        ((5, 3, 40_000), (1, 0, 2)),
        ((0, 9), (1, 0)),
    ],
)
def test_the_blocks_of_a_strided_leaf_tile_it_with_none_past_block(
    shape_axes: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    # the blocks `_blocks` hands out cover every element of a strided leaf once, none larger
    # than BLOCK (rows longer than a block included, at any depth)
    shape, axes = shape_axes
    shadow = np.zeros(shape, np.float32).transpose(axes)
    params = np.arange(shadow.size, dtype=np.float32).reshape(shape).transpose(axes)
    sizes = []
    for s, p in _blocks._blocks(shadow, params):
        sizes.append(s.size)
        assert s.shape == p.shape
        np.add(s, p + 1, out=s)  # each element written once: every one ends at its param + 1
    assert max(sizes, default=0) <= _blocks.BLOCK
    assert sum(sizes) == shadow.size
    np.testing.assert_array_equal(shadow, params + 1)
