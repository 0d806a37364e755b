"""README on the packed JAX state, audited: the figures of the Performance paragraph are the
cells of the run it links, the speed-up quoted in "JAX in depth" is their ratio, and the
defaults it names (``most=4096``, blocks of 256 leaves) are the code's. No timing is taken."""

from __future__ import annotations

import pytest

from tests.test_readme_performance_audit import README, RESULTS, _compare, _median, _rows, _says

RUN = "cpu-2026-12-04-jax-packed-all.md"


def _cell(workload: str, dtype: str, contender: str, column: str) -> float:
    return _rows(RUN)[(workload, dtype, "jax", contender)][column]


def test_the_run_is_the_command_and_machine_named() -> None:
    head = (RESULTS / RUN).read_text(encoding="utf-8")
    assert "`python -m benchmarks --backend jax --no-peers --tag jax-packed-all`" in head
    assert "AMD EPYC" in head and "2 CPUs" in head
    _says(f"(benchmarks/results/{RUN})")


def test_the_20k_figures_and_the_speed_up() -> None:
    w = "many_small_20k"
    packed, plain = _cell(w, "fp32", "packed", "ms"), _cell(w, "fp32", "ema_core", "ms")
    bound, handoff = _cell(w, "fp32", "handoff_params", "ms"), _cell(w, "fp32", "handoff", "ms")
    speed = f"{plain / packed:.2f}x faster"
    _says(
        f"the `packed` row took {packed:.1f} ms, "
        f"{_cell(w, 'fp32', 'packed', 'ceil'):.2f} of the ceiling, against {plain:.1f} ms "
        f"({_cell(w, 'fp32', 'ema_core', 'ceil'):.2f}) for `make_update` on the unpacked "
        f"state: {speed}."
    )
    _says(f"took {bound:.1f} ms ({_cell(w, 'fp32', 'handoff_params', 'ceil'):.2f})")
    _says(f"took {handoff:.1f} ms: the cost of a leaf-by-leaf state")
    assert handoff > plain  # "more than make_update": the handing back, not the EMA
    assert f"On 20,000 tiny arrays the update was {speed}" in " ".join(README.split())
    # "the packed bound itself is below it" (the 0.3 target)
    assert _cell(w, "fp32", "handoff_params", "ceil") < 0.3


def test_resnet_was_not_faster_packed() -> None:
    r = [_cell("resnet50", d, c, "ceil") for c in ("packed", "ema_core") for d in ("fp32", "bf16")]
    _says(
        f"{r[0]:.2f} and {r[1]:.2f} of the ceiling (fp32, bf16 params) against {r[2]:.2f} and "
        f"{r[3]:.2f} unpacked"
    )
    assert r[0] <= r[2] and r[1] <= r[3]  # "not faster"


def test_the_defaults_named_are_the_code_s() -> None:
    pytest.importorskip("jax")
    from ema_core.jax import _packed

    assert _packed.MOST == 4096 and _packed.BLOCK == 256
    text = " ".join(README.split())
    assert (
        "(at most `most=4096` elements) into flat buffers, one per shadow dtype and block of 256"
        in text
    )


RAVELED = {
    "1": "cpu-2026-12-04-jax-packed-raveled.md",
    "2": "cpu-2026-12-04-jax-packed-raveled-2.md",
    "3": "cpu-2026-12-04-jax-packed-raveled-all.md",
}


def _resnet_table(runs: dict[str, str]) -> dict[str, int]:
    """Each README row ``| [run](file) | bf16 packed | bf16 unpacked | fp32 packed | fp32
    unpacked |`` is the run's ResNet-50 ratios; returns how many runs met the 0.85 target."""
    met = {"bf16": 0, "fp32": 0, "leaf by leaf": 0}
    for run, name in runs.items():
        rows = _rows(name)

        def ceil(dtype: str, contender: str, rows: dict = rows) -> float:
            return rows[("resnet50", dtype, "jax", contender)]["ceil"]

        cells = [ceil(d, c) for d, c in [("bf16", "packed"), ("bf16", "ema_core"),
                                         ("fp32", "packed"), ("fp32", "ema_core")]]  # fmt: skip
        shown = " | ".join(f"{v:.2f}" for v in cells)
        assert f"| [{run}](benchmarks/results/{name}) | {shown} |" in README, run
        met["bf16"] += ceil("bf16", "packed") >= 0.845
        met["fp32"] += ceil("fp32", "packed") >= 0.845
        met["leaf by leaf"] += max(ceil("bf16", "ema_core"), ceil("fp32", "ema_core")) >= 0.845
    return met


