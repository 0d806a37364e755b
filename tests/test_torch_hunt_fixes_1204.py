"""What a hunt for broken promises on the torch side found (2026-12-04), fixed: ``torch.save``
or ``pickle`` of an EMA (alone, or beside its model) inside ``swap(copy=False)`` wrote the model's
parameters and the EMA's shadows as one storage (the model holds the shadows there), so
training the loaded model rewrote its EMA. Pickling is refused inside that block now; inside
``swap()`` (copies) and outside any block it works as before."""

from __future__ import annotations

import copy
import io
import pickle

import pytest

torch = pytest.importorskip("torch")

from ema_core import Config  # noqa: E402
from ema_core.torch import EMA, EMABank  # noqa: E402


def _trained() -> tuple[torch.nn.Module, EMA]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    return model, ema


def _save(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize(
    "how",
    [
        lambda model, ema: _save({"model": model, "ema": ema}),
        lambda model, ema: _save(ema),
        lambda model, ema: pickle.dumps(ema),
    ],
    ids=["torch.save-pair", "torch.save-ema", "pickle"],
)
def test_pickling_inside_swap_without_copies_is_refused_and_changes_nothing(how: object) -> None:
    model, ema = _trained()
    shadows = {k: v.clone() for k, v in ema.state_dict()["shadow"].items()}
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"inside swap\(copy=False\)"), ema.swap(copy=False):
        how(model, ema)  # type: ignore[operator]
    for k, v in ema.state_dict()["shadow"].items():
        assert torch.equal(v, shadows[k])
    for k, v in model.state_dict().items():
        assert torch.equal(v, live[k])  # the swap's exit put the live weights back
    buf = _save({"model": model, "ema": ema})  # and outside the block it saves
    assert torch.load(buf, weights_only=False)["ema"].step == 1


def test_a_deep_copy_inside_swap_without_copies_is_an_independent_pair() -> None:
    """``copy.deepcopy`` makes the EMA anew from its ``state_dict()``: its shadows are its own
    even where the model copied beside it holds the averages (the swap's shadows)."""
    model, ema = _trained()
    with ema.swap(copy=False):
        m2, e2 = copy.deepcopy((model, ema))
    before = e2.average["weight"].clone()
    assert torch.equal(m2.weight.detach(), before)
    with torch.no_grad():
        m2.weight.fill_(100.0)
    assert torch.equal(e2.average["weight"], before)


def test_a_pair_saved_inside_swap_with_copies_loads_as_two_independent_objects() -> None:
    model, ema = _trained()
    with ema.swap():
        loaded = torch.load(_save({"model": model, "ema": ema}), weights_only=False)
    m2, e2 = loaded["model"], loaded["ema"]
    before = e2.average["weight"].clone()
    assert torch.equal(m2.weight.detach(), before)  # the model was saved holding the average
    with torch.no_grad():
        m2.weight.fill_(100.0)
    assert torch.equal(e2.average["weight"], before)
    with e2.swap(copy=False):  # the loaded EMA is not inside a block: it swaps on its own
        assert torch.equal(m2.weight.detach(), before)


def test_a_bank_holding_an_ema_inside_swap_without_copies_is_refused_too() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    bank = EMABank(model, [Config(schedule=0.5), Config(schedule=0.9)])
    bank.update()
    with pytest.raises(RuntimeError, match=r"inside swap\(copy=False\)"), bank[1].swap(copy=False):
        _save(bank)
    assert _save(bank).getbuffer().nbytes > 0


