"""The Triton kernel of ``_cuda`` (routes "triton-mixed" and "triton-mixed-ends": a float32 shadow
over float16/bfloat16 params; "triton-ends": float32 pairs under a device decay) run by Triton's
interpreter on CPU tensors, against the core.

What the kernel computes, element by element, with ``s`` the shadow, ``p`` the params widened to
float32 (exact) and ``w`` the weight ``1 - decay`` rounded to float32 (a host float, or the 0-d
device tensor ``_routes._on_device`` makes)::

    diff = p - s
    out  = s + w * diff          where |w| < 1/2
           p - diff * (1 - w)    elsewhere            (torch's ``lerp``)
    "-ends" variant: out = s where the device decay d == 1, p where d == 0 (read on the device)

For float32 params (route "triton-ends", and the benchmark's host-decay row) each multiply-add
is one FMA, as torch's own ``lerp`` runs it on CUDA (and on CPUs whose torch build vectorizes it
with FMA): those cases are compared with that formula rounded once per multiply-add (``_fma32``,
computed in float64 whatever this CPU's torch does), bit for bit but for the NaNs' signs and
payloads (NaN in the same places; Triton 3.9's interpreter's ``tl.fma`` rounds once, which these
cases need: the test group pins it), and must differ somewhere from the same formula rounded
step by step (at weights 0.7 and 0.1, both branches). The GPU suite compares the compiled kernel
with CUDA's ``torch.lerp`` (``test_torch_routes.test_cuda_same_ends``). For half params, under
the interpreter (numpy) every operation is rounded to float32 on its own. That is exactly
``_core.blend`` at the decay the kernel applies, ``d' = 1 - w`` (exact in float32 and float64:
``1 - w`` is exact for ``w`` in [1/2, 1]) with rate ``w``: the core takes ``s + rate * diff``
for ``d' > 1/2`` and ``p - d' * diff`` below. The tests assert that, bit for bit (NaN payloads
too), and where ``d' == d`` or ``d > 1/2`` (where the core's own rate rounds to ``w``) also
against the core at the true decay ``d``. Two differences, stated and not hidden:

* ``d < 1/2``: the kernel's ``1 - fl32(1 - d)`` lies on the grid of 2**-24, the core's
  ``fl32(d)`` is rounded relative to ``d``; equal for 0.25 (tested), not for 0.3 or 1e-3
  (a weight error up to 2**-25, i.e. 3e-5 relative at d = 1e-3; the blocked and foreach routes,
  torch's ``lerp`` too, share the kernel's form).
* ``w == 1/2`` (d = 1/2): the kernel takes ``p - diff / 2``, the core ``s + diff / 2``; the
  kernel's value is the core's blend with shadow and params swapped, which is what is compared.

On a GPU Triton would contract ``a * b + c`` into one FMA; ``_cuda.LAUNCH_OPTIONS`` turns that
fusion off, so for half params a GPU rounds each operation as the interpreter does. The
interpreter checks the indexing (program offsets, the tail mask: every contiguous leaf lies in
one buffer between sentinels, which an off-by-one overwrites) and the arithmetic (branches,
weights, ends). Strided pairs are left by the wrapper to the blocked way: they must equal
``blocked_lerp_``/``blocked_lerp_ends_`` run on them alone. Values: normal, large, float32 and
float16 subnormals, +-0, inf and NaN (not bfloat16 subnormals: Triton 3.9's interpreter widens
them to 0, a GPU does not); no specials for the host decays 0 and 1 (weight 0 or 1), which the
routes never send here (skip/copy): ``0 * inf`` is NaN and ``-0 + 0`` is +0.

All cases run in one subprocess with ``TRITON_INTERPRET=1`` set before anything imports Triton
(``triton.jit`` reads it when it decorates, and ``_cuda._kernel`` is cached), each reported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import array_api_compat.torch as xp  # noqa: E402
import numpy as np  # noqa: E402

from ema_core import _core  # noqa: E402
from ema_core.backends.torch import _cuda  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = [0, 1, 1023, 1024, 1025, 2500]  # around _cuda.TRITON_BLOCK: one, two and three programs
FRESH = [2048, 1500]  # contiguous leaves allocated alone, after the padded ones
PAD = 3  # sentinel elements before, between and after the contiguous leaves
S_SENTINEL, P_SENTINEL = -123.25, 77.0
HOST_DECAYS = [0.9999, 0.9, 0.75, 0.5, 0.3, 0.25, 1e-3, 1.0, 0.0]
DEVICE_DECAYS = [0.9999, 0.5, 0.3, 1.0, 0.0]
CASES = [
    f"{dtype}-{kind}-{decay}"
    for dtype in ("float16", "bfloat16")
    for kind, decays in (("host", HOST_DECAYS), ("device", DEVICE_DECAYS))
    for decay in decays
] + [f"float32-device-{decay}" for decay in [*DEVICE_DECAYS, 0.9]]  # "triton-ends": float32
CASES += [f"float32-host-{decay}" for decay in (0.9999, 0.9, 0.5, 0.3)]  # the benchmark's fp32 row

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="triton is not installed (the test group pins it; it runs on CPUs, no GPU needed)",
)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _specials(s: torch.Tensor, p: torch.Tensor, pdtype: torch.dtype) -> None:
    """Put the edge values at fixed places of a leaf of at least 16 elements (in place)."""
    info = torch.finfo(pdtype)
    s[:8] = torch.tensor([1e-40, -0.0, float("nan"), float("inf"), 3e38, -3e38, 0.0, 2.0])
    # a half subnormal for float16; the interpreter (Triton 3.9) widens bfloat16 subnormals to 0
    # (a GPU shifts the bits, exactly), so bfloat16 takes its smallest normal
    tiny = info.smallest_normal / (4 if pdtype == torch.float16 else 1)
    p_vals = [info.max, float("inf"), 1.0, float("nan"), -float("inf"), info.max, -0.0, tiny]
    p[:8] = torch.tensor(p_vals, dtype=pdtype)


def _leaves(pdtype: torch.dtype, seed: int, specials: bool) -> tuple[list, list, list]:
    """Contiguous leaves (views into two padded buffers, returned third) and two strided pairs."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(SIZES) + PAD * (len(SIZES) + 1)
    s_buf = torch.full((total,), S_SENTINEL)
    p_buf = torch.full((total,), P_SENTINEL, dtype=pdtype)
    shadows, params, at = [], [], PAD
    for n in SIZES:
        s, p = s_buf[at : at + n], p_buf[at : at + n]
        s.copy_(torch.randn(n, generator=gen) * 2)
        p.copy_(torch.randn(n, generator=gen) * 3)
        if specials and n >= 16:
            _specials(s, p, pdtype)
        shadows.append(s)
        params.append(p)
        at += n + PAD
    for n in FRESH:  # leaves of their own (16-byte aligned: the kernel's ALIGNED launch)
        s, p = torch.randn(n, generator=gen) * 2, (torch.randn(n, generator=gen) * 3).to(pdtype)
        if specials:
            _specials(s, p, pdtype)
        shadows.append(s)
        params.append(p)
    shadows.append(torch.randn(40, 30, generator=gen).t())  # both strided
    params.append(torch.randn(40, 30, generator=gen).to(pdtype).t())
    shadows.append(torch.randn(50, generator=gen))  # contiguous shadow, strided params
    params.append(torch.randn(100, generator=gen).to(pdtype)[::2])
    return shadows, params, [s_buf, p_buf]


