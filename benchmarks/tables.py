"""The rows of a run as tables: ``format_table`` (the text printed at the end of a run) and
``format_markdown`` (the ``.md`` file's, headed by the machine and what each column means)."""

from __future__ import annotations

from typing import Any

from benchmarks.harness import QUEUED, QUEUED_MAX_MS, Row

__all__ = ["format_markdown", "format_table"]


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"  # NaN: no class timed beside it


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'workload':<16}{'dtype':<6}{'backend':<18}{'contender':<26}{'ms':>9}{'+-':>8}"
        f"{'GB/s':>8}{'x ceil':>8}{'x ema':>7}{'x class':>8}{'us/leaf':>9}{'MB/upd':>9}"
        f"{'syncs':>6}{'queued':>9}{'x ceil q':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.workload:<16}{r.dtype:<6}{r.backend:<18}{r.contender:<26}"
            f"{r.median_ms:>9.3f}{r.spread_ms:>8.3f}{r.gb_per_s:>8.2f}"
            f"{r.of_ceiling:>8.2f}{r.vs_ema_core:>7.2f}{_ratio(r.vs_class):>8}"
            f"{r.overhead_us_per_leaf:>9.2f}"
            f"{_opt(r.extra_mb, '.1f'):>9}"
            f"{_opt(r.host_syncs, 'd'):>6}"
            f"{_opt(r.queued_ms, '.3f'):>9}{_opt(r.queued_of_ceiling, '.2f'):>9}"
        )
    return "\n".join(lines)


def format_markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    """The same table as Markdown, headed by the machine it ran on and its settings."""
    settings = " ".join(f"{k}={v}" for k, v in meta.get("settings", {}).items()) or "defaults"
    out = [
        f"Machine: {meta['machine']}, {meta['cpus']} CPUs ({meta['device']}), {meta['date']}, "
        f"`{meta['command']}`, settings: {settings}. GB/s counts the bytes ema-core moves (12 "
        "per element for fp32, 10 for bf16 params with float32 shadows); `x ceiling` = ceiling "
        "time / contender time, the ceiling timed in alternation with each contender (ceiling, "
        "contender, ...); `x ema-core` = ema-core time / contender time; `x class` = the EMA "
        "class's time / contender time (the stateless call on a dict beside the class); "
        "`us/leaf` = (contender time - ceiling time) / number of leaves: the cost per tensor "
        "beyond moving its bytes; `MB/update` = the peak memory one update allocates (- where "
        "the framework does not count it); `syncs` = host syncs per update (CUDA only). Each "
        "time above is one update followed by a sync, so the host's work per tensor adds to "
        "the device's; `queued` (GPU only) = ms per update when "
        f"{QUEUED} updates are queued back to back and synced once, as a training loop runs "
        "them, and `x ceiling q` = the ceiling's queued time / the contender's (- for a "
        f"contender slower than {QUEUED_MAX_MS:.0f} ms per update: not queued).",
        "",
        "| workload | dtype | backend | contender | ms (median) | +- | GB/s | x ceiling | "
        "x ema-core | x class | us/leaf | MB/update | syncs | queued | x ceiling q |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    out += [
        f"| {r.workload} | {r.dtype} | {r.backend} | {r.contender} | {r.median_ms:.3f} | "
        f"{r.spread_ms:.3f} | {r.gb_per_s:.2f} | {r.of_ceiling:.2f} | {r.vs_ema_core:.2f} | "
        f"{_ratio(r.vs_class)} | "
        f"{r.overhead_us_per_leaf:.2f} | {_opt(r.extra_mb, '.1f')} | {_opt(r.host_syncs, 'd')} | "
        f"{_opt(r.queued_ms, '.3f')} | {_opt(r.queued_of_ceiling, '.2f')} |"
        for r in rows
    ]
    return "\n".join(out) + "\n"
