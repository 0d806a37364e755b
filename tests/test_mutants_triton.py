"""Mutation audit of the Triton mixed-precision blend (float32 shadows over bfloat16/float16
params) after its rewrite to one launch per group over a device table: the kernel
(``_triton_kernel.jit``'s ``blend``), its table (``_triton_kernel.table``: layout, cache key,
eviction) and the launcher (``_cuda.triton_lerp_``, ``triton_lerp_ends_``, ``prepare``, ``_launch``,
``_check_pairs``). Hand-made mutants were run against ``test_triton_interpreter``,
``test_triton_table``, ``test_gpu_desk_check``, ``test_torch_routes`` and
``test_torch_kernel_ends_and_bounds``; each test here kills mutants those left alive:

* ``test_params_addresses_are_part_of_the_table_key``: a table is not reused for the same
  shadows over other params (key without the params' addresses: the kernel would read the old
  params).
* ``test_sizes_are_part_of_the_table_key``: nor for views at the same addresses with other sizes
  (key without the sizes: writes past a shorter leaf, or skips the end of a longer one).
* ``test_the_table_key_keeps_the_leaves_order``: nor for the same leaves in another order (a key
  that loses the order, e.g. summed addresses).
* ``test_a_hit_makes_its_table_the_newest``: eviction is least recently used, not first in
  (``move_to_end`` on a hit), so a steady EMA's table outlives one-off calls.
* ``test_tables_kept_tables_stay``: ``TABLES_KEPT`` tables are kept, not one fewer (that mutant
  also fails ``test_the_oldest_table_goes_first``, only through its rebuild; stated directly).
* ``test_each_launch_is_one_params_dtype_and_alignment``: with a recording stand-in for the
  kernel (no Triton needed): one launch per (params dtype, alignment), ``BF16`` set from its own
  leaves' dtype (not the first pair's or the first group's), ``ALIGNED`` only when both the
  shadow's and the params' addresses are multiples of 16 bytes (not 8, not either one), strided
  pairs and empty leaves never in a table, the host weight by value and the device weight and
  decay in that order. ``ALIGNED`` changes only GPU code (the interpreter ignores the hints), so
  no CPU run of the kernel sees it; this is where the launcher's decision is checked.
* ``test_a_later_shadow_off_the_first_shadows_device_is_refused``: ``_launch._check_pairs``
  checks each shadow's device, not only each params' (a shadow elsewhere over params on the
  launch's device is refused before any write).
* ``test_every_pair_is_checked_the_first_too``: a params tensor of another size is refused
  wherever it stands, the first pair included.
* ``test_mixed_dtypes_and_alignments_under_the_interpreter``: the same decisions, run: one call
  over float16 and bfloat16 leaves, aligned and not, each leaf bit for bit the core's blend and
  every element around the leaves untouched (Triton's interpreter in a subprocess, as
  ``test_triton_interpreter``).
* ``test_a_negative_weight_takes_torchs_lerp_branch``: the branch is ``|w| < 1/2`` as in
  torch's ``lerp``, not ``w < 1/2`` (the routes never send a weight below 0, a direct call may).

Left alive, not visible on a CPU: ``start + BLOCK < size`` for the full-chunk test (a leaf of a
multiple of ``BLOCK`` takes the masked way for its last chunk: same values, GPU speed only); a
load mask of ``offs <= size`` (one element read past a leaf and never stored: the interpreter
reads it without a fault; a GPU might fault at an allocation's end, compute-sanitizer would
say); the device missing from the table's key (CUDA's unified addresses never repeat across
devices). The ``ALIGNED`` hints themselves are GPU code only: ``test_gpu_desk_check``'s PTX check
(16-byte accesses exactly for aligned launches) fails on each mutant of them tried.
"""

from __future__ import annotations

import importlib.util
import json
import traceback

import pytest

torch = pytest.importorskip("torch")

from ema_core.backends.torch import _cuda, _launch, _triton_kernel  # noqa: E402

BF16, F16 = torch.bfloat16, torch.float16
S_SENTINEL, P_SENTINEL = -123.25, 77.0


