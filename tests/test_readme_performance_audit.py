"""README "## Performance", audited: the figures it quotes are read back from the results files
it links (each cell of the table, each range, each median of the compare runs, each bound
derived from the JAX handoff table), the benchmark's contenders compute what the section says
they compute (the ceilings, ``handoff``, ``addresses``, the stateless and bank contenders), and
the routes, thresholds and caches it names (``2**18`` elements, cache-sized blocks, the plan kept
between updates, no allocation per steady-state update) hold on the CPU. No timing is taken."""

from __future__ import annotations

import re
import statistics
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import harness, workloads
from benchmarks.backends import _common
from benchmarks.workloads import Workload

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README.split("\n## Performance\n", 1)[1].split("\n## Test your own EMA", 1)[0]
FLAT = " ".join(SECTION.split())  # the section with its line breaks folded
TINY = Workload("tiny", ((3, 4), (5,), (2, 2, 2)))


def _says(text: str) -> None:
    """The README section says ``text`` (whitespace folded)."""
    assert " ".join(text.split()) in FLAT, text


# -- results files -----------------------------------------------------------------------------


def _rows(name: str) -> dict[tuple[str, str, str, str], dict[str, float]]:
    """A results Markdown table: (workload, dtype, backend, contender) -> its numbers, by the
    header's column names (the 2026-11-22 file has no `x class` column)."""
    names = {"ms (median)": "ms", "x ceiling": "ceil", "us/leaf": "us_leaf", "GB/s": "gbps"}
    out: dict[tuple[str, str, str, str], dict[str, float]] = {}
    head: list[str] = []
    for line in (RESULTS / name).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == ["workload", "dtype"]:
            head = cells
        elif head and len(cells) == len(head) and re.fullmatch(r"[\d.]+", cells[4]):
            out[tuple(cells[:4])] = {  # type: ignore[index]
                names[h]: float(v) for h, v in zip(head, cells, strict=True) if h in names
            }
    assert out, name
    return out


def _block(name: str, heading: str) -> list[list[str]]:
    """The split lines of the fenced block after ``heading`` in a results file."""
    text = (RESULTS / name).read_text(encoding="utf-8")
    body = text.split(heading, 1)[1].split("```", 2)[1]
    return [ln.split() for ln in body.splitlines()[3:] if ln.strip()]


