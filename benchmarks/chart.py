"""A PNG chart: GB/s per contender per workload, with each backend's ceiling drawn as a line."""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness import Row


def draw(rows: list[Row], path: Path, title: str) -> bool:
    """Write the chart; False (and no file) when matplotlib is not installed or there are no
    rows (a run cut before its first case ended: matplotlib refuses a figure of no axes)."""
    if not rows:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = sorted({(r.workload, r.dtype) for r in rows})
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 2.2 + 0.28 * len(rows)), squeeze=False)
    for ax, (workload, dtype) in zip(axes[:, 0], groups, strict=True):
        sub = [
            r
            for r in rows
            if (r.workload, r.dtype) == (workload, dtype) and r.contender != "ceiling"
        ]
        labels = [f"{r.backend}: {r.contender}" for r in sub]
        colors = ["tab:blue" if r.contender == "ema_core" else "tab:gray" for r in sub]
        ax.barh(labels, [r.gb_per_s for r in sub], color=colors)
        for r in rows:
            if (r.workload, r.dtype, r.contender) == (workload, dtype, "ceiling"):
                ax.axvline(r.gb_per_s, linestyle="--", linewidth=1, color="tab:red")
        ax.set_title(f"{workload} {dtype} (dashed: ceilings)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("GB/s", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