@pytest.fixture(autouse=True)
def _empty_cache(monkeypatch):
    monkeypatch.setattr(_triton_kernel, "_TABLES", type(_triton_kernel._TABLES)())


def _pairs(sizes: list[int], pdtype=BF16):
    return [torch.zeros(n) for n in sizes], [torch.zeros(n, dtype=pdtype) for n in sizes]


# --- the table's cache ---------------------------------------------------------------------


def test_params_addresses_are_part_of_the_table_key():
    shadows, params = _pairs([5, 7])
    first, _ = _triton_kernel.table(shadows, params, 4)
    other_params = [params[0], torch.zeros(7, dtype=BF16)]
    other, _ = _triton_kernel.table(shadows, other_params, 4)
    assert other is not first
    assert other[3].item() == other_params[1].data_ptr()  # the new params' address


def test_sizes_are_part_of_the_table_key():
    s_buf, p_buf = torch.zeros(20), torch.zeros(20, dtype=BF16)
    short, short_chunks = _triton_kernel.table([s_buf[:5]], [p_buf[:5]], 4)
    long, long_chunks = _triton_kernel.table([s_buf[:9]], [p_buf[:9]], 4)
    assert (short_chunks, long_chunks) == (2, 3)
    assert short[2].item() == 5 and long[2].item() == 9


def test_the_table_key_keeps_the_leaves_order():
    shadows, params = _pairs([6, 6])
    forward, _ = _triton_kernel.table(shadows, params, 4)
    backward, _ = _triton_kernel.table(shadows[::-1], params[::-1], 4)
    assert backward is not forward
    assert backward[0].item() == shadows[1].data_ptr()


def test_a_hit_makes_its_table_the_newest(monkeypatch):
    monkeypatch.setattr(_triton_kernel, "TABLES_KEPT", 2)
    sets = [_pairs([n]) for n in (3, 4, 5)]
    a = _triton_kernel.table(*sets[0], 4)[0]
    b = _triton_kernel.table(*sets[1], 4)[0]
    assert _triton_kernel.table(*sets[0], 4)[0] is a  # a hit: a is now the newest
    _triton_kernel.table(*sets[2], 4)  # evicts the least recently used, b
    assert _triton_kernel.table(*sets[0], 4)[0] is a
    assert _triton_kernel.table(*sets[1], 4)[0] is not b


def test_tables_kept_tables_stay(monkeypatch):
    monkeypatch.setattr(_triton_kernel, "TABLES_KEPT", 2)
    sets = [_pairs([n]) for n in (3, 4)]
    tables = [_triton_kernel.table(*pair, 4)[0] for pair in sets]
    for k in (1, 0, 1, 0):  # hits only: both stay
        assert _triton_kernel.table(*sets[k], 4)[0] is tables[k]


# --- the launcher's groups (a recording stand-in for the kernel) ----------------------------


class _Recorder:
    def __init__(self) -> None:
        self.launches: list[tuple[tuple, tuple, dict]] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, args, kwargs))

        return launch


def _mixed_pairs():
    """Contiguous pairs of both params dtypes, each aligned or off 16 bytes by the shadow, by
    the params (8 bytes off: 16 is the test, not 8) or by both; a strided pair and empty ones."""
    s_buf = torch.zeros(4096)
    pairs = []
    for k, pdtype in enumerate((BF16, F16)):
        p_buf = torch.zeros(4096, dtype=pdtype)
        base = 1024 * k  # 4096 bytes into s_buf: its alignment
        pairs += [
            (s_buf[base : base + 100], p_buf[0:100]),  # both aligned
            (s_buf[base + 128 : base + 228], p_buf[132:232]),  # params 8 bytes off
            (s_buf[base + 258 : base + 358], p_buf[256:356]),  # shadow 8 bytes off
            (s_buf[base + 385 : base + 485], p_buf[385:485]),  # both off
            (s_buf[base + 512 : base + 612], p_buf[512:612]),  # both aligned again
            (s_buf[base + 640 : base + 640], p_buf[640:640]),  # empty
        ]
    pairs.append((torch.zeros(10), torch.zeros(20, dtype=F16)[::2]))  # strided params
    return pairs