def _weights(kind: str, decay: float) -> tuple[object, object, float]:
    """The arguments the routes pass (``float(rate)``, or ``_on_device``'s tensors) and w."""
    w32 = float(torch.tensor(1.0 - decay, dtype=torch.float32))
    if kind == "host":
        return 1.0 - decay, None, w32
    return torch.tensor(1.0 - decay).float(), torch.tensor(decay, dtype=torch.float64), w32


def _core_at(
    kind: str, s: torch.Tensor, p: torch.Tensor, decay: float, rate: float
) -> torch.Tensor:
    if kind == "host":
        return _core.blend(xp, s, p, decay, rate)
    d, r = torch.tensor(decay, dtype=torch.float64), torch.tensor(rate, dtype=torch.float64)
    return _core.blend(xp, s, p, d, r)


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a * b + c`` of float32 arrays rounded once to float32, whatever the machine: the product
    is exact in float64 (48 bits), the sum is rounded to odd there (where it was inexact its
    last bit is made 1, moving toward the exact sum: TwoSum gives the error), and 53 bits are
    enough (24 + 2) for the float32 rounding of a round-to-odd value to be the exact sum's."""
    a64, b64, c64 = (x.astype(np.float64) for x in (a, b, c))
    prod = a64 * b64
    total = prod + c64
    back = total - prod
    err = (prod - (total - back)) + (c64 - back)  # the exact sum is total + err
    even = (total.view(np.int64) & 1) == 0
    fix = np.isfinite(err) & (err != 0) & even
    total = np.where(fix, np.nextafter(total, total + err), total)
    return total.astype(np.float32)


def _lerp_ends(s: torch.Tensor, p: torch.Tensor, w32: float, decay: float | None) -> torch.Tensor:
    """torch's ``lerp`` at the float32 weight as torch's CUDA build computes it (each
    multiply-add one FMA: ``s + w (p - s)`` below ``|w|`` 1/2, ``p - (p - s)(1 - w)`` above),
    computed here without relying on the CPU's own FMA; under a device decay the ends exact,
    ``s`` at 1 and ``p`` at 0."""
    if decay == 1.0:
        return s.clone()
    if decay == 0.0:
        return p.clone()
    s32, p32, w = s.numpy(), p.numpy(), np.float32(w32)
    diff = p32 - s32
    if abs(w) < 0.5:
        out = _fma32(np.full_like(diff, w), diff, s32)
    else:
        out = _fma32(-diff, np.full_like(diff, np.float32(1) - w), p32)
    return torch.from_numpy(out)


