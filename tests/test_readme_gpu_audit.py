"""README "## Performance", its GPU bullet, audited: every time and ratio it quotes from the H200
runs of 2026-12-04 (the first run at f3ddab9, run 3 at d19a8a8) and the H100 runs of 2026-12-05
(run 1 at df59273, run 2 at 21e9b4c) is a row of the results files or logs it links, and the
tests logs say what the bullet says about the gpu tests. No timing is
taken here (the figures are the GPU benchmark's)."""

from __future__ import annotations

import re

from tests.test_readme_performance_audit import README, RESULTS, SECTION, _rounded, _rows

# -- the GPU bullet (one H200, 2026-12-04) ----------------------------------------------------


def _gpu_bullet() -> str:
    return SECTION.split("- **GPU**:", 1)[1]


def test_gpu_figures_are_the_h200_results_files() -> None:
    # every ratio and time the GPU bullet quotes is a row of the linked results files
    text = " ".join(_gpu_bullet().split())
    torch_rows, jax_rows = _rows("cuda-2026-12-04-torch.md"), _rows("cuda-2026-12-04-jax.md")

    def torch_row(workload: str, dtype: str, contender: str) -> dict[str, float]:
        return torch_rows[(workload, dtype, "torch", contender)]

    def jax_row(dtype: str, contender: str) -> dict[str, float]:
        return jax_rows[("gpt2_small", dtype, "jax", contender)]

    quoted = [
        (torch_row("gpt2_small", "fp32", "EMA class")["ms"], "0.506 ms"),
        (torch_row("gpt2_small", "fp32", "EMA class")["ceil"], "0.71 of the ceiling"),
        (torch_row("gpt2_small", "fp32", "ceiling")["gbps"], "4167 GB/s"),
        (torch_row("gpt2_small", "fp32", "ema_core")["ceil"], "`ema_update` 0.53"),
        (torch_row("gpt2_small", "fp32", "timm ModelEmaV3")["ceil"], "`ModelEmaV3` 0.54"),
        (torch_row("gpt2_small", "fp32", "torch AveragedModel")["ceil"], "`AveragedModel` 0.39"),
        (torch_row("gpt2_small", "bf16", "EMA class")["ceil"], "class 0.11 of the ceiling"),
        (torch_row("gpt2_small", "bf16", "EMA class")["ms"], "(2.788 ms)"),
        (torch_row("gpt2_small", "bf16", "EMA class")["us_leaf"], "(16.77 us per leaf"),
        (torch_row("many_small_20k", "fp32", "EMA class")["ms"], "took 16.608 ms"),
        (torch_row("many_small_20k", "fp32", "EMA class")["us_leaf"], "(0.82 us per leaf)"),
        (torch_row("many_small_20k", "fp32", "timm ModelEmaV3")["ms"], "timm 157.626"),
        (jax_row("fp32", "ema_core")["ceil"], "GPT-2 small: 0.39 (fp32)"),
        (jax_row("bf16", "ema_core")["ceil"], "and 0.28 (bf16)"),
    ]
    for value, phrase in quoted:
        assert phrase in text, phrase
        shown = (re.findall(r"\d+\.\d+", phrase) or re.findall(r"\d+", phrase))[0]
        assert _rounded(value, shown), (phrase, value)


def test_gpu_rows_allocate_nothing_and_never_sync() -> None:
    # "Every ema-core row allocated 0.0 MB per update and made 0 host syncs (`AveragedModel` 1)"
    text = (RESULTS / "cuda-2026-12-04-torch.md").read_text(encoding="utf-8")
    ours = {"ema_core", "EMA class", "ema_update dict"}
    seen = 0
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 13 and cells[3] in ours:
            assert (cells[11], cells[12]) == ("0.0", "0"), cells
            seen += 1
        elif len(cells) == 13 and cells[3] == "torch AveragedModel":
            assert cells[12] == "1", cells
    assert seen == 12
    assert "0.0 MB per update and made 0 host syncs (`AveragedModel` 1)" in " ".join(
        _gpu_bullet().split()
    )