# --- a second hunt (the stateless API) -----------------------------------------------------------


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_negative_and_conjugate_view_shadows_update_beside_plain_ones(decay: float) -> None:
    """torch's fused ops refuse to write through a negative or conjugate view: such shadows
    form groups of their own (copied tensor by tensor, blended by the generic route), so the
    plain shadows and integer leaves beside them are not written before an error."""
    import ema_core as ema

    neg_base, conj_base = torch.zeros(3), torch.zeros(3, dtype=torch.complex64)
    shadow = {
        "count": torch.zeros(1, dtype=torch.int64),
        "a": torch.zeros(3),
        "n": torch._neg_view(neg_base),
        "z": conj_base.conj(),
        "i": torch._neg_view(torch.zeros(2, dtype=torch.int64)),
    }
    params = {
        "count": torch.tensor([5]),
        "a": torch.ones(3),
        "n": torch.full((3,), 2.0),
        "z": torch.full((3,), 2 + 1j, dtype=torch.complex64),
        "i": torch.tensor([4, 6]),
    }
    out = ema.ema_update(shadow, params, 1, decay=decay)
    keep = 1 - decay
    assert out["a"].tolist() == [keep] * 3 and out["count"].tolist() == [5]
    assert out["n"].tolist() == [2 * keep] * 3 and neg_base.tolist() == [-2 * keep] * 3
    assert out["z"].tolist() == [complex(2 * keep, keep)] * 3
    assert conj_base.tolist() == [complex(2 * keep, -keep)] * 3
    assert out["i"].tolist() == [4, 6]


# --- a third hunt (unusual inputs to the class) --------------------------------------------------


def _meta_model() -> tuple[torch.nn.Module, EMA]:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    return model, EMA(model, decay=0.5)


def test_a_meta_step_is_refused_before_any_write_and_the_ema_goes_on() -> None:
    model, ema = _meta_model()
    with torch.no_grad():
        model[1].running_mean.add_(1.0)  # a copied buffer: the first thing an update writes
    before = {k: v.clone() for k, v in ema.state_dict()["shadow"].items()}
    with pytest.raises(ValueError, match="step is a meta tensor"):
        ema.update(torch.tensor(1, device="meta"))
    for k, v in ema.state_dict()["shadow"].items():
        assert torch.equal(v, before[k]), k
    ema.update(1)
    assert ema.step == 1 and torch.equal(ema.average["1.running_mean"], torch.ones(2))


def test_a_bank_refuses_a_meta_step_before_any_write() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    bank = EMABank(model, [Config(schedule=0.5), Config(schedule=0.9)])
    with pytest.raises(ValueError, match="step is a meta tensor"):
        bank.update(torch.tensor(1, device="meta"))
    assert [ema.step for ema in bank] == [0, 0]
    bank.update(1)
    assert [ema.step for ema in bank] == [1, 1]


def test_a_schedule_returning_a_meta_tensor_is_a_value_error_naming_it() -> None:
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, config=Config(schedule=lambda t: torch.tensor(0.5, device="meta")))
    with pytest.raises(ValueError, match=r"schedule\(t\) .* returned a meta tensor"):
        ema.update()
    assert ema.step == 0


def _loaded_back(size: int) -> tuple[bool, bool]:
    """One round: a bf16 model and its EMA pickled, dropped, loaded back and updated; whether
    the loaded tensors took the dropped ones' addresses, and whether the update was right."""
    import gc

    torch.manual_seed(0)
    model = torch.nn.Linear(size, size, bias=False).to(torch.bfloat16)
    ema = EMA(model, decay=0.5)
    ema.update()  # binds the host engine's views
    blob = pickle.dumps((model, ema))
    old = [model.weight.data_ptr(), ema._bound.shadows[0].data_ptr()]
    del model, ema
    gc.collect()
    model, ema = pickle.loads(blob)
    reused = [model.weight.data_ptr(), ema._bound.shadows[0].data_ptr()] == old
    before = ema.average["weight"].clone()
    with torch.no_grad():
        model.weight.add_(4)
    ema.update()
    right = torch.equal(ema.average["weight"], before + 0.5 * (model.weight.float() - before))
    return reused, right


