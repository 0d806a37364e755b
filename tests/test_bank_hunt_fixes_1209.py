"""EMA bank fixes of a hostile-user hunt (1209), each test failing before its fix: a JAX bank
given one ``EMAState`` instead of a tuple (read as three states); a bank with ``snapshot_every``
over a tensor its snapshots cannot hold (built, then refused at every due step); a JAX bank's
leaf errors that did not say which state; a torch bank loading its own ``state_dict()`` with
the members reordered (a member's average lost); one EMA labelled with two sigma_rels; a
non-bool ``strict`` blamed on the state dict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ema_core
from ema_core.posthoc import save_snapshot

torch = pytest.importorskip("torch")

from ema_core.torch import EMABank  # noqa: E402

jax = pytest.importorskip("jax")
jnp = jax.numpy

from ema_core.jax import make_bank_update, pack  # noqa: E402

SINGLE = r"states must be a tuple of EMAStates, one per EMA of the bank, got one"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("k", [1, 3])
def test_a_jax_bank_names_one_state_given_for_a_tuple(k: int) -> None:
    bank = make_bank_update(sigma_rels=(0.05, 0.1, 0.15)[:k], donate=False)
    params = {"w": jnp.ones(3)}
    states = bank.init(params)
    with pytest.raises(TypeError, match=SINGLE + r" EMAState: pass \(state,\)"):
        bank(states[0], params)
    with pytest.raises(TypeError, match=SINGLE + " EMAState"):
        bank.averages(states[0])
    with pytest.raises(TypeError, match=SINGLE + r" packed state.*ema_core\.jax\.unpack"):
        bank(pack(states[0]), params)


def test_a_torch_bank_refuses_a_tensor_no_snapshot_holds_when_built(tmp_path: Path) -> None:
    named = {"w": torch.ones(2), "c": torch.ones(2, dtype=torch.complex64)}
    with pytest.raises(TypeError, match=r"snapshot_every=3: .*averages\['c'\] has dtype complex"):
        EMABank(named, sigma_rels=(0.05, 0.1), snapshot_every=3, snapshot_dir=tmp_path)
    reserved = {"w": torch.ones(2), "__metadata__": torch.ones(2)}
    with pytest.raises(ValueError, match=r"snapshot_every=1: .*'__metadata__'"):
        EMABank(reserved, sigma_rels=(0.05,), snapshot_every=1, snapshot_dir=tmp_path)
    assert _names(tmp_path) == []
    EMABank(named, sigma_rels=(0.05, 0.1))  # without snapshots the tensor is fine


def test_a_jax_bank_refuses_a_leaf_no_snapshot_holds_at_init(tmp_path: Path) -> None:
    bank = make_bank_update(sigma_rels=(0.05,), snapshot_every=2, snapshot_dir=tmp_path)
    with pytest.raises(TypeError, match=r"snapshot_every=2: .*averages\['c'\] has dtype complex"):
        bank.init({"w": jnp.ones(2), "c": jnp.ones(2, dtype=jnp.complex64)})
    assert _names(tmp_path) == []
    assert len(bank.init({"w": jnp.ones(2)})) == 1


@pytest.mark.parametrize("leaves", [2, 1100])  # 1100: the chunked path (over 1,024 leaves)
def test_a_jax_bank_leaf_error_names_the_state(leaves: int) -> None:
    bank = make_bank_update(sigma_rels=(0.05, 0.1), donate=False)
    params = {f"a{i:04d}": jnp.ones(3) for i in range(leaves)}
    good = bank.init(params)
    shape = {**params, "a0001": jnp.ones(4)}
    bad = (good[0], ema_core.init(shape, bank.configs[1]))
    with pytest.raises(ValueError, match=r"states\[1\]: state\.shadow\['a0001'\] has shape \(4,\)"):
        bank(bad, params)
    kind = {**params, "a0001": jnp.ones(3, dtype=jnp.int32)}
    bad = (ema_core.init(kind, bank.configs[0]), good[1])
    with pytest.raises(TypeError, match=r"states\[0\]: state\.shadow\['a0001'\] has dtype int32"):
        bank(bad, params)


def test_a_torch_bank_loads_its_own_state_dict_reordered() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    bank = EMABank(model, sigma_rels=(0.05, 0.1, 0.15))
    bank.update(1)
    with torch.no_grad():
        model.weight.add_(1.0)
    bank.update(2)
    before = [{n: v.clone() for n, v in ema.average.items()} for ema in bank]
    state = bank.state_dict()
    order = [2, 0, 1]
    state["emas"] = [state["emas"][k] for k in order]
    bank.load_state_dict(state, strict=False)
    for ema, k in zip(bank, order, strict=True):
        for name, value in ema.average.items():
            assert torch.equal(value, before[k][name]), (k, name)


def test_one_ema_has_one_sigma_rel_label(tmp_path: Path) -> None:
    near = np.arange(0.02, 0.28, 0.01).tolist()[8]  # 0.09999999999999999: the gamma of 0.1
    assert near != 0.1
    assert ema_core.schedules.sigma_rel_to_gamma(near) == ema_core.schedules.sigma_rel_to_gamma(0.1)
    model = torch.nn.Linear(2, 2)
    bank = EMABank(model, sigma_rels=(0.05, near))
    assert bank.sigma_rels == (0.05, 0.1)
    bank.update(1)
    written = [p.name for p in bank.save_snapshots(tmp_path / "bank")]
    alone = save_snapshot(tmp_path / "one", bank[1]).name
    assert written[1] == alone == "phema-0000000001-0.1.safetensors"
    jax_bank = make_bank_update(sigma_rels=(0.05, near), donate=False)
    states = jax_bank(jax_bank.init({"w": jnp.ones(2)}), {"w": jnp.ones(2)})
    jax_written = [p.name for p in jax_bank.save_snapshots(tmp_path / "jax", states)]
    assert jax_written == written


def test_a_non_bool_strict_is_named_as_the_argument() -> None:
    bank = EMABank(torch.nn.Linear(2, 2), sigma_rels=(0.05, 0.1))
    with pytest.raises(TypeError, match=r"^strict must be a bool \(True or False\), got 1$"):
        bank.load_state_dict(bank.state_dict(), strict=1)  # type: ignore[arg-type]


def test_checkpoint_save_of_a_bank_points_to_a_member(tmp_path: Path) -> None:
    from ema_core.checkpoint import save

    bank = EMABank(torch.nn.Linear(2, 2), sigma_rels=(0.05,))
    with pytest.raises(TypeError, match=r"got EMABank \(a bank: save one member, bank\[k\]"):
        save(tmp_path / "ema.safetensors", bank)
    assert _names(tmp_path) == []