def _log_rows(name: str) -> dict[tuple[str, str, str, str], dict[str, float]]:
    """The plain-text table a benchmark prints (a log whose files the time limit lost)."""
    out: dict[tuple[str, str, str, str], dict[str, float]] = {}
    for line in (RESULTS / name).read_text(encoding="utf-8").splitlines():
        cells = line.split()
        if len(cells) > 8 and re.fullmatch(r"\d+\.\d+", cells[4]):
            out[tuple(cells[:4])] = {"ms": float(cells[4]), "ceil": float(cells[7])}  # type: ignore[index]
    assert out, name
    return out


def test_gpu_run3_figures_are_its_results_files() -> None:
    # run 3 (d19a8a8): each figure the bullet quotes is a row of the files or logs it links
    text = " ".join(_gpu_bullet().split())
    t3 = _rows("cuda-2026-12-04-run3-torch.md")
    j3 = _rows("cuda-2026-12-04-run3-jax.md")
    c3 = _rows("cuda-2026-12-04-run3-cupy.md")
    j20k = _log_rows("cuda-2026-12-04-run3-bench-jax-20k.log")
    cls = ("torch", "EMA class")
    queued = {}  # the queued columns, which _rows leaves out
    for line in (RESULTS / "cuda-2026-12-04-run3-torch.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 15 and cells[0] == "gpt2_small" and cells[3] == "EMA class":
            queued[cells[1]] = (float(cells[13]), float(cells[14]))
    jq = {}  # the JAX queued columns: (dtype, contender) -> (ms, x ceiling q)
    for line in (RESULTS / "cuda-2026-12-04-run3-jax.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 15 and cells[0] == "gpt2_small" and cells[13] != "queued":
            jq[(cells[1], cells[3])] = (float(cells[13]), float(cells[14]))
    quoted = [
        (jq[("fp32", "ema_core")][0], "(`make_update` 1.040 ms per update queued"),
        (jq[("fp32", "ceiling")][0], "against 0.355 for the ceiling)"),
        (jq[("fp32", "packed_concat")][1], "(0.30 of the ceiling queued)"),
        (t3[("gpt2_small", "bf16", *cls)]["ms"], "the `EMA` class 1.236 ms, 0.28"),
        (t3[("gpt2_small", "bf16", *cls)]["ceil"], "0.28 of the ceiling (0.11 before"),
        (queued["bf16"][0], "queued 0.858 ms"),
        (queued["bf16"][1], "0.34 of the ceiling's queued"),
        (t3[("gpt2_small", "bf16", *cls)]["us_leaf"], "5.98 us per leaf"),
        (t3[("gpt2_small", "bf16", "torch", "timm ModelEmaV3")]["ms"], "took 0.750 ms"),
        (t3[("gpt2_small", "fp32", *cls)]["ms"], "class 0.620 ms"),
        (t3[("gpt2_small", "fp32", *cls)]["ceil"], "0.60 of the ceiling (a flat"),
        (t3[("gpt2_small", "fp32", "torch", "ceiling")]["gbps"], "at 3921.67 GB/s"),
        (queued["fp32"][1], "queued 0.84;"),
        (t3[("gpt2_small", "fp32", "torch", "ema_core")]["ceil"], "`ema_update` 0.39"),
        (t3[("gpt2_small", "fp32", "torch", "timm ModelEmaV3")]["ceil"], "timm 0.39"),
        (t3[("gpt2_small", "fp32", "torch", "torch AveragedModel")]["ceil"], "Model` 0.26"),
        (t3[("many_small_20k", "fp32", *cls)]["ms"], "18.162 ms in fp32"),
        (t3[("many_small_20k", "fp32", *cls)]["us_leaf"], "(0.90 us per leaf"),
        (t3[("many_small_20k", "fp32", "torch", "timm ModelEmaV3")]["ms"], "timm 164.957"),
        (t3[("many_small_20k", "bf16", *cls)]["ms"], "118.069 ms in bf16"),
        (t3[("many_small_20k", "bf16", *cls)]["us_leaf"], "(5.90 us per leaf)"),
        (j3[("gpt2_small", "fp32", "jax", "ema_core")]["ceil"], "`make_update` 0.31 (fp32)"),
        (j3[("gpt2_small", "bf16", "jax", "ema_core")]["ceil"], "and 0.36 (bf16)"),
        (j3[("gpt2_small", "fp32", "jax", "packed")]["ceil"], "`packed` row 0.31"),
        (j3[("gpt2_small", "bf16", "jax", "packed")]["ceil"], "0.33 (few large leaves"),
        (j20k[("many_small_20k", "fp32", "jax", "packed")]["ms"], "row 53.772 ms"),
        (j20k[("many_small_20k", "fp32", "jax", "ema_core")]["ms"], "against 441.049 ms"),
        (j20k[("many_small_20k", "fp32", "jax", "handoff_params")]["ms"], "(51.524 ms)"),
        (c3[("gpt2_small", "fp32", "cupy", "ema_core")]["ceil"], "small 0.10 of the ceiling"),
        (c3[("gpt2_small", "fp32", "cupy", "ema_core")]["ms"], "(3.953 ms fp32"),
        (c3[("gpt2_small", "bf16", "cupy", "ema_core")]["ms"], "3.337 ms bf16"),
        (c3[("gpt2_small", "fp32", "cupy", "ema_core")]["us_leaf"], "24.16 us per leaf"),
        (c3[("gpt2_small", "fp32", "cupy", "python_loop")]["ms"], "against 5.000 ms"),
    ]
    for value, phrase in quoted:
        assert phrase in text, phrase
        shown = re.findall(r"\d+\.\d+", phrase)[0]
        assert _rounded(value, shown), (phrase, value)
    ratio = (
        j20k[("many_small_20k", "fp32", "jax", "ema_core")]["ms"]
        / j20k[("many_small_20k", "fp32", "jax", "packed")]["ms"]
    )
    assert "8.2x faster" in text and _rounded(ratio, "8.2")
    assert "8.2x on an H200" in " ".join(README.split())  # "JAX in depth", the same run
    log = (RESULTS / "cuda-2026-12-04-run3-gpu-tests.log").read_text(encoding="utf-8")
    assert "167 passed, 30 skipped" in log and "failed" not in log.split("short test summary")[1]
    assert "All 167 gpu tests passed" in text and "30 skipped" in text
    ours = [k for k in t3 if k[3] in ("ema_core", "EMA class", "ema_update dict")]
    assert len(ours) == 12


def test_routes_figures_are_its_results_file() -> None:
    # the host's part of the Triton routes (CPU tensors), quoted after run 3's figures
    text = " ".join(_gpu_bullet().split())
    table = (RESULTS / "cpu-2026-12-04-routes.txt").read_text(encoding="utf-8").splitlines()
    assert table[0].endswith("python -m benchmarks --routes")
    rows = {
        (cells[0], int(cells[1])): float(cells[3])
        for cells in (line.split() for line in table[3:])
        if len(cells) == 4
    }
    quoted = [
        (rows[("prepared", 20000)], "bf16 tensors: 2.870 us per leaf to prepare"),
        (rows[("key", 20000)], "before), 1.214 us to compare"),
        (rows[("watch", 20000)], "own look at 1.397 us per leaf"),
    ]
    for value, phrase in quoted:
        assert phrase in text, phrase
        assert _rounded(value, re.findall(r"\d+\.\d+", phrase)[0]), (phrase, value)
    assert rows[("kept", 20000)] == 0.0 and "none for a vouched one" in text


def _queued(name: str) -> dict[tuple[str, str, str], tuple[float, float]]:
    """The queued columns of a results table: (workload, dtype, contender) -> (ms, x ceiling q)."""
    out = {}
    for line in (RESULTS / name).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 15 and re.fullmatch(r"\d+\.\d+", cells[13]):
            out[(cells[0], cells[1], cells[3])] = (float(cells[13]), float(cells[14]))
    assert out, name
    return out


def test_gpu_runs_of_2026_12_05_are_their_results_files() -> None:
    # the H100 runs (run 1 at df59273, run 2 at 21e9b4c): each figure quoted is a row of the
    # files it links, and the tests logs say what the paragraph says
    text = " ".join(_gpu_bullet().split()).split("Runs of 2026-12-05", 1)[1]
    t1, t2 = _rows("cuda-2026-12-05-run1-torch.md"), _rows("cuda-2026-12-05-run2-torch.md")
    ll = _rows("cuda-2026-12-05-run2-torch-llama.md")
    lb = _rows("cuda-2026-12-05-run2-torch-llama-bf16.md")
    j1, c1 = _rows("cuda-2026-12-05-run1-jax.md"), _rows("cuda-2026-12-05-run1-cupy.md")
    q2 = _queued("cuda-2026-12-05-run2-torch.md")
    qll = _queued("cuda-2026-12-05-run2-torch-llama.md")

    def t(rows, workload, dtype, contender, col="ceil"):
        return rows[(workload, dtype, "torch", contender)][col]

    g, m, L = "gpt2_small", "many_small_20k", "llama_1b"
    quoted = [
        (t(ll, L, "fp32", "EMA class", "ms"), "`EMA` class 5.107 ms, 0.85 of"),
        (t(ll, L, "fp32", "EMA class"), "0.85 of the ceiling (a flat"),
        (t(ll, L, "fp32", "ceiling", "gbps"), "at 3019.16 GB/s"),
        (qll[(L, "fp32", "EMA class")][1], "GB/s), 0.88 queued"),
        (t(ll, L, "fp32", "ema_core"), "`ema_update` 0.80, torch's"),
        (t(ll, L, "fp32", "foreach_lerp_"), "`lerp_` alone 0.87"),
        (t(ll, L, "fp32", "triton_lerp_"), "kernel alone 0.99"),
        (t(ll, L, "fp32", "EMA class graph"), "CUDA graph 1.00, timm"),
        (t(ll, L, "fp32", "timm ModelEmaV3"), "timm 0.77."),
        (t(lb, L, "bf16", "EMA class", "ms"), "the class 3.939 ms"),
        (t(lb, L, "bf16", "EMA class"), "0.94 of the ceiling, `ema_update`"),
        (t(lb, L, "bf16", "ema_core"), "`ema_update` 0.90, timm"),
        (t(lb, L, "bf16", "timm ModelEmaV3"), "timm 1.23 (its bf16"),
        (t(t2, g, "fp32", "EMA class"), "the class 0.69 of the ceiling in fp32"),
        (q2[(g, "fp32", "EMA class")][1], "in fp32 (0.86 queued)"),
        (t(t2, g, "bf16", "EMA class"), "and 0.69 with bf16 params"),
        (q2[(g, "bf16", "EMA class")][1], "H200; 0.97 queued"),
        (t(t2, g, "fp32", "EMA class graph"), "CUDA graph 0.99 and"),
        (t(t2, g, "bf16", "EMA class graph"), "and 0.98; run 1"),
        (t(t1, g, "fp32", "EMA class"), "gave the class 0.74 and"),
        (t(t1, g, "bf16", "EMA class"), "and 0.50, so"),
        (t(t2, m, "fp32", "EMA class", "ms"), "the class 14.132 ms in fp32"),
        (t(t2, m, "fp32", "EMA class", "us_leaf"), "fp32 (0.70 us per leaf)"),
        (t(t2, m, "bf16", "EMA class", "ms"), "and 16.192 ms in bf16"),
        (t(t2, m, "bf16", "EMA class", "us_leaf"), "bf16 (0.80 us per leaf;"),
        (t(t2, m, "fp32", "timm ModelEmaV3", "ms"), "timm 69.540 and"),
        (t(t2, m, "bf16", "timm ModelEmaV3", "ms"), "and 69.510. Every"),
        (c1[(g, "fp32", "cupy", "ema_core")]["ceil"], "GPT-2 small 0.55 of the ceiling"),
        (c1[(g, "fp32", "cupy", "ema_core")]["ms"], "fp32 (0.938 ms, against"),
        (c1[(g, "bf16", "cupy", "ema_core")]["ceil"], "and 0.46 in bf16"),
        (c1[(g, "bf16", "cupy", "ema_core")]["ms"], "bf16 (0.936 ms)"),
        (j1[(g, "fp32", "jax", "ema_core")]["ceil"], "`make_update` 0.33 (fp32)"),
        (j1[(g, "bf16", "jax", "ema_core")]["ceil"], "and 0.35 (bf16)"),
        (j1[(g, "fp32", "jax", "packed")]["ceil"], "`packed` 0.47 and"),
        (j1[(g, "bf16", "jax", "packed")]["ceil"], "and 0.44, `packed_slices`"),
        (j1[(g, "fp32", "jax", "packed_slices")]["ceil"], "`packed_slices` 0.28 and"),
        (j1[(g, "bf16", "jax", "packed_slices")]["ceil"], "and 0.26 (XLA"),
        (j1[(g, "fp32", "jax", "tree_map")]["ceil"], "`tree_map` 0.46 and"),
        (j1[(g, "bf16", "jax", "tree_map")]["ceil"], "and 0.42; the"),
    ]
    for value, phrase in quoted:
        assert phrase in text, phrase
        assert _rounded(value, re.findall(r"\d+\.\d+", phrase)[0]), (phrase, value)
    host = (RESULTS / "cuda-2026-12-05-run1-jax-host.log").read_text(encoding="utf-8")
    assert "make_update call         1.989 ms" in host and "1.989 ms for `make_update`" in text
    assert "tree_map call            1.237 ms" in host and "against 1.237 for a jitted" in text
    # every ema-core row of run 2 allocated nothing and never synced; AveragedModel synced once
    ours = {"ema_core", "EMA class", "ema_update dict", "EMA class graph"}
    seen = 0
    for name in ("torch", "torch-llama", "torch-llama-bf16"):
        for line in (RESULTS / f"cuda-2026-12-05-run2-{name}.md").read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 15 and cells[3] in ours:
                assert (cells[11], cells[12]) == ("0.0", "0"), cells
                seen += 1
            elif len(cells) == 15 and cells[3] == "torch AveragedModel":
                assert cells[12] == "1", cells
    assert seen == 24 and "0.0 MB per update and made 0 host syncs (`AveragedModel` 1)" in text
    log1 = (RESULTS / "cuda-2026-12-05-run1-gpu-tests.log").read_text(encoding="utf-8")
    assert "1 failed, 177 passed, 38 skipped" in log1
    assert "FAILED tests/test_torch_gpu.py::test_cuda_graph_capture_of_update_with_a_" in log1
    assert "177 gpu tests passed and one failed" in text
    log2 = (RESULTS / "cuda-2026-12-05-run2-gpu-tests.log").read_text(encoding="utf-8")
    assert "178 passed, 38 skipped" in log2 and "failed" not in log2.split("short test summ")[1]
    assert "all 178 gpu tests passed, 38 skipped" in text
    timing = (RESULTS / "cuda-2026-12-05-timing.txt").read_text(encoding="utf-8")
    assert "gpu.sh exit 1 after 276 s" in timing and "`bash benchmarks/gpu.sh`, 276 s:" in text
    for run in (1, 2):
        device = (RESULTS / f"cuda-2026-12-05-run{run}-device.txt").read_text(encoding="utf-8")
        assert "NVIDIA H100 80GB HBM3" in device and "triton 3.6.0" in device


def test_routes_figures_of_2026_12_05_are_its_results_file() -> None:
    # the watch's look over float32 pairs, as the foreach route and the kernel's route need it
    text = " ".join(_gpu_bullet().split())
    lines = (RESULTS / "cpu-2026-12-05-routes.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].endswith("python -m benchmarks --routes")
    rows = {}
    for line in lines[3:]:
        *case, leaves, _, per_leaf = line.split()
        rows[(" ".join(case), int(leaves))] = float(per_leaf)
    quoted = [
        (rows[("watch fp32", 20000)], "the watch took 0.765 us per leaf"),
        (rows[("watch fp32 kernel", 20000)], "it and 1.066 us as the kernel's route"),
    ]
    for value, phrase in quoted:
        assert phrase in text, phrase
        assert _rounded(value, re.findall(r"\d+\.\d+", phrase)[0]), (phrase, value)
    torch_rows = _rows("cuda-2026-12-05-run2-torch.md")
    foreach = torch_rows[("many_small_20k", "fp32", "torch", "foreach_lerp_")]["ms"]
    assert _rounded(foreach, "6.972") and "(6.972 ms for 20k tensors on the H100, run 2)" in text