def test_the_raveled_resnet_table_is_its_three_runs() -> None:
    # README's table of the packed state with raveled loose leaves: each cell the run's ratio
    text = " ".join(README.split())
    assert _resnet_table(RAVELED) == {"bf16": 3, "fp32": 1, "leaf by leaf": 1}
    assert "in three runs of three, and in fp32 in one of three" in text
    head = (RESULTS / RAVELED["1"]).read_text(encoding="utf-8")
    assert "--workload resnet50 --no-peers --repeats 60 --tag jax-packed-raveled`" in head
    everything = _rows(RAVELED["3"])
    spans = [everything[(w, d, "jax", c)]["ceil"] for w in ("vit_b16", "gpt2_small")
             for d in ("fp32", "bf16") for c in ("packed", "ema_core")]  # fmt: skip
    assert f"({min(spans[0::2]):.2f} to {max(spans[0::2]):.2f} against" in text
    assert f"{min(spans[1::2]):.2f} to {max(spans[1::2]):.2f})" in text
    tiny = [
        everything[("many_small_20k", "fp32", "jax", c)]["ceil"] for c in ("packed", "ema_core")
    ]
    assert f"the `packed` row was {tiny[0]:.2f} against {tiny[1]:.2f}." in text


ONE_CALL = {
    "4": "cpu-2026-12-04-jax-packed-one-call.md",
    "5": "cpu-2026-12-04-jax-packed-one-call-2.md",
    "6": "cpu-2026-12-04-jax-packed-one-call-3.md",
    "7": "cpu-2026-12-04-jax-packed-one-call-all.md",
    "8": "cpu-2026-12-04-jax-packed-barrier-all.md",
}


def test_the_one_call_resnet_table_is_its_four_runs() -> None:
    # README's table of the packed update made one compiled call: each cell the run's ratio,
    # and the counts of runs at the target the text states
    text = " ".join(README.split())
    assert _resnet_table(ONE_CALL) == {"bf16": 5, "fp32": 4, "leaf by leaf": 1}
    assert "0.85 target with bf16 params in five runs of five and in fp32 in four of five" in text
    assert "in five runs of five with bf16 params and four of five in fp32" in text
    assert "in every run with bf16 params and in four runs of five in fp32" in text
    for run, name in ONE_CALL.items():
        head = (RESULTS / name).read_text(encoding="utf-8").split("\n", 1)[0]
        tag = name.removeprefix("cpu-2026-12-04-").removesuffix(".md")
        whole = run in ("7", "8")
        command = (
            "--backend jax --no-peers"
            if whole
            else ("--backend jax --workload resnet50 --no-peers --repeats 60")
        )
        assert f"`python -m benchmarks {command} --tag {tag}`" in head, run
    everything = _rows(ONE_CALL["7"])
    spans = [everything[(w, d, "jax", c)]["ceil"] for w in ("vit_b16", "gpt2_small")
             for d in ("fp32", "bf16") for c in ("packed", "ema_core")]  # fmt: skip
    assert (
        f"was {min(spans[0::2]):.2f} to {max(spans[0::2]):.2f} against "
        f"{min(spans[1::2]):.2f} to {max(spans[1::2]):.2f} unpacked"
    ) in text
    tiny = [
        everything[("many_small_20k", "fp32", "jax", c)]["ceil"] for c in ("packed", "ema_core")
    ]
    assert f"unchanged) {tiny[0]:.2f} against {tiny[1]:.2f}." in text


def test_the_one_call_compare_medians() -> None:
    # the side-by-side run of the three packed updates: each median the rounds' median
    runs = _compare("cpu-2026-12-04-compare-jax-one-call.txt")["1"]
    text = " ".join(README.split())
    revs = ("9fbdc7d", "6655c22", ".")
    for workload, dtype, phrase in (
        ("resnet50", "float32", "medians were {}, {} and {} ms in fp32"),
        ("resnet50", "bfloat16", "and {}, {} and {} ms with bf16 params"),
        ("many_small_20k", "float32", "on 20k tiny arrays {}, {} and {} ms"),
    ):
        medians = [_median(runs[rev][("jax packed", workload, dtype)]) for rev in revs]
        assert phrase.format(*medians) in text, (workload, dtype, medians)
        assert all(len(runs[rev][("jax packed", workload, dtype)]) == 3 for rev in revs)


def test_the_host_work_compare_medians() -> None:
    runs = _compare("cpu-2026-12-04-compare-jax-host-work.txt")["1"]
    before, after = (
        runs[rev][("jax packed", "many_small_20k", "float32")] for rev in ("6655c22", ".")
    )
    assert len(before) == len(after) == 3
    text = " ".join(README.split())
    assert f"tiny arrays of {_median(before)} ms before and {_median(after)} ms after" in text