def check_case(case: str) -> None:
    """One case (``CASES``): raise AssertionError on the first difference."""
    name, kind, decay_text = case.split("-", 2)
    pdtype, decay = getattr(torch, name), float(decay_text)
    specials = not (kind == "host" and decay in (0.0, 1.0))
    shadows, params, buffers = _leaves(pdtype, CASES.index(case), specials)
    before = [s.clone() for s in shadows]
    strided = [(s.clone(), p) for s, p in zip(shadows, params, strict=True) if not s.is_contiguous()
               or not p.is_contiguous()]  # fmt: skip
    weight, device_decay, w32 = _weights(kind, decay)
    alone = [s for s, _ in strided], [p for _, p in strided]
    if device_decay is None:
        _cuda.triton_lerp_(shadows, params, weight)
        _cuda.blocked_lerp_(*alone, weight)
    else:
        _cuda.triton_lerp_ends_(shadows, params, weight, device_decay)
        _cuda.blocked_lerp_ends_(*alone, weight, device_decay)
    n = len(SIZES) + len(FRESH)
    sizes = SIZES + FRESH
    # float32: fused and rounded differ somewhere (at w = 1e-4 the product's rounding rarely
    # reaches the sum's last bit, and at w = 1/2 the product is exact: w = 0.7 and 0.1 must)
    told = pdtype != torch.float32 or decay not in (0.3, 0.9)
    for i, (got, s, p) in enumerate(zip(shadows[:n], before[:n], params[:n], strict=True)):
        if pdtype == torch.float32:  # torch's fused lerp at the float32 weight, exact ends
            want = _lerp_ends(s, p, w32, None if device_decay is None else decay)
            nan = want.isnan()  # a NaN's sign and payload are the hardware's (numpy's -NaN here)
            assert torch.equal(got.isnan(), nan), f"leaf {i} ({sizes[i]} elements): NaN places"
            assert torch.equal(_bits(got[~nan]), _bits(want[~nan])), f"leaf {i} vs lerp"
            w = torch.tensor(w32, dtype=torch.float32)  # the same formula, each step rounded:
            rounded = s + w * (p - s) if w32 < 0.5 else p - (p - s) * (1 - w)  # none fused
            told = told or not torch.equal(_bits(want), _bits(rounded))
            continue
        if w32 == 0.5:  # the kernel's p - diff / 2: the core with the roles swapped
            want = _core_at(kind, p.float(), s, 0.5, 0.5)
        else:
            want = _core_at(kind, s, p, 1.0 - w32, w32)
        assert torch.equal(_bits(got), _bits(want)), f"leaf {i} ({sizes[i]} elements) vs core"
        if decay != 0.5 and (decay > 0.5 or 1.0 - w32 == decay):
            at_decay = _core_at(kind, s, p, decay, 1.0 - decay)
            assert torch.equal(_bits(got), _bits(at_decay)), f"leaf {i} vs core at {decay}"
    assert told, "no float32 leaf tells torch's fused lerp from each operation rounded"
    for i, (got, (want, _)) in enumerate(zip(shadows[n:], strided, strict=True)):
        assert torch.equal(_bits(got), _bits(want)), f"strided pair {i} vs the blocked way"
    s_buf, p_buf = buffers
    at = 0
    for k in [0, *SIZES]:
        at += k
        assert bool((s_buf[at : at + PAD] == S_SENTINEL).all()), f"shadow sentinel at {at}"
        assert bool((p_buf[at : at + PAD] == P_SENTINEL).all()), f"params sentinel at {at}"
        at += PAD


def _run_all() -> dict[str, str]:
    """Every case, in this process (the child): 'ok' or the failure, and the kernel's type."""
    results = {"kernel": type(_cuda._kernel()).__name__}
    for case in CASES:
        try:
            with np.errstate(all="ignore"):  # inf - inf, 0 * inf: numpy warns, a GPU does not
                check_case(case)
            results[case] = "ok"
        except Exception:  # reported to the parent, case by case
            results[case] = traceback.format_exc(limit=3)
    return results


def run_interpreted(script: str) -> dict[str, str]:
    """Run ``script`` (a test module that prints its results as JSON when run as a program) in a
    subprocess with ``TRITON_INTERPRET=1`` set before anything imports Triton; its results."""
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-W", "error", script],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    results: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


@pytest.fixture(scope="module")
def child_results() -> dict[str, str]:
    return run_interpreted(__file__)


def test_the_kernel_ran_under_the_interpreter(child_results):
    assert child_results["kernel"] == "InterpretedFunction"


@pytest.mark.parametrize("case", CASES)
def test_triton_kernel_equals_the_core(child_results, case):
    assert child_results[case] == "ok", child_results[case]


if __name__ == "__main__":
    print(json.dumps(_run_all()))
