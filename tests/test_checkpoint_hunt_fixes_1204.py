"""What a hunt for broken promises in ``ema_core.checkpoint`` found (2026-12-04), each fixed:

* ``save`` of a torch ``EMA``'s ``state_dict()`` loaded in a fresh process (no
  ``ema_core.torch`` imported yet) raised a bare ``KeyError``;
* a uint16/32/64 step (a numpy or JAX state's file) loaded into a torch ``EMA``, whose next
  update then failed (torch has no ``<`` for them); such a torch step is refused where it enters;
* a bfloat16 weight was saved but could not be loaded back (numpy knows no bfloat16 without
  ml_dtypes; JAX's was refused as not floating);
* ``load`` into an uncommitted JAX state returned committed arrays (a jitted update then
  refused params committed to another device, or compiled again);
* a header holding an int of over 4,300 digits, a lone surrogate in a name or metadata, and a
  donated JAX state gave raw Python or JAX errors instead of ones naming the file or leaf.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
from ema_core.checkpoint import load, save
from tests.two_cpu_devices import ROOT


def _run(script: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_torch_state_dict_saves_in_a_process_that_never_imported_ema_core_torch(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    source = tmp_path / "sd.pt"
    _run(f"""
        import torch
        from ema_core.torch import EMA
        ema = EMA(torch.nn.Linear(2, 2), decay=0.5)
        ema.update()
        torch.save(ema.state_dict(), {str(source)!r})
    """)
    out = _run(f"""
        import sys, torch
        from ema_core.checkpoint import save
        assert "ema_core.torch" not in sys.modules
        print(save({str(tmp_path / "e.safetensors")!r}, torch.load({str(source)!r})))
    """)
    assert out.strip().endswith("e.safetensors")


def test_an_unsigned_step_loads_into_a_torch_ema_that_then_updates(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    config = ema.Config(schedule=0.5)
    state = ema.init({"weight": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)})
    state = ema.update(state._replace(step=np.asarray(0, np.uint32)), state.shadow, config)
    path = save(tmp_path / "u.safetensors", state, config)
    target = EMA(torch.nn.Linear(2, 2), config=config)
    load(path, target)
    assert target.step == 1
    target.update()
    assert target.step == 2


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "uint64"])
def test_a_bare_unsigned_torch_step_is_refused_before_anything_changes(dtype: str) -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    if not hasattr(torch, dtype):
        pytest.skip(f"this torch has no {dtype}")
    model = torch.nn.Linear(2, 2)
    target = EMA(model, decay=0.5)
    before = {k: v.clone() for k, v in target.state_dict()["shadow"].items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(TypeError, match=rf"step is a torch\.{dtype} tensor.*int64"):
        target.update(torch.tensor(1, dtype=getattr(torch, dtype)))
    assert target.step == 0
    for k, v in target.state_dict()["shadow"].items():
        assert torch.equal(v, before[k])


def test_a_bfloat16_weight_round_trips_in_torch_without_ml_dtypes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = _run(f"""
        import sys, torch, ema_core
        from ema_core.checkpoint import load, save
        config = ema_core.Config(schedule=0.9)
        weight = torch.tensor(1.0, dtype=torch.bfloat16)
        state = ema_core.EMAState(torch.tensor(0), {{"w": torch.ones(2)}}, weight)
        state = ema_core.update(state, {{"w": torch.zeros(2)}}, config)
        back = load(save({str(tmp_path / "t.safetensors")!r}, state, config), state, config=config)
        assert back.weight.dtype == torch.bfloat16 and torch.equal(back.weight, state.weight)
        print("ml_dtypes" in sys.modules)
    """)
    assert out.strip() == "False"  # numpy never had a bfloat16 to lean on


def test_a_bfloat16_weight_round_trips_in_jax(tmp_path: Path) -> None:
    jnp = pytest.importorskip("jax.numpy")
    config = ema.Config(schedule=0.9)
    state = ema.EMAState(jnp.int32(0), {"w": jnp.ones(2)}, jnp.asarray(1.0, jnp.bfloat16))
    state = ema.update(state, {"w": jnp.zeros(2)}, config)
    back = load(save(tmp_path / "j.safetensors", state, config), state, config=config)
    assert back.weight.dtype == jnp.bfloat16 and float(back.weight) == float(state.weight)


def test_load_into_an_uncommitted_jax_state_keeps_it_uncommitted(tmp_path: Path) -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from ema_core.jax import make_update

    config = ema.Config(schedule=0.5)
    params = {"w": jnp.ones(3)}
    like = ema.init(params, config)
    assert not like.shadow["w"].committed
    back = load(save(tmp_path / "s.safetensors", like, config), like, config=config)
    assert not any(x.committed for x in jax.tree_util.tree_leaves(back))
    assert int(make_update(config)(back, params).step) == 1


def test_a_header_with_a_huge_int_is_refused_naming_the_file(tmp_path: Path) -> None:
    state = ema.init({"w": np.ones(2, np.float32)})
    raw = save(tmp_path / "ok.safetensors", state).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    text = raw[8 : 8 + n].decode().rstrip().replace('"shape":[2]', '"shape":[' + "9" * 5000 + "]")
    head = text.encode()
    head += b" " * (-len(head) % 8)
    bad = tmp_path / "big.safetensors"
    bad.write_bytes(len(head).to_bytes(8, "little") + head + raw[8 + n :])
    with pytest.raises(ValueError, match=rf"{bad.name} is not a safetensors file.*4300 digits"):
        load(bad, state)


@pytest.mark.parametrize("where", ["metadata value", "metadata key", "shadow name"])
def test_a_lone_surrogate_is_refused_by_name_before_anything_is_written(
    tmp_path: Path, where: str
) -> None:
    text = "caf\udce9"
    state = ema.init({text if where == "shadow name" else "w": np.ones(2, np.float32)})
    metadata = {"note": text} if where == "metadata value" else {text: "x"}
    kwargs = {"metadata": metadata} if where != "shadow name" else {}
    with pytest.raises(ValueError, match=r"is not UTF-8 text"):
        save(tmp_path / "s.safetensors", state, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_save_of_a_donated_jax_state_names_it(tmp_path: Path) -> None:
    jax = pytest.importorskip("jax")
    config = ema.Config(schedule=0.9)
    params = {"w": jax.numpy.ones(3)}
    old = ema.init(params, config)
    jax.jit(lambda s, p: ema.update(s, p, config), donate_argnums=0)(old, params)
    with pytest.raises(ValueError, match=r"ema_or_state\.step was deleted"):
        save(tmp_path / "x.safetensors", old, config)
    assert list(tmp_path.iterdir()) == []
