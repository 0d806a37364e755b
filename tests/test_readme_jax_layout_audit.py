"""README "## Performance", the JAX layout paragraph, audited: each ratio it quotes for
``ema_core_hwio`` (Flax's convolution layout) and ``ema_core`` (torch's) is the ``x ceiling``
cell of the run it links, and the runs are the command it names. No timing is taken."""

from __future__ import annotations

from tests.test_readme_performance_audit import RESULTS, _rows, _says

RUNS = ("cpu-2026-12-04-jax-hwio.md", "cpu-2026-12-04-jax-hwio-2.md")


def _ratio(run: str, dtype: str, contender: str) -> str:
    return f"{_rows(run)[('resnet50', dtype, 'jax', contender)]['ceil']:.2f}"


def test_the_layout_runs_are_the_command_the_readme_names() -> None:
    for run, tag in zip(RUNS, ("jax-hwio", "jax-hwio-2"), strict=True):
        head = (RESULTS / run).read_text(encoding="utf-8")
        command = (
            "python -m benchmarks --backend jax --workload resnet50 --no-peers --repeats 60 "
            f"--tag {tag}"
        )
        assert f"`{command}`" in head and "2 CPUs" in head and "AMD EPYC" in head, run
        _says(f"(benchmarks/results/{run})")
        _says(f"`--tag {tag}`")


def test_the_layout_ratios_are_the_x_ceiling_cells() -> None:
    one, two = RUNS
    hwio = [_ratio(r, d, "ema_core_hwio") for d in ("fp32", "bf16") for r in (one, two)]
    torch = [_ratio(r, d, "ema_core") for d in ("fp32", "bf16") for r in (one, two)]
    _says(
        f"it reached {hwio[0]} and {hwio[1]} of the ceiling in fp32 and {hwio[2]} and "
        f"{hwio[3]} with bf16 params, against {torch[0]} and {torch[1]}, and {torch[2]} and "
        f"{torch[3]}, with torch's layout."
    )
    # "met the 0.85 target in the second run and not in the first; torch's layout missed it"
    assert float(hwio[1]) >= 0.85 and float(hwio[3]) >= 0.85
    assert float(hwio[0]) < 0.85 and float(hwio[2]) < 0.85
    assert all(float(t) < 0.85 for t in torch)