def test_an_ema_loaded_back_in_the_same_process_updates_its_own_shadows() -> None:
    """Unpickled, an EMA watches its loaded tensors afresh: pickled, its watch held the old
    addresses and its host-engine views were copies of the old memory, so a loaded tensor at a
    reused address passed for unchanged and updates went into those copies. Whether the
    allocator reuses an address is up to it (it stopped doing so here), so the loaded EMA is
    checked to hold no old address and no old view, and a few rounds to be right."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 16, bias=False).to(torch.bfloat16)
    ema = EMA(model, decay=0.5)
    ema.update()  # binds the host engine's views and watches the addresses
    assert any(group.host is not None for group in ema._bound.store.plan.mixed)
    _, loaded = pickle.loads(pickle.dumps((model, ema)))
    assert all(pointer == -1 for pointer in loaded._bound.watch.pointers)
    assert all(g.host is None and g.launch is None for g in loaded._bound.store.plan.mixed)
    for size in (16, 32, 48, 64):
        reused, right = _loaded_back(size)
        assert right, f"size {size}: the loaded EMA's update missed its shadows (reused: {reused})"


class _Holder(torch.nn.Module):
    """A model that holds an EMA of itself, as a LightningModule built in ``__init__`` may."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)
        self.ema = EMA(self, decay=0.5)  # not a Module: not one of its own tensors


def test_an_ema_held_by_its_own_model_unpickles_and_updates() -> None:
    """Pickle restores the EMA before the model holding it: unpickling must not read the
    module (it only makes the next look rebind)."""
    holder = _Holder()
    holder.ema.update()
    copies = [pickle.loads(pickle.dumps(holder)), torch.load(_save(holder), weights_only=False)]
    for loaded in copies:
        before = loaded.ema.average["layer.weight"].clone()
        with torch.no_grad():
            loaded.layer.weight.add_(2.0)
        loaded.ema.update()
        want = before + 0.5 * (loaded.layer.weight.detach() - before)
        assert torch.allclose(loaded.ema.average["layer.weight"], want) and loaded.ema.step == 2


def test_a_shallow_copy_of_a_bank_shares_no_ema() -> None:
    """``copy.copy(bank)``, as ``copy.copy(ema)``: EMAs of their own (a shallow copy held the
    same EMAs, which the two banks then updated twice)."""
    model = torch.nn.Linear(2, 2)
    bank = EMABank(model, [Config(schedule=0.5), Config(schedule=0.9)])
    twin = copy.copy(bank)
    assert all(a is not b for a, b in zip(bank, twin, strict=True))
    twin.update()
    assert [ema.step for ema in bank] == [0, 0] and [ema.step for ema in twin] == [1, 1]


def _two_units() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    model[1].double()  # fp32 and fp64: two units of the store, so one can fail after the other
    return model


def _bump(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def test_a_bank_retrying_a_member_update_cut_short_applies_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``bank[k].update(3)`` cut short by an exception, then ``bank.update(3)``: as
    ``EMA.update``, the call completes the pending update and does not apply step 3 to that
    EMA again (the bank applied it twice). The others update as usual. (Without a step, the
    bank's call is a new update of every EMA: ``test_mutants_torch_bank``.)"""
    from ema_core.torch import _store

    model, clean_model = _two_units(), _two_units()
    bank = EMABank(model, [Config(schedule=0.5), Config(schedule=0.9)])
    clean = EMABank(clean_model, [Config(schedule=0.5), Config(schedule=0.9)])
    for t in (1, 2):
        _bump(model, t), _bump(clean_model, t)
        bank.update(t), clean.update(t)
    _bump(model, 3), _bump(clean_model, 3)
    real, calls = _store.apply, []

    def second_fails(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("cut short")
        return real(*args, **kwargs)

    monkeypatch.setattr(_store, "apply", second_fails)
    with pytest.raises(RuntimeError, match="cut short"):
        bank[0].update(3)
    monkeypatch.setattr(_store, "apply", real)
    assert bank[0]._bound.pending is not None
    bank.update(3)
    clean.update(3)
    for ours, theirs in zip(bank, clean, strict=True):
        assert ours.step == theirs.step == 3
        for name, value in theirs.average.items():
            assert torch.equal(ours.average[name], value), name
