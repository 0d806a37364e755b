"""What the first GPU run would have met, caught before it (a desk check of the CUDA paths).

On the CPU: the Triton kernel compiled for an H100/H200 (sm_90, Triton's own ``ptxas``) with the
options every launch passes (no contracted FMA, and no warning, which ``filterwarnings=error``
would turn into a failure of every Triton test; float32 params' explicit FMAs kept); the launch
refusing a weight or decay off the shadows' device before any write; the device-decay CUDA blend
reading nothing on the host; ``gpu.sh`` parsing. Marked ``gpu`` (skipped with a reason without
CUDA): the kernel bit for bit equal to the core on the GPU, a bf16 model's update (Triton and
blocked routes) replayed from a CUDA graph, and a launch on a second device."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import array_api_compat.torch as xp  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from ema_core import Config, _core, schedules  # noqa: E402
from ema_core.backends.torch import _cuda, _routes, _triton_kernel  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")


def _ptx(ends: bool, pdtype: str, ddtype: str, aligned: bool = True) -> str:
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    signature = {"table_ptr": "*i64", "w_ptr": "*fp32", "d_ptr": ddtype, "w_value": "fp32"}
    signature |= {"n_leaves": "i64", "n_chunks": "i64"}
    constants = {"ENDS": ends, "BF16": pdtype == "*bf16", "F32": pdtype == "*fp32"}
    constants |= {"ALIGNED": aligned}
    constants |= {"BLOCK": _cuda.TRITON_BLOCK}
    signature |= dict.fromkeys(constants, "constexpr")
    source = ASTSource(_triton_kernel.jit(), signature, constants)
    compiled = triton_compile(source, GPUTarget("cuda", 90, 32), dict(_cuda.LAUNCH_OPTIONS))
    return str(compiled.asm["ptx"])


@needs_triton
@pytest.mark.parametrize(
    ("ends", "pdtype", "ddtype"),
    [
        (False, "*bf16", "*fp32"),
        (True, "*bf16", "*fp64"),
        (True, "*fp16", "*fp32"),
        (True, "*fp32", "*fp64"),
    ],
    ids=["host-bf16", "ends-bf16-f64decay", "ends-fp16", "ends-fp32"],
)
def test_triton_kernel_compiles_for_sm90_fusing_float32_params_only(
    monkeypatch, tmp_path, ends, pdtype, ddtype
):
    pytest.importorskip("triton.backends.nvidia.compiler", reason="Triton without its CUDA backend")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_DEFAULT_FP_FUSION", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Triton >= 3.9 warns when fusion is left to its default
        ptx = _ptx(ends, pdtype, ddtype)
    assert ".target sm_90" in ptx and "ld.global" in ptx and "st.global" in ptx
    # half params: every product rounded, as under the interpreter (the core's bits); float32
    # params: each multiply-add one FMA, as torch's lerp (the foreach route's bits)
    assert ("fma.rn.f32" in ptx) == (pdtype == "*fp32")
    assert ("mul.rn.f32" in ptx) == (pdtype != "*fp32")  # both float32 branches fused


@needs_triton
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
def test_triton_kernel_vectorizes_only_aligned_launches(monkeypatch, tmp_path, aligned):
    """With ``ALIGNED`` (every address a multiple of 16 bytes) full chunks move 16 bytes per
    load and store; without it the compiler cannot assume alignment and must not (a 16-byte
    access at an odd address faults)."""
    pytest.importorskip("triton.backends.nvidia.compiler", reason="Triton without its CUDA backend")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    ptx = _ptx(False, "*bf16", "*fp32", aligned)
    assert ("st.global.v4.b32" in ptx) == aligned
    assert ("ld.global.v4.b32" in ptx) == aligned


def test_triton_launch_refuses_a_weight_or_decay_off_the_shadows_device():
    shadows = [torch.zeros(4), torch.zeros(3)]
    params = [torch.ones(4).bfloat16(), torch.ones(3).bfloat16()]
    good = torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64)
    bad = [
        ("weight", (torch.tensor(0.5, device="meta"), good[1])),
        ("decay", (good[0], torch.tensor(0.5, dtype=torch.float64, device="meta"))),
        ("weight", (torch.tensor([0.5]), good[1])),
    ]
    for name, (weight, decay) in bad:
        with pytest.raises(ValueError, match=f"the {name} must be a 0-d tensor on the shadows'"):
            _cuda.triton_lerp_ends_(shadows, params, weight, decay)
        assert all(bool((s == 0).all()) for s in shadows)  # nothing written


class _RecordOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_blocked_blend_with_a_device_decay_reads_nothing_on_the_host():
    """The "cuda-mixed-ends" route's arithmetic, on CPU tensors: no host read of the decay
    (``_local_scalar_dense``: a sync on CUDA) and no tensor from host data (``lift_fresh``:
    a blocking copy that a CUDA graph cannot capture)."""
    shadows = [torch.zeros(5), torch.zeros(4, 3).t()]
    params = [torch.ones(5).bfloat16(), torch.ones(3, 4).bfloat16()]
    decay = torch.tensor(0.75, dtype=torch.float64)
    with _RecordOps() as rec, torch.no_grad():
        _cuda.blocked_lerp_ends_(
            shadows, params, *_routes._on_device(1.0 - decay, decay, shadows[0])
        )
    reads = [op for op in rec.ops if op.startswith(("aten._local_scalar_dense", "aten.item"))]
    assert reads == [] and not [op for op in rec.ops if op.startswith("aten.lift_fresh")]
    assert all(torch.equal(s, torch.full_like(s, 0.25)) for s in shadows)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_gpu_sh_parses_and_keeps_each_backends_results():
    script = ROOT / "benchmarks" / "gpu.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, capture_output=True)
    text = script.read_text()
    assert "timeout -s INT" in text  # pytest prints its summary when its time is up
    for backend in ("torch", "cupy", "jax"):  # one process and one set of files per backend
        line = rf"^\s*(\[\[ \$parts == \*\" {backend} \"\* \]\] && )?bench \d+ {backend} {backend} "
        assert re.search(line, text, re.MULTILINE), backend


# --- on a GPU -----------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("decay", [0.9, 0.999, "device"])
def test_triton_on_the_gpu_equals_the_core_bit_for_bit(decay):
    """Compiled without FMAs, the GPU kernel rounds as the interpreter does: the core's blend
    at the decay it applies, ``1 - fl32(1 - d)``, bit for bit (``test_triton_interpreter``)."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    shapes = [(4097,), (3,), (1000, 33), ()]
    shadows = [torch.randn(s, device="cuda", generator=gen) * 2 for s in shapes]
    params = [(torch.randn(s, device="cuda", generator=gen) * 3).bfloat16() for s in shapes]
    # views one element into a buffer: addresses off 16 bytes, the kernel's unaligned launch
    # (a 16-byte access there would fault), mixed with aligned leaves and a half-aligned pair
    s_buf = torch.randn(9000, device="cuda", generator=gen)
    p_buf = (torch.randn(9000, device="cuda", generator=gen) * 3).bfloat16()
    shadows += [s_buf[1:4097], s_buf[4100:8900], torch.randn(2049, device="cuda", generator=gen)]
    params += [p_buf[1:4097], p_buf[4100:8900].clone(), p_buf[5:2054]]
    d = 0.75 if decay == "device" else decay
    w32 = float(torch.tensor(1.0 - d, dtype=torch.float32))
    want = [_core.blend(xp, s, p, 1.0 - w32, w32) for s, p in zip(shadows, params, strict=True)]
    if decay == "device":
        d_dev = torch.tensor(d, dtype=torch.float64, device="cuda")
        _cuda.triton_lerp_ends_(
            shadows, params, *_routes._on_device(1.0 - d_dev, d_dev, shadows[0])
        )
    else:
        _cuda.triton_lerp_(shadows, params, 1.0 - d)
    for got, ref in zip(shadows, want, strict=True):
        assert torch.equal(got.view(torch.int32), ref.view(torch.int32))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("triton", [True, False], ids=["triton", "blocked"])
