"""README claims of "Quickstart", "In your trainer" (the intro) and "Architecture" that no other
test asserted. Each test names its claim; the comment quotes it. The other sections audited with
these: ``test_readme_claims_commands.py`` ("The two commands"), ``..._checkpoints.py``,
``..._presets.py`` ("Coming from another EMA") and ``..._testing_kit.py`` ("Test your own EMA")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib

import ema_core as ema
from ema_core import _stateless
from tests.xla_compiles import counting_compiles

ROOT = Path(__file__).resolve().parents[1]


# --- Quickstart -------------------------------------------------------------------------------


def test_torch_functional_api_builds_no_graph_and_shadows_never_require_grad() -> None:
    # "no autograd graph is built; shadows never require grad"
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(4, 2)
    config = ema.Config(schedule=ema.schedules.warmup(0.999), init="zeros")
    state = ema.init(dict(model.named_parameters()), config)
    state = ema.update(state, dict(model.named_parameters()), config)
    reads = [*state.shadow.values(), *ema.average(state, config).values()]
    shadow = {"w": torch.zeros(3)}
    reads += ema.ema_update(shadow, {"w": torch.ones(3, requires_grad=True)}, 1).values()
    assert all(not t.requires_grad and t.grad_fn is None for t in reads)


def test_the_jax_step_is_traced_once_and_never_recompiles() -> None:
    # "the step is traced and never triggers a recompile"
    jax = pytest.importorskip("jax")
    config = ema.Config(schedule=ema.schedules.power_function(sigma_rel=0.05), init="copy")
    traces: list[int] = []

    @jax.jit
    def step(params: Any, state: Any) -> Any:
        traces.append(1)
        return ema.update(state, params, config)

    params = {"w": jax.numpy.zeros(4)}
    state = ema.init(params, config)
    for _ in range(3):  # the first calls may compile (uncommitted inputs, then committed ones)
        state = step(params, state)
    with counting_compiles() as compiles:
        for _ in range(20):
            state = step(params, state)
    assert int(state.step) == 23 and len(traces) == 1 and compiles == []


def test_the_quickstart_jax_train_step_compiles_once() -> None:
    # "the step is traced and never triggers a recompile": over the Quickstart's own loop
    jax = pytest.importorskip("jax")
    config = ema.Config(schedule=ema.schedules.power_function(sigma_rel=0.05), init="copy")
    step = jax.jit(lambda params, state: ema.update(state, params, config))
    params = {"w": jax.numpy.zeros(4)}
    state = jax.block_until_ready(ema.init(params, config))
    with counting_compiles() as compiles:
        for _ in range(5):
            state = step(params, state)
    assert len(compiles) == 1


# --- In your trainer --------------------------------------------------------------------------


def test_each_integration_imports_its_framework_only_when_used_and_is_an_extra() -> None:
    # "`ema_core.integrations` holds one module per framework, each imported only when used and
    # each an optional extra (`pip install "ema-core[lightning]"`, `[keras]`, `[accelerate]`)"
    code = (
        "import sys, ema_core.integrations; "
        "print(sorted(m for m in ('lightning', 'keras', 'accelerate', 'torch', 'jax') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    for name in ("lightning", "keras", "accelerate"):
        assert (ROOT / "ema_core" / "integrations" / f"{name}.py").is_file()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    for extra, package in [("lightning", "lightning"), ("keras", "keras")]:
        assert any(r.startswith(package) for r in extras[extra]), extra
    assert any(r.startswith("accelerate") for r in extras["accelerate"])


# --- Architecture -----------------------------------------------------------------------------

# the files and folders the README's tree names (outside ema_core a map, not a full listing; for
# the folders of ema_core every module, which test_layout_lists_every_module_of_ema_core pins)
LAYOUT = {
    "ema_core": "__init__ _types _settings _ops _step_forms _paths _tree _tree_pair _pytree "
    "_mappings _checks _leaf_checks _leaf_checks_x64 _leaf_dtypes _writes _memory_overlap _core "
    "_config _config_words _config_text _arguments _read_checks _stateless _banks _snapshot_args "
    "_bank_snapshots _atomic _safetensors _safetensors_header _bf16 _api _api_read _graph_break",
    "ema_core/backends": "__init__ generic numpy _numpy_memory cupy _cupy_kernels",
    "ema_core/backends/host": "_threads _numba _numba_loops _numba_tables _blocks _bank "
    "_bank_loops",
    "ema_core/backends/torch": "_plan _routes _prewrite _foreach _host _memory _cuda "
    "_triton_kernel _launch _pairs _caches _finite",
    "ema_core/backends/jax": "__init__ _leaves _scalars",
    "ema_core/torch": "_module _steps _copies _names _prefixes _tied_names _filters _watch "
    "_watch_views _ties "
    "_rules _options _refusals _store _swap _interrupts _eager _restored _averages _state "
    "_dtensor _fsdp _dist _bank _bank_args _bank_fused _bank_snap",
    "ema_core/jax": "_compiled _chunked _call_checks _finite_params _split _optax _checkpoint "
    "_packed "
    "_packed_layout _packed_update _packed_checks _bank _bank_update _bank_chunks _placement "
    "_devices "
    "_sharding",
    "ema_core/posthoc": "_math _coefficients _inputs _warning _snapshots _sources _records "
    "_listing _reconstruct _leaves __main__ _plot",
    "ema_core/checkpoint": "_format _arrays _save _load _load_file _load_ema _load_state _peers "
    "_peers_read _export _diffusers",
    "ema_core/integrations": "lightning _lightning_args _lightning_state keras _keras_weights "
    "_keras_swap _keras_args _keras_state accelerate _accelerate_args",
    "ema_core/presets": "_seeds _torch _profiles _optimizers _args _schedules",
    "ema_core/compat": "mmedit tensorflow allennlp paddle _arrays _writes _counters _modules "
    "_tf_state _tf_names",
    "ema_core/testing": "_oracle _strategies _properties _inputs _compare _convert _dtypes _args",
    "ema_core/schedules": "__init__ _base _values _decays _power _gamma _every _window_logs "
    "_gates _gated",
    "tests": "conftest reference peers",
    "benchmarks": "__main__ harness chart tree",
    "benchmarks/backends": "numpy torch jax cupy",
    "benchmarks/peers": "__init__",
    "scripts": "first_decays parity_bounds threads_vs_prange lock bank_jax",
    "examples": "demo _demo_data _demo_torch _demo_jax _demo_agreement flax_nnx_ema",
}
README = ROOT / "README.md"
PACKAGES = sorted(p.parent for p in (ROOT / "ema_core").rglob("__init__.py"))


def _modules(package: Path) -> set[str]:
    """The modules of one package folder: its ``.py`` files but ``__init__``."""
    return {p.stem for p in package.glob("*.py") if p.stem != "__init__"}


def _tree_entries(readme: str) -> dict[str, set[str]]:
    """The ``ema_core/`` tree of the README's Architecture block: folder (relative to
    ``ema_core``, "" for the package itself) -> every word of the entries about that folder.
    An entry starts at column 2 (``_api.py``, ``backends/numpy``, ``torch/``) and runs on over
    the deeper-indented lines below it; its first word says the folder (``backends/numpy``:
    ``backends``); the tree ends at the first line at column 0."""
    section = readme.split("\n## Architecture\n", 1)[1]
    lines = section.split("```", 2)[1].splitlines()
    start = lines.index("ema_core/")
    entries: dict[str, set[str]] = {}
    folder = None
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        if line[2] != " ":
            folder = _folder(line.split()[0])
        if folder is not None:
            entries.setdefault(folder, set()).update(re.findall(r"\w+", line))
    return entries


def _folder(head: str) -> str | None:
    """The folder an entry of the tree is about, from its first word (None: a layer's title)."""
    if head == "--":
        return None
    return head.removesuffix("/") if head.endswith("/") else head.rpartition("/")[0]


def _relative(package: Path) -> str:
    return "/".join(package.relative_to(ROOT / "ema_core").parts)


def test_layout_lists_every_module_of_ema_core() -> None:
    for package in PACKAGES:
        folder = str(package.relative_to(ROOT))
        assert set(LAYOUT[folder].split()) - {"__init__"} == _modules(package), folder


def test_the_architecture_tree_names_every_module_of_ema_core_in_its_folder() -> None:
    # "Architecture": the ema_core/ tree, read back; a module missing there is missing here
    entries = _tree_entries(README.read_text())
    missing = []
    for package in PACKAGES:
        folder = _relative(package)
        named = entries.get(folder, set())
        where = package.relative_to(ROOT)
        missing += [f"{where}/{m}.py" for m in sorted(_modules(package) - named)]
        missing += [f"{where}/ (no entry)"] if folder and folder not in entries else []
    assert missing == []


@pytest.mark.parametrize("folder", sorted(LAYOUT))
def test_the_modules_the_architecture_tree_names_exist(folder: str) -> None:
    missing = [m for m in LAYOUT[folder].split() if not (ROOT / folder / f"{m}.py").is_file()]
    assert missing == [], f"{folder}: {missing}"


def test_the_benchmark_tree_holds_workloads_gpu_sh_and_results() -> None:
    bench = ROOT / "benchmarks"
    assert list((bench / "workloads").glob("*.json")) and (bench / "gpu.sh").is_file()
    assert list((bench / "results").glob("*.md"))


def test_the_plan_cache_keeps_at_most_4_entries_least_recently_used_dropped() -> None:
    # "the second call keeps the result (`ema_core/_stateless.py`, at most 4 entries)"
    _stateless.clear()
    nests = [({"w": np.zeros(3)}, {"w": np.ones(3)}) for _ in range(6)]
    for shadow, params in nests:
        for step in (1, 2):  # an entry is made the second time in a row
            ema.ema_update(shadow, params, step, decay=0.5)
    kept = [entry.ids for entry in _stateless._ENTRIES.values()]
    assert kept == [[id(s["w"]), id(p["w"])] for s, p in nests[2:]]
    _stateless.clear()


@pytest.mark.parametrize("framework", ["jax.numpy", "array_api_strict"])
def test_jax_and_array_api_strict_calls_are_not_cached(framework: str) -> None:
    # "JAX and array-api-strict calls are not cached" (CuPy calls are: tests/test_cupy_backend.py)
    xp = pytest.importorskip(framework)
    _stateless.clear()
    shadow, params = {"w": xp.zeros(3)}, {"w": xp.ones(3)}
    for step in (1, 2, 3):
        shadow = ema.ema_update(shadow, params, step, decay=0.5)
    assert not _stateless._ENTRIES