def _rounded(value: float, shown: str) -> bool:
    """``value`` rounds to ``shown`` at the decimals ``shown`` has."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return f"{value:.{decimals}f}" == shown


def test_every_linked_results_file_exists() -> None:
    linked = re.findall(r"\]\((benchmarks/results/[^)]+)\)", SECTION)
    named = re.findall(r"`(cpu-[\w-]+\.(?:md|txt))`", SECTION)
    assert len(linked) >= 12 and named
    for path in [*linked, *(f"benchmarks/results/{n}" for n in named)]:
        assert (ROOT / path).is_file(), path


_WORKLOADS = {
    "ResNet-50": "resnet50",
    "ViT-B/16": "vit_b16",
    "GPT-2 small": "gpt2_small",
    "20k tiny": "many_small_20k",
}
_COLUMNS = (
    ("torch", "EMA class"),
    ("torch", "ema_update dict"),
    ("torch", None),  # the best peer
    ("jax", "ema_core"),
    ("jax", "optax incremental_update"),
    ("numpy", "ema_core"),
)
_OURS = {"ceiling", "ema_core", "EMA class", "ema_update dict"}


def _table_rows() -> list[list[str]]:
    lines = [ln for ln in SECTION.splitlines() if ln.startswith("| ")]
    head = lines.index(next(ln for ln in lines if ln.startswith("| workload | dtype | torch")))
    rows = []
    for line in lines[head + 1 :]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] not in _WORKLOADS:
            break
        rows.append(cells)
    return rows


def test_the_main_table_is_the_full_run_cell_by_cell() -> None:
    # "Full table: benchmarks/results/cpu-2026-12-02.md": every ratio (and time in brackets)
    # of the README's table is that file's `x ceiling` (and median ms) of the same row, and the
    # "best torch peer" is the peer with the highest ratio in that row
    rows = _rows("cpu-2026-12-02.md")
    table = _table_rows()
    assert len(table) == 8
    checked = 0
    for cells in table:
        workload, dtype = _WORKLOADS[cells[0]], cells[1]
        for (backend, contender), cell in zip(_COLUMNS, cells[2:], strict=True):
            if cell == "-":
                assert not any(k[:3] == (workload, dtype, backend) for k in rows), cells
                continue
            found = re.fullmatch(r"(.*?)\s*([\d.]+)(?: \((?:([\d.]+) ms)?[^)]*\))?", cell)
            assert found is not None, cell
            name, ratio, ms = found.groups()
            if contender is None:  # "timm ModelEmaV3 0.87": the best of the peers
                peers = {k[3]: v for k, v in rows.items()
                         if k[:3] == (workload, dtype, "torch") and k[3] not in _OURS}  # fmt: skip
                best = next(c for c in peers if c in (name, f"torch {name}"))
                assert peers[best]["ceil"] == max(p["ceil"] for p in peers.values()), cell
            row = rows[(workload, dtype, backend, contender or best)]
            assert f"{row['ceil']:.2f}" == ratio, (cells[0], dtype, contender, cell)
            if ms is not None:
                assert _rounded(row["ms"], ms), (cells[0], dtype, contender, cell)
            checked += 1
    assert checked == 46


def test_the_numpy_bf16_rows_are_float16_params() -> None:
    # "1.11 (fp16)": numpy has no bfloat16, the bf16 rows take float16 params
    from benchmarks.backends import numpy as bench_np

    cases = bench_np.cases(TINY, "bf16", "cpu")
    params = cases["ema_core"].__closure__
    assert params is not None
    arrays = [c.cell_contents for c in params if isinstance(c.cell_contents, list)]
    assert any(all(a.dtype == np.float16 for a in group) for group in arrays)


def _span(rows: dict, backend: str, contender: str, dtype: str, key: str = "ceil") -> str:
    values = [rows[(w, dtype, backend, contender)][key]
              for w in ("resnet50", "vit_b16", "gpt2_small")]  # fmt: skip
    return f"{min(values):.2f} to {max(values):.2f}"


def test_the_targets_bullets_quote_the_ranges_of_the_runs() -> None:
    rows, before = _rows("cpu-2026-12-02.md"), _rows("cpu-2026-11-22.md")
    fp32_class = _span(rows, "torch", "EMA class", "fp32")
    _says(f"the torch `EMA` class is at {fp32_class} of one flat `lerp_`")
    _says(f"({_span(before, 'torch', 'EMA class', 'fp32')} on 2026-11-22")
    _says(f"JAX's `make_update` at {_span(rows, 'jax', 'ema_core', 'fp32')};")
    _says(f"numpy at {_span(rows, 'numpy', 'ema_core', 'fp32')} of numpy's own `a += b`")
    _says(f"the torch `EMA` class reaches {_span(rows, 'torch', 'EMA class', 'bf16')}")


def test_the_per_tensor_costs_are_the_us_per_leaf_column() -> None:
    # "costs 2.4 us per tensor above the ceiling in fp32 and 5.3 us in bf16 (0.86 and 2.0 on
    # 2026-11-22) ... numpy's stateless call ... costs 3.3 us per array"
    rows, before = _rows("cpu-2026-12-02.md"), _rows("cpu-2026-11-22.md")

    def us(table: dict, backend: str, contender: str, dtype: str, digits: int = 1) -> str:
        return f"{table[('many_small_20k', dtype, backend, contender)]['us_leaf']:.{digits}f}"

    _says(
        f"costs {us(rows, 'torch', 'EMA class', 'fp32')} us per tensor above the ceiling in "
        f"fp32 and {us(rows, 'torch', 'EMA class', 'bf16')} us in bf16 "
        f"({us(before, 'torch', 'EMA class', 'fp32', 2)} and "
        f"{us(before, 'torch', 'EMA class', 'bf16')} on 2026-11-22)"
    )
    _says(f"costs {us(rows, 'numpy', 'ema_core', 'fp32')} us per array")


def test_the_stateless_and_tree_figures_are_the_committed_run() -> None:
    stateless = {(r[0], r[1], r[3]): r[-1] for r in
                 _block("cpu-2026-12-02.md", "`python -m benchmarks --stateless`")}  # fmt: skip

    def x(w: str, d: str, kind: str) -> str:
        return stateless[(w, d, kind)]

    _says(
        f"ResNet-50 fp32 {x('resnet50', 'fp32', 'list')} (list) and "
        f"{x('resnet50', 'fp32', 'dict')} (dict) of the class's speed, bf16 params with fp32 "
        f"shadows {x('resnet50', 'bf16', 'list')} and {x('resnet50', 'bf16', 'dict')}, "
        f"ViT-B/16 fp32 {x('vit_b16', 'fp32', 'list')}, 20k tiny tensors "
        f"{x('many_small_20k', 'fp32', 'list')} / {x('many_small_20k', 'fp32', 'dict')} (fp32) "
        f"and {x('many_small_20k', 'bf16', 'list')} / {x('many_small_20k', 'bf16', 'dict')} (bf16)"
    )
    assert x("vit_b16", "fp32", "list") == x("vit_b16", "fp32", "dict")  # one figure for both
    block = _block("cpu-2026-12-02.md", "`python -m benchmarks --tree`")
    tree = {int(r[1]): float(r[3]) for r in block if r[0] == "checks"}
    assert sorted(tree) == [1000, 10000, 100000]
    _says(
        f"{tree[1000]:.1f}, {tree[10000]:.1f} and {tree[100000]:.1f} us per leaf at 1k, 10k "
        "and 100k"
    )


def test_the_bank_figures_and_their_ideal() -> None:
    # "the torch EMABank of 2 and 3 ... takes 0.86 and 0.79 of the time of as many separate EMA
    # objects, against 0.83 and 0.78 for the bytes it saves (the params read once)"
    rows = {int(r[2]): r for r in _block("cpu-2026-12-02-bank.md", "ideal = ")}
    assert sorted(rows) == [2, 3]
    ideal = {k: (8 * k + 4) / (12 * k) for k in rows}  # params read once: 8K + 4 against 12K
    assert all(rows[k][7] == f"{ideal[k]:.2f}" for k in rows)
    _says(
        f"takes {rows[2][5]} and {rows[3][5]} of the time of as many separate `EMA` objects, "
        f"against {ideal[2]:.2f} and {ideal[3]:.2f} for the bytes it saves"
    )
    from benchmarks import bank

    assert bank.SIGMA_RELS[2] == (0.05, 0.10) and len(bank.SIGMA_RELS[3]) == 3


def test_the_numba_off_ranges_are_the_numba_off_run() -> None:
    rows = _rows("cpu-2026-12-02-numba-off.md")
    head = (RESULTS / "cpu-2026-12-02-numba-off.md").read_text(encoding="utf-8").splitlines()[0]
    assert "settings: EMA_CORE_NUMBA=0" in head
    _says(f"(numpy fp32 {_span(rows, 'numpy', 'ema_core', 'fp32')} of `a += b`)")
    _says(
        f"the rest to the numpy blocks: {_span(rows, 'torch', 'EMA class', 'bf16')} of the ceiling"
    )


def _compare(name: str) -> dict[str, dict[str, dict[tuple[str, str, str], list[float]]]]:
    """A ``benchmarks.compare`` record: run -> revision -> (case, workload, dtype) -> the ms of
    each round, and the `x ceiling` under the key with "x" appended to the case."""
    runs: dict[str, dict[str, dict[tuple[str, str, str], list[float]]]] = {}
    run, rev = "1", ""
    for line in (RESULTS / name).read_text(encoding="utf-8").splitlines():
        if m := re.match(r"#\s*(?:---\s*run|Run)\s+(\d+)", line):
            run = m.group(1)
        elif m := re.match(r"== round \d+, (\S+)", line):
            rev = m.group(1)
        elif m := re.match(
            r"(.+?)\s+(resnet50|many_small_20k)\s+(\w+)\s+([\d.]+)\s+([\d.]+)$", line
        ):
            case, workload, dtype, ms, ratio = m.groups()
            found = runs.setdefault(run, {}).setdefault(rev, {})
            found.setdefault((case, workload, dtype), []).append(float(ms))
            found.setdefault((case + " x", workload, dtype), []).append(float(ratio))
    return runs


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}"


def test_the_table_batching_compare_medians() -> None:
    runs = _compare("cpu-2026-12-02-compare-tables.txt")["1"]
    old, new = runs["4468929"], runs["."]
    bf16 = ("torch EMA class", "many_small_20k", "bfloat16")
    np32 = ("numpy ema_update", "many_small_20k", "float32")
    assert all(len(v) == 3 for v in old.values())  # "medians of 3 alternating rounds"
    _says(
        f"on 20k tiny tensors {_median(new[bf16])} ms against {_median(old[bf16])}, numpy's "
        f"`ema_update` fp32 {_median(new[np32])} ms against {_median(old[np32])}"
    )


def test_the_later_compare_medians_and_spread() -> None:
    runs = _compare("cpu-2026-12-02-compare-tables-2.txt")["1"]
    now, tables, before = runs["."], runs["a257df2"], runs["4468929"]
    bf16 = ("torch EMA class", "many_small_20k", "bfloat16")
    np32 = ("numpy ema_update", "many_small_20k", "float32")
    fp32 = ("torch EMA class", "many_small_20k", "float32")
    _says(
        f"the torch class bf16 {_median(now[bf16])} ms now, {_median(tables[bf16])} with the "
        f"tables alone, {_median(before[bf16])} before; numpy {_median(now[np32])}, "
        f"{_median(tables[np32])} and {_median(before[np32])}; torch fp32 {_median(now[fp32])}, "
        f"{_median(tables[fp32])} and {_median(before[fp32])}"
    )
    every = now[fp32] + tables[fp32] + before[fp32]
    _says(f"round-to-round spread of {min(every):.0f} to {max(every):.0f} ms")


def test_the_one_pass_compare_runs_2_and_3() -> None:
    runs = _compare("cpu-2026-12-02-compare-one-pass.txt")
    bf16 = ("torch EMA class", "many_small_20k", "bfloat16")
    fp32 = ("torch EMA class", "many_small_20k", "float32")
    two, three = runs["2"], runs["3"]
    _says(
        f"medians of {_median(two['.'][bf16])} and {_median(three['.'][bf16])} ms against "
        f"{_median(two['d2c7b99'][bf16])} and {_median(three['d2c7b99'][bf16])} before"
    )
    rounds = [(n, o) for run in (two, three)
              for n, o in zip(run["."][bf16], run["d2c7b99"][bf16], strict=True)]  # fmt: skip
    assert len(rounds) == 6 and all(n < o for n, o in rounds)  # "ahead in each of the 6 rounds"
    _says(
        f"({_median(two['.'][fp32])} and {_median(three['.'][fp32])} against "
        f"{_median(two['d2c7b99'][fp32])} and {_median(three['d2c7b99'][fp32])})"
    )


def test_the_jax_handoff_table_and_the_bounds_read_from_it() -> None:
    rows = _rows("cpu-2026-12-02-jax-handoff.md")
    head = (RESULTS / "cpu-2026-12-02-jax-handoff.md").read_text(encoding="utf-8")
    assert "`python -m benchmarks --backend jax --no-peers --tag jax-handoff`" in head
    _says("(`python -m benchmarks --backend jax --no-peers --tag jax-handoff`)")
    names = {"20k tiny, fp32": ("many_small_20k", "fp32"),
             "ResNet-50, fp32": ("resnet50", "fp32"),
             "ResNet-50, bf16 params": ("resnet50", "bf16")}  # fmt: skip
    lines = [ln for ln in SECTION.splitlines() if ln.strip().startswith("| ")]
    quoted = {}
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in names:
            quoted[names[cells[0]]] = [c.removesuffix(" ms") for c in cells[1:]]
    assert len(quoted) == 3
    ms: dict[tuple[str, str], dict[str, float]] = {}
    for (w, d), shown in quoted.items():
        ms[(w, d)] = {c: rows[(w, d, "jax", c)]["ms"]
                      for c in ("ceiling", "ema_core", "handoff", "handoff_params")}  # fmt: skip
        for value, text in zip(ms[(w, d)].values(), shown, strict=True):
            assert _rounded(value, text), (w, d, value, text)
    tiny, r32, r16 = (
        ms[("many_small_20k", "fp32")],
        ms[("resnet50", "fp32")],
        ms[("resnet50", "bf16")],
    )
    _says(
        f"the handoff alone is {100 * tiny['handoff'] / tiny['ema_core']:.0f}% of "
        "`make_update`'s time"
    )
    _says(f"cannot pass {tiny['ceiling'] / tiny['handoff']:.2f} of the ceiling")
    _says(f"({tiny['ceiling'] / tiny['handoff_params']:.2f} of the ceiling before any arithmetic)")

    def bound(m: dict[str, float], what: str) -> str:
        return f"{m['ceiling'] / (m['ceiling'] + m[what]):.2f}"

    _says(f"(ceiling + handoff): {bound(r16, 'handoff')} with bf16 params")
    _says(f"and {bound(r32, 'handoff')} in fp32, just above it")
    _says(f"would have a bound of {bound(r16, 'handoff_params')} on ResNet-50 bf16")
    assert len(workloads.load("resnet50").shapes) == 161  # "the 161 arrays"
    full = _rows("cpu-2026-12-02.md")
    _says(
        f"`make_update` reached {rows[('resnet50', 'fp32', 'jax', 'ema_core')]['ceil']:.2f} in "
        f"that run and {full[('resnet50', 'fp32', 'jax', 'ema_core')]['ceil']:.2f} in the full run"
    )
    _says(
        f"`tree_map` {rows[('resnet50', 'fp32', 'jax', 'tree_map')]['ceil']:.2f} and "
        f"{full[('resnet50', 'fp32', 'jax', 'tree_map')]['ceil']:.2f}"
    )


def test_the_jax_packed_addresses_and_resnet_runs() -> None:
    packed = _rows("cpu-2026-12-03-jax-packed.md")
    head = (RESULTS / "cpu-2026-12-03-jax-packed.md").read_text(encoding="utf-8")
    assert head.startswith("Machine: Intel(R) Xeon(R)") and ", 2 CPUs (cpu), 2026-12-03," in head
    assert (
        "`python -m benchmarks --backend jax --workload resnet50 --no-peers --tag jax-packed`"
        in head
    )

    def x(rows: dict, w: str, d: str, c: str) -> str:
        return f"{rows[(w, d, 'jax', c)]['ceil']:.2f}"

    _says(
        f"ran at {x(packed, 'resnet50', 'fp32', 'packed_concat')} of the ceiling in fp32 and "
        f"{x(packed, 'resnet50', 'bf16', 'packed_concat')} with bf16 params, against "
        f"{x(packed, 'resnet50', 'fp32', 'ema_core')} and "
        f"{x(packed, 'resnet50', 'bf16', 'ema_core')} for `make_update` in the same run"
    )
    addresses = _rows("cpu-2026-12-02-jax-addresses.md")[
        ("many_small_20k", "fp32", "jax", "addresses")
    ]
    _says(
        f"took {addresses['ms']:.0f} ms on 20k tiny arrays, {addresses['ceil']:.2f} of the ceiling"
    )
    resnet = _rows("cpu-2026-12-02-jax-resnet.md")
    _says(
        f"`make_update` {x(resnet, 'resnet50', 'fp32', 'ema_core')} (fp32) and "
        f"{x(resnet, 'resnet50', 'bf16', 'ema_core')} (bf16 params) of the ceiling"
    )


def test_the_jax_compare_runs() -> None:
    runs = _compare("cpu-2026-12-02-compare-jax.txt")["1"]
    new, old = runs["."], runs["d2c7b99"]
    r32 = ("jax make_update x", "resnet50", "float32")
    tiny = ("jax make_update", "many_small_20k", "float32")
    _says(
        f"fp32 {', '.join(f'{v:.2f}' for v in new[r32][:2])} and {new[r32][2]:.2f} against "
        f"{', '.join(f'{v:.2f}' for v in old[r32][:2])} and {old[r32][2]:.2f}"
    )
    _says(
        f"20k tiny {statistics.median(new[tiny]):.0f} ms (median) against "
        f"{statistics.median(old[tiny]):.0f}"
    )
    second = _compare("cpu-2026-12-02-compare-placements.txt")["2"]
    after, before = second["."], second["f57069b"]
    r = ("jax make_update", "resnet50", "float32")
    assert all(len(v) == 5 for v in after.values())  # --rounds 5
    _says(
        f"fp32 medians of {_median(before[r])} ms before and {_median(after[r])} ms after, "
        f"20k tiny {statistics.median(before[tiny]):.0f} and "
        f"{statistics.median(after[tiny]):.0f} ms"
    )


# -- the benchmark's definitions ---------------------------------------------------------------


def test_bytes_per_element_and_the_ceilings_move_the_same_bytes() -> None:
    # "(12 bytes for fp32, 10 for a float32 shadow over bf16 params)"; the ceiling is "one flat
    # in-place stream of the same bytes"; bf16 shadows "(6 bytes per element ...) move 40% fewer"
    assert harness.BYTES_PER_ELEMENT == {"fp32": 12, "bf16": 10}
    _says("(12 bytes for fp32, 10 for a float32 shadow over bf16 params)")
    assert 1 - (2 + 2 + 2) / harness.BYTES_PER_ELEMENT["bf16"] == pytest.approx(0.4)
    for name in workloads.DEFAULT:
        w = workloads.load(name)
        for dtype, per in harness.BYTES_PER_ELEMENT.items():
            moved = 12 * _common.flat_elements(w, dtype)  # float32: two reads and a write
            assert per * w.elements - 12 < moved <= per * w.elements


def test_numpy_ceiling_is_an_in_place_add_and_ema_core_is_the_ema() -> None:
    from benchmarks.backends import numpy as bench_np

    cases = bench_np.cases(TINY, "fp32", "cpu")
    assert {"ceiling", "ema_core", "ema_core_1thread", "naive"} <= set(cases)
    ceiling = cases["ceiling"]
    cells = dict(zip(ceiling.__code__.co_freevars, ceiling.__closure__ or (), strict=True))
    a = cells["a"].cell_contents
    assert a.size == _common.flat_elements(TINY, "fp32") and a.dtype == np.float32
    before = a.copy()
    cases["ceiling"](0)  # numba-free, allocation-free: numpy's own `a += b`
    tracemalloc.start()
    try:
        cases["ceiling"](1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(a, before + 2)
    assert peak < a.nbytes
    shadows, params = _common.host_arrays(TINY)
    want = [
        s + np.float32(1 - bench_np.DECAY) * (p - s) for s, p in zip(shadows, params, strict=True)
    ]
    got = cases["ema_core"](1)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_torch_ceiling_is_one_flat_lerp_and_the_contenders_take_ema_steps() -> None:
    torch = pytest.importorskip("torch")
    from benchmarks.backends import torch as bench_torch

    cases = bench_torch.cases(TINY, "bf16", "cpu")
    assert set(cases) == {"ceiling", "ema_core", "EMA class", "ema_update dict"}
    out = cases["ceiling"](0)
    assert out.dim() == 1 and out.numel() == _common.flat_elements(TINY, "bf16")
    assert out.dtype == torch.float32
    before = out.clone()
    assert cases["ceiling"](1) is out  # in place
    torch.testing.assert_close(out, torch.lerp(before, torch.ones_like(before), 0.001))
    shadows, params = _common.host_arrays(TINY)
    p = [torch.from_numpy(x).to(torch.bfloat16).float() for x in params]
    s = [torch.from_numpy(x) for x in shadows]
    got = cases["ema_core"](1)  # the list ...
    want = [a + 0.001 * (b - a) for a, b in zip(s, p, strict=True)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    got = cases["ema_update dict"](2)  # ... and the dict over the same shadows: a second step
    for g, w, b in zip(got.values(), want, p, strict=True):
        torch.testing.assert_close(g, w + 0.001 * (b - w))


def test_torch_peers_keep_bf16_shadows_on_bf16_rows() -> None:
    # "The torch peers that look faster keep **bf16 shadows**": AveragedModel, always there
    torch = pytest.importorskip("torch")
    from benchmarks.peers import torch as peers

    cases = peers.cases(TINY, "bf16", "cpu")
    step = cases["torch AveragedModel"]
    kind = torch.optim.swa_utils.AveragedModel
    cells = [c.cell_contents for c in step.__closure__ or ()]
    averaged = next(c for c in cells if isinstance(c, kind))
    assert {p.dtype for p in averaged.module.parameters()} == {torch.bfloat16}


def test_a_bf16_shadow_with_decay_0999_stalls() -> None:
    # "a bf16 shadow with decay 0.999 stalls": 1 + 0.001 * (p - 1) rounds back to 1 in bf16
    torch = pytest.importorskip("torch")
    shadow = torch.ones(4, dtype=torch.bfloat16)
    wide = torch.ones(4)
    params = torch.full((4,), 2.0, dtype=torch.bfloat16)
    for _ in range(100):
        shadow.lerp_(params, 0.001)
        wide.lerp_(params.float(), 0.001)
    assert torch.equal(shadow, torch.ones(4, dtype=torch.bfloat16))
    assert wide[0].item() > 1.09  # a float32 shadow moved


def test_jax_contenders_ceiling_donated_handoff_chunks_and_addresses() -> None:
    jax = pytest.importorskip("jax")
    from benchmarks.backends import jax as bench_jax
    from ema_core.jax._chunked import CHUNK

    cases = bench_jax.cases(TINY, "fp32", "cpu")
    first = cases["ceiling"](0)
    assert first.size == _common.flat_elements(TINY, "fp32")
    before = np.asarray(first).copy()
    second = cases["ceiling"](1)
    assert first.is_deleted()  # "a donated `jax.jit`"
    np.testing.assert_allclose(np.asarray(second), before + (1 - bench_jax.DECAY) * (1 - before))
    # "the `addresses` row, which only reads each param's and shadow's buffer address"
    found = cases["addresses"](0)
    assert len(found) == 2 * len(TINY.shapes) and all(isinstance(a, int) for a in found)
    # "in `make_update`'s chunks"; "a packed state, which returns 20 buffers instead of 20,000"
    assert -(-20_000 // CHUNK) == 20
    assert len(workloads.load("many_small_20k").shapes) == 20_000
    many = Workload("many", ((2,),) * (CHUNK + 3))
    bulk = bench_jax.cases(many, "fp32", "cpu")
    assert len(bulk["handoff_params"](0)) == 2
    assert len(bulk["handoff"](0)) == CHUNK + 3
    # the hand-written tree_map and packed_concat are left out past MAX_BASELINE_LEAVES
    assert "tree_map" not in bulk and "packed_concat" not in bulk
    assert {"tree_map", "packed_concat"} <= set(cases)
    flat = cases["packed_concat"](0)
    assert flat.dtype == jax.numpy.float32 and flat.shape == (TINY.elements,)


def test_the_default_plan_leaves_jax_20k_bf16_out() -> None:
    # the table's "20k tiny | bf16 | ... | - | -" for JAX and optax
    from benchmarks import __main__ as bench_main

    assert ("jax", "many_small_20k", "bf16") in bench_main.TRIMMED
    assert "many_small_20k" in workloads.DEFAULT


class _Fake:
    NAME = "fake"

    def __init__(self) -> None:
        self.log: list[str] = []

    def cases(self, workload: Workload, dtype: str, device: str) -> dict[str, Any]:
        return {
            "ceiling": lambda t: self.log.append("c"),
            "ema_core": lambda t: self.log.append("e"),
        }

    def sync(self, result: Any) -> None:
        return None


def test_each_contender_alternates_with_the_ceiling_and_is_divided_by_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "Each contender is timed in alternation with the ceiling (ceiling, contender, ceiling,
    # ...) and divided by the ceiling timed beside it"
    fake = _Fake()
    rows = harness.measure(fake, TINY, "fp32", "cpu", repeats=4)
    timed = "".join(fake.log)
    start = timed.index("e" * 3) + 3  # after the contender's three warm-up calls
    assert timed[start : start + 8] == "cecececece"[:8]
    assert {r.contender for r in rows} == {"ceiling", "ema_core"}
    fixed = {"ceiling": ([2.0, 2.0, 2.0], []), "ema_core": ([4.0, 5.0, 6.0], [1.0, 3.0, 2.0])}

    def time_case(step: Any, sync: Any, *, ceiling: Any = None, **kw: Any) -> Any:
        return fixed["ceiling" if ceiling is None else "ema_core"]

    monkeypatch.setattr(harness, "time_case", time_case)
    monkeypatch.setattr(harness.probes, "extra_bytes", lambda *a: None)
    rows = {r.contender: r for r in harness.measure(_Fake(), TINY, "fp32", "cpu", repeats=3)}
    assert rows["ema_core"].of_ceiling == pytest.approx(2.0 / 5.0)  # the paired ceilings' median
    assert rows["ceiling"].median_ms == pytest.approx(2000.0)  # the ceiling reports all its calls


def test_a_run_writes_device_date_tag_json_md_png(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # "writes `benchmarks/results/<device>-<date>.{json,md,png}`" (and "--tag" appends to it)
    pytest.importorskip("matplotlib")
    import datetime

    from benchmarks import __main__ as bench_main
    from benchmarks import bank, stateless, tree

    shapes = tmp_path / "shapes"
    shapes.mkdir()
    (shapes / "tiny.json").write_text('{"params": [["a", [3, 4]], ["b", [5]]]}')
    monkeypatch.setattr(workloads, "HERE", shapes)
    for module in (tree, stateless, bank):
        monkeypatch.setattr(module, "main", lambda: "")
    out = tmp_path / "out"
    argv = ["--backend", "numpy", "--workload", "tiny", "--dtype", "fp32", "--no-peers",
            "--repeats", "3", "--tag", "audit", "--out", str(out)]  # fmt: skip
    assert bench_main.main(argv) == 0
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    assert sorted(p.name for p in out.iterdir()) == [
        f"cpu-{date}-audit.{ext}" for ext in ("json", "md", "png")
    ]


def test_the_stateless_benchmark_alternates_class_list_dict_on_the_same_tensors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch = pytest.importorskip("torch")
    from benchmarks import stateless

    monkeypatch.setattr(workloads, "load", lambda name: TINY)
    calls = stateless._pair("tiny", "bf16")
    assert list(calls) == ["EMA class", "ema_update list", "ema_update dict"]
    log: list[str] = []
    timed = {k: (lambda k=k: log.append(k)) for k in calls}
    harness.alternate(timed, rounds=2, warmup=1)
    assert log == list(calls) * 3  # class, list, dict, class, ...
    # the three update float32 shadows of the same bf16 params: the same first step
    list_out = calls["ema_update list"](1)
    dict_out = calls["ema_update dict"](1)
    for a, b in zip(list_out, dict_out.values(), strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_the_bank_contender_computes_the_separate_emas(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from benchmarks import bank

    monkeypatch.setattr(workloads, "load", lambda name: TINY)
    found = bank._contenders("tiny", "fp32", 2)
    for _ in range(3):
        found["bank"]()
        found["separate"]()
    separate = found["separate"].__closure__
    assert separate is not None
    emas = next(c.cell_contents for c in separate if isinstance(c.cell_contents, list))
    the_bank = found["bank"].__self__
    assert len(emas) == 2
    for ours, alone in zip(the_bank, emas, strict=True):
        for a, b in zip(
            ours.state_dict()["shadow"].values(), alone.state_dict()["shadow"].values(), strict=True
        ):
            torch.testing.assert_close(a, b)


def test_gpu_script_runs_the_gpu_tests_and_the_cuda_benchmark() -> None:
    script = (ROOT / "benchmarks" / "gpu.sh").read_text(encoding="utf-8")
    assert re.search(r"pytest .*-m gpu", script)
    assert "python3 -m benchmarks --device cuda" in script


# -- the CPU routes, thresholds and caches ------------------------------------------------------


def test_without_numba_large_is_2_pow_18_contiguous_elements_in_cache_sized_blocks() -> None:
    # "it hands the large contiguous leaves (2**18 elements or more) to torch's own ops in
    # cache-sized blocks ... and the rest to the numpy blocks"
    torch = pytest.importorskip("torch")
    from ema_core.backends.torch import _host

    assert _host.LARGE == 2**18
    assert _host.TORCH_BLOCK * 4 == 8 * 2**20  # 8 MiB of float32: an L3-sized block
    sizes = [2**18 - 1, 2**18, 7]
    shadows = [torch.zeros(n) for n in sizes]
    params = [torch.ones(n, dtype=torch.bfloat16) for n in sizes]
    strided_s = torch.zeros(2, 2**18)[:, ::2]  # 2**18 elements, not contiguous
    strided_p = torch.ones(2**18, 2, dtype=torch.bfloat16).t()[:, ::2]
    bound = _host.bind([*shadows, strided_s], [*params, strided_p])
    assert [s.numel() for s, _ in bound.large] == [2**18]
    assert bound.small == [0, 2, 3]


def _bf16_model() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)).to(torch.bfloat16)


def test_the_class_keeps_its_host_engine_plan_and_rebinds_when_a_tensor_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "one plan over numpy views of the tensors, kept between updates"
    torch = pytest.importorskip("torch")
    from ema_core.backends.torch import _host
    from ema_core.torch import EMA

    built: list[int] = []
    original = _host.Bound

    class Counted(original):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any) -> None:
            built.append(1)
            super().__init__(*a)

    monkeypatch.setattr(_host, "Bound", Counted)
    model = _bf16_model()
    average = EMA(model, decay=0.9)
    for _ in range(4):
        average.update()
    assert len(built) == 1
    weight = model[0].weight
    new = (weight.detach().float() + 1).to(torch.bfloat16)
    weight.data = new
    shadow_before = average.state_dict()["shadow"]["0.weight"].clone()
    average.update()
    assert len(built) == 2
    want = shadow_before + 0.1 * (new.float() - shadow_before)
    torch.testing.assert_close(average.state_dict()["shadow"]["0.weight"], want)


@pytest.mark.parametrize("numba", ["1", "0"])
@pytest.mark.parametrize("pdtype", ["bfloat16", "float32"])
def test_a_steady_state_class_update_allocates_nothing_model_sized(
    monkeypatch: pytest.MonkeyPatch, numba: str, pdtype: str
) -> None:
    # the class's row of the results files: `MB/update` 0.0 (the benchmark's own probe, torch's
    # profiler), on the host engine (bf16 params, a leaf past LARGE: torch's blocks without
    # numba, the scratch reused) and on the fused `lerp_` (fp32)
    torch = pytest.importorskip("torch")
    if numba == "1":
        pytest.importorskip("numba")
    from benchmarks import probes
    from ema_core import _settings
    from ema_core.torch import EMA

    monkeypatch.setenv("EMA_CORE_NUMBA", numba)
    monkeypatch.setattr(_settings, "_kept", [])
    from ema_core.backends.torch import _host

    blocks: list[int] = []
    original = _host._torch_blocks
    monkeypatch.setattr(_host, "_torch_blocks", lambda *a: blocks.append(1) or original(*a))
    dtype = getattr(torch, pdtype)
    params = {"big": torch.randn(2**18 + 5).to(dtype), "small": torch.randn(33).to(dtype)}
    average = EMA(params, decay=0.999)
    for t in (1, 2):
        average.update(t)
    extra = probes.extra_bytes("torch", "cpu", average.update, 3)
    assert extra is not None and extra < 64 * 1024, extra  # a new 8 MiB scratch would show
    assert bool(blocks) is (numba == "0" and pdtype == "bfloat16")  # the route it claims


@pytest.mark.parametrize("route", ["host-engine", "foreach-lerp"])
def test_bf16_goes_through_the_host_engine_and_fp32_through_lerp(route: str) -> None:
    # "On the CPU each pair goes through ema-core's host engine" (bf16 params, float32
    # shadows); "ResNet-50 and torch fp32 (a fused `lerp_`) do not go through that path"
    torch = pytest.importorskip("torch")
    from ema_core.backends.torch import _routes

    pdtype = torch.bfloat16 if route == "host-engine" else torch.float32
    shadows = [torch.zeros(5), torch.zeros(3, 4)]
    params = [torch.ones(5, dtype=pdtype), torch.ones(3, 4, dtype=pdtype)]
    plan = _routes.make_plan(shadows, params, ["float"] * 2)
    assert [way for _, way in _routes.routes(plan, 0.999)] == [route]