def _aligned(s: torch.Tensor, p: torch.Tensor) -> bool:
    return s.data_ptr() % 16 == 0 and p.data_ptr() % 16 == 0


@pytest.mark.parametrize("ends", [False, True], ids=["host", "device"])
def test_each_launch_is_one_params_dtype_and_alignment(monkeypatch, ends):
    recorder = _Recorder()
    monkeypatch.setattr(_launch, "_kernel", lambda: recorder)
    pairs = _mixed_pairs()
    shadows, params = [s for s, _ in pairs], [p for _, p in pairs]
    weight, decay = torch.tensor(0.25), torch.tensor(0.75, dtype=torch.float64)
    if ends:
        _cuda.triton_lerp_ends_(shadows, params, weight, decay)
    else:
        _cuda.triton_lerp_(shadows, params, 0.25)
    by_shadow = {(s.data_ptr(), s.numel()): (s, p) for s, p in pairs[:-1] if s.numel()}
    seen: list[tuple[int, int]] = []
    keys = set()
    for grid, args, kwargs in recorder.launches:
        table, n_leaves, chunks = args[0], args[4], args[5]
        assert grid == (chunks,) and kwargs["ENDS"] == ends
        if ends:
            assert args[1] is weight and args[2] is decay
        else:
            assert args[3] == 0.25
        rows = table.tolist()
        leaves = [by_shadow[(rows[i], rows[2 * n_leaves + i])] for i in range(n_leaves)]
        assert [p.data_ptr() for _, p in leaves] == rows[n_leaves : 2 * n_leaves]
        assert {p.dtype == BF16 for _, p in leaves} == {kwargs["BF16"]}
        assert {_aligned(s, p) for s, p in leaves} == {kwargs["ALIGNED"]}
        keys.add((kwargs["BF16"], kwargs["ALIGNED"]))
        seen += [(s.data_ptr(), s.numel()) for s, _ in leaves]
    assert len(recorder.launches) == len(keys) == 4  # one launch per dtype and alignment
    assert sorted(seen) == sorted(by_shadow)  # each non-empty contiguous leaf once
    assert not shadows[-1].any()  # the strided pair, left to the blocked way, untouched here


@pytest.mark.parametrize("launcher", ["host", "device"])
def test_a_later_shadow_off_the_first_shadows_device_is_refused(launcher):
    # params on the launch's device, their shadow not: the kernel would write another device's
    # memory at that address (meta stands in for a second device)
    shadows = [torch.zeros(4), torch.zeros(4, device="meta")]
    params = [torch.ones(4, dtype=BF16), torch.ones(4, dtype=BF16)]
    with pytest.raises(ValueError, match="does not fit its shadow"):
        if launcher == "host":
            _cuda.triton_lerp_(shadows, params, 0.5)
        else:
            weight, decay = torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64)
            _cuda.triton_lerp_ends_(shadows, params, weight, decay)
    assert not shadows[0].any()


@pytest.mark.parametrize("bad", [0, 1], ids=["first", "second"])
def test_every_pair_is_checked_the_first_too(bad):
    shadows = [torch.zeros(8), torch.zeros(8)]
    params = [torch.ones(8, dtype=BF16), torch.ones(8, dtype=BF16)]
    params[bad] = torch.ones(4, dtype=BF16)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        _cuda.triton_lerp_(shadows, params, 0.5)
    assert not any(bool(s.any()) for s in shadows)