def test_cuda_graph_replays_a_bf16_models_update(monkeypatch, triton):
    """The mixed-precision routes ("triton-mixed-ends", "cuda-mixed-ends": scratch, selects)
    captured in a CUDA graph with a device step, replayed, equal to eager device-step updates."""
    if triton and _cuda._kernel() is None:
        pytest.skip("Triton is not installed")
    if not triton:
        monkeypatch.setattr(_cuda, "triton_usable", lambda like: False)

    def net() -> torch.nn.Module:
        torch.manual_seed(0)
        layers = torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.Linear(300, 8))
        return layers.to(device="cuda", dtype=torch.bfloat16)

    model, twin = net(), net()
    config = Config(schedule=schedules.warmup(0.99), init="copy")
    captured, eager = EMA(model, config=config), EMA(twin, config=config)
    step = torch.zeros((), dtype=torch.int64, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up off the default stream: kernels, scratch
        step += 1
        captured.update(step)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step += 1
        captured.update(step)
    eager.update(torch.tensor(1, device="cuda"))
    for k in range(2, 6):
        with torch.no_grad():
            for a, b in zip(model.parameters(), twin.parameters(), strict=True):
                a.add_(0.01 * k)
                b.add_(0.01 * k)
        graph.replay()
        eager.update(torch.tensor(k, device="cuda"))
    torch.cuda.synchronize()
    for name, avg in eager.average.items():
        assert torch.equal(captured.average[name], avg), name


@pytest.mark.gpu
@needs_triton
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_launches_on_the_shadows_device():
    """Triton launches on the current device; shadows on another one are blended there."""
    s = torch.randn(5000, device="cuda:1")
    p = torch.randn(5000, device="cuda:1").bfloat16()
    want = _core.blend(xp, s, p, 0.75, 0.25)
    with torch.cuda.device(0):
        _cuda.triton_lerp_([s], [p], 0.25)
    torch.cuda.synchronize(1)
    assert torch.equal(s.view(torch.int32), want.view(torch.int32))