# --- the kernel under Triton's interpreter (a subprocess) -----------------------------------


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _child_mixed(kind: str) -> None:
    """One call over leaves of both params dtypes, aligned and not, in padded buffers."""
    import array_api_compat.torch as xp

    from ema_core import _core

    gen = torch.Generator().manual_seed(7)
    s_buf = torch.full((6000,), S_SENTINEL)
    p_bufs = {d: torch.full((6000,), P_SENTINEL, dtype=d) for d in (BF16, F16)}
    spans = [  # (params dtype, shadow start, params start, size)
        (F16, 0, 0, 1500),
        (BF16, 1501, 1501, 1200),  # both off 16 bytes
        (F16, 2704, 2707, 1025),  # the shadow aligned, the params not
        (BF16, 3733, 3736, 2049),  # the params aligned, the shadow not
        (F16, 5800, 5800, 7),
    ]
    shadows, params = [], []
    for pdtype, at_s, at_p, n in spans:
        s, p = s_buf[at_s : at_s + n], p_bufs[pdtype][at_p : at_p + n]
        s.copy_(torch.randn(n, generator=gen) * 2)
        p.copy_(torch.randn(n, generator=gen) * 3)
        shadows.append(s)
        params.append(p)
    before = [s.clone() for s in shadows]
    w32 = 0.25 if kind == "host" else 0.75
    if kind == "host":
        _cuda.triton_lerp_(shadows, params, w32)
    else:
        _cuda.triton_lerp_ends_(
            shadows, params, torch.tensor(w32), torch.tensor(1.0 - w32, dtype=torch.float64)
        )
    decay, rate = 1.0 - w32, w32
    if kind == "device":
        decay, rate = (torch.tensor(x, dtype=torch.float64) for x in (decay, rate))
    for i, (got, s, p) in enumerate(zip(shadows, before, params, strict=True)):
        want = _core.blend(xp, s, p, decay, rate)
        assert torch.equal(_bits(got), _bits(want)), f"leaf {i} ({p.dtype}) vs core"
    touched_s = torch.zeros(6000, dtype=torch.bool)
    touched_p = {d: torch.zeros(6000, dtype=torch.bool) for d in (BF16, F16)}
    for pdtype, at_s, at_p, n in spans:
        touched_s[at_s : at_s + n] = True
        touched_p[pdtype][at_p : at_p + n] = True
    assert bool((s_buf[~touched_s] == S_SENTINEL).all()), "a shadow sentinel was written"
    for d, buf in p_bufs.items():
        assert bool((buf[~touched_p[d]] == P_SENTINEL).all()), f"a {d} sentinel changed"


def _child_negative_weight() -> None:
    """``w = -3/4`` (``|w| >= 1/2``): torch's ``p - (p - s) * (1 - w)``, each step rounded to
    float32 as the interpreter does, not ``s + w * (p - s)``."""
    import numpy as np

    gen = torch.Generator().manual_seed(3)
    s = torch.randn(3000, generator=gen) * 2
    p = (torch.randn(3000, generator=gen) * 3).to(BF16)
    s_np, p_np = s.numpy().copy(), p.float().numpy()
    w = np.float32(-0.75)
    diff = p_np - s_np
    want = p_np - diff * (np.float32(1.0) - w)
    other = s_np + w * diff
    assert not np.array_equal(want.view(np.int32), other.view(np.int32))  # the test can tell
    _cuda.triton_lerp_([s], [p], -0.75)
    assert np.array_equal(s.numpy().view(np.int32), want.view(np.int32)), "not torch's branch"


CHILD_CASES = {
    "mixed-host": lambda: _child_mixed("host"),
    "mixed-device": lambda: _child_mixed("device"),
    "negative-weight": _child_negative_weight,
}


def _run_all() -> dict[str, str]:
    results = {"kernel": type(_cuda._kernel()).__name__}
    for name, case in CHILD_CASES.items():
        try:
            case()
            results[name] = "ok"
        except Exception:  # reported to the parent, case by case
            results[name] = traceback.format_exc(limit=3)
    return results


@pytest.fixture(scope="module")
def child_results() -> dict[str, str]:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (it runs on CPUs, no GPU needed)")
    from tests.test_triton_interpreter import run_interpreted

    results = run_interpreted(__file__)
    assert results["kernel"] == "InterpretedFunction"
    return results


@pytest.mark.parametrize("case", ["mixed-host", "mixed-device"])
def test_mixed_dtypes_and_alignments_under_the_interpreter(child_results, case):
    assert child_results[case] == "ok", child_results[case]


def test_a_negative_weight_takes_torchs_lerp_branch(child_results):
    assert child_results["negative-weight"] == "ok", child_results["negative-weight"]


if __name__ == "__main__":
    print(json.dumps(_run_all()))
